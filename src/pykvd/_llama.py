"""Loads the native binding (the pybind11 extension over the bundled libllama)."""

from . import _native as native

__all__ = ["native"]
