"""pykvd: exact, bounded-memory inference state for llama.cpp models.

The import is light: the llama.cpp binding loads on first use of Model or
Session, so `pykvd.models` (fetching GGUFs) works without it.
"""

from .errors import (
    ArgumentError,
    ArgumentTypeError,
    BudgetError,
    ContextOverflowError,
    DecodeError,
    IndexOutOfRangeError,
    InvalidModelError,
    ModelFetchError,
    ModelNotFoundError,
    PolicyError,
    PromptError,
    PykvdError,
    ResidualError,
    SamplingError,
    SessionBusyError,
    SessionClosedError,
    UnsupportedArchitectureError,
)

__version__ = "0.1.0"

_LAZY = {
    "Model": "pykvd.api",
    "Llama": "pykvd.llama",
    "Session": "pykvd.session",
    "SamplingParams": "pykvd.sampling",
    "RuntimeProfile": "pykvd.profile",
    "ResidualCapture": "pykvd.residuals",
    "load": "pykvd.api",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pykvd' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "BudgetError",
    "ContextOverflowError",
    "DecodeError",
    "IndexOutOfRangeError",
    "InvalidModelError",
    "ModelFetchError",
    "ModelNotFoundError",
    "PolicyError",
    "PromptError",
    "PykvdError",
    "ResidualError",
    "SamplingError",
    "SessionBusyError",
    "SessionClosedError",
    "UnsupportedArchitectureError",
    *_LAZY,
]
