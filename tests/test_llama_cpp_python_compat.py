"""The patches only add API: llama-cpp-python 0.3.36's own ctypes bindings still load the bundled libllama.

The bindings' Python package is taken from the same source distribution the
build used (in pykvd's cache), run in a subprocess with LLAMA_CPP_LIB_PATH
pointing at pykvd's lib folder, and must generate pykvd's greedy text.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile

import pytest

import pykvd
from pykvd import models, paths

SDIST = "llama_cpp_python-0.3.36"
PROMPT = "The capital of France is"

GENERATE = """
import llama_cpp
llm = llama_cpp.Llama(model_path={model!r}, n_ctx=512, n_threads=1, flash_attn=False, verbose=False)
out = llm({prompt!r}, max_tokens=12, temperature=0.0)
print(out["choices"][0]["text"], end="")
"""


@pytest.fixture(scope="module")
def bindings_dir(tmp_path_factory):
    for module in ("diskcache", "jinja2", "typing_extensions"):
        pytest.importorskip(module)
    archive = models.cache_dir() / "src" / f"{SDIST}.tar.gz"
    if not archive.exists():
        pytest.skip(f"{archive} is not cached (built from another llama.cpp tree?)")
    target = tmp_path_factory.mktemp("llama_cpp_python")
    prefix = f"{SDIST}/llama_cpp/"
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile()]
        for member in members:
            member.name = member.name[len(SDIST) + 1 :]
        tar.extractall(target, members=members)
    return target


def test_llama_cpp_python_runs_on_the_patched_library(bindings_dir):
    model_path = str(models.fetch("smollm2"))
    env = dict(os.environ, LLAMA_CPP_LIB_PATH=str(paths.lib_dir()), PYTHONPATH=str(bindings_dir), GGML_CPU_TILED_MM="0")
    result = subprocess.run(
        [sys.executable, "-c", GENERATE.format(model=model_path, prompt=PROMPT)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=str(bindings_dir),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with pykvd.Model(model_path) as model, model.session(n_ctx=512, n_threads=1) as session:
        expected = session.generate(PROMPT, max_tokens=12).text
    assert result.stdout == expected
