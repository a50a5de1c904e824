"""Where the installed package keeps llama.cpp's libraries, headers and reference program.

C programs and desktop apps link the bundled libllama with
``-I$(python -m pykvd paths --include) -L$(python -m pykvd paths --lib) -lllama``.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def _installed_package() -> Path:
    """The folder the compiled binding was installed into; lib/, include/ and bin/ lie beside it.

    It is found from the binding rather than from this file, because an editable install runs the
    Python sources from the checkout while the compiled parts stay in site-packages.
    """
    spec = importlib.util.find_spec("pykvd._native")
    origin = spec.origin if spec is not None else None
    return Path(origin).resolve().parent if origin else Path(__file__).resolve().parent


def lib_dir() -> Path:
    """Folder of libllama and libggml (also usable as llama-cpp-python's LLAMA_CPP_LIB_PATH)."""
    return _installed_package() / "lib"


def include_dir() -> Path:
    """Folder of llama.h, llama-kvd.h and the ggml headers they include."""
    return _installed_package() / "include"


def reference_program() -> Path:
    """A plain llama.cpp greedy loop over the same libllama, used as the reference in tests and benchmarks."""
    return _installed_package() / "bin" / "pykvd-llama-reference"


def batch_invariance_program() -> Path:
    """Checks one ggml matmul kernel for batch invariance (native/kernels/batch_invariance.c)."""
    return _installed_package() / "bin" / "pykvd-batch-invariance"
