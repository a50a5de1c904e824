"""Where the installed package keeps llama.cpp's libraries, headers and reference program.

C programs and desktop apps link the bundled libllama with
``-I$(python -m pykvd paths --include) -L$(python -m pykvd paths --lib) -lllama``.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def lib_dir() -> Path:
    """Folder of libllama and libggml (also usable as llama-cpp-python's LLAMA_CPP_LIB_PATH)."""
    return _PACKAGE / "lib"


def include_dir() -> Path:
    """Folder of llama.h, llama-kvd.h and the ggml headers they include."""
    return _PACKAGE / "include"


def reference_program() -> Path:
    """A plain llama.cpp greedy loop over the same libllama, used as the reference in tests and benchmarks."""
    return _PACKAGE / "bin" / "pykvd-llama-reference"
