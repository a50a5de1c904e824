"""Sessions: a llama.cpp context with its token history (core.py), text generation and chat
(generation.py), and reading and re-injecting its state (reinjection.py)."""

from __future__ import annotations

from .core import (
    CAPTURE_ARCHITECTURES,
    FINISH_CONTEXT,
    FINISH_LENGTH,
    FINISH_STOP,
    MAX_THREADS,
    SessionCore,
    SessionStats,
)
from .generation import Generating, Generation
from .reinjection import Reinjection


class Session(Generating, Reinjection):
    __doc__ = SessionCore.__doc__


__all__ = [
    "CAPTURE_ARCHITECTURES",
    "FINISH_CONTEXT",
    "FINISH_LENGTH",
    "FINISH_STOP",
    "MAX_THREADS",
    "Generation",
    "Session",
    "SessionStats",
]
