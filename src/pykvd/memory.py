"""Process memory as the operating system reports it, and byte-size parsing."""

from __future__ import annotations

import os
import re
import sys
from decimal import Decimal

_UNITS = {
    "": 1,
    "B": 1,
    "K": 1000,
    "KB": 1000,
    "KIB": 1024,
    "M": 1000**2,
    "MB": 1000**2,
    "MIB": 1024**2,
    "G": 1000**3,
    "GB": 1000**3,
    "GIB": 1024**3,
}


def rss_bytes() -> int:
    """Resident set size of this process now (Linux: /proc; elsewhere: the peak, from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def parse_bytes(text: str) -> int:
    """'64MiB' -> 67108864, '1.5GiB' -> 1610612736, '1000' -> 1000 (ASCII digits only)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text), flags=re.ASCII)
    if not match or match.group(2).upper() not in _UNITS:
        raise ValueError(f"not a byte size: {text!r} (examples: 4096, 64MiB, 1.5GiB)")
    # Decimal: a float would round large sizes and turn a few hundred digits into infinity.
    return int(Decimal(match.group(1)) * _UNITS[match.group(2).upper()])


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"
