"""Loads the native binding, after fixing the process-wide part of the exact profile."""

from .profile import default_tiled_matmul_off

default_tiled_matmul_off()

from . import _native as native  # noqa: E402  (the environment must be set first)

__all__ = ["native"]
