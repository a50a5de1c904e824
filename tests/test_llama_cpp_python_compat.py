"""The patches only add API: llama-cpp-python 0.3.36's own ctypes bindings still load the bundled libllama.

The bindings' Python package is taken from the same source distribution the
build used (in pykvd's cache), run in a subprocess with LLAMA_CPP_LIB_PATH
pointing at pykvd's lib folder, and must generate pykvd's greedy text (both
with flash attention, which pykvd's exact profile runs).
"""

from __future__ import annotations

import pykvd
from conftest import run_llama_cpp_python
from pykvd import models

PROMPT = "The capital of France is"

GENERATE = """
import llama_cpp
llm = llama_cpp.Llama(model_path={model!r}, n_ctx=512, n_threads=1, flash_attn=True, verbose=False)
out = llm({prompt!r}, max_tokens=12, temperature=0.0)
print(out["choices"][0]["text"], end="")
"""


def test_llama_cpp_python_runs_on_the_patched_library(llama_cpp_python_dir):
    model_path = str(models.fetch("smollm2"))
    text = run_llama_cpp_python(llama_cpp_python_dir, GENERATE.format(model=model_path, prompt=PROMPT), timeout=300)
    with pykvd.Model(model_path) as model, model.session(n_ctx=512, n_threads=1) as session:
        expected = session.generate(PROMPT, max_tokens=12).text
    assert text == expected
