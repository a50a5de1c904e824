"""What counts as an integer argument, and llama.cpp's int32 bound, in one place."""

from __future__ import annotations

import numbers

INT32_MAX = 2**31 - 1  # llama.cpp takes positions, layers, counts and top_k as int32


def is_integer(value) -> bool:
    """An integral number (numpy's too), but not a bool, which Python counts as one."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
