"""What counts as an integer (or a plain number) argument, and llama.cpp's int32 bound, in one place."""

from __future__ import annotations

import numbers

INT32_MAX = 2**31 - 1  # llama.cpp takes positions, layers, counts and top_k as int32


def is_integer(value) -> bool:
    """An integral number (numpy's too), but not a bool, which Python counts as one."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_plain_number(value) -> bool:
    """A Python int or float, as JSON and keyword arguments give them, but not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
