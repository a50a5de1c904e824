"""Where kvdirect keeps its checkpoint: token ids, or every layer's residuals, per position."""

from __future__ import annotations

import mmap
import sys

import numpy as np

from ..errors import PolicyError

# Linux's MAP_NORESERVE (Python's mmap module names it only from 3.11 on): a reservation that is
# not charged against the commit limit, since only the pages written are ever backed.
_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform.startswith("linux") else 0)


class TokenStore:
    """The token id of every position, in a growable int32 array (capacity doubles, like a list)."""

    def __init__(self) -> None:
        self.data = np.zeros(0, dtype=np.int32)
        self.n = 0

    def put(self, first: int, tokens: np.ndarray) -> None:
        end = first + len(tokens)
        if end > len(self.data):
            grown = np.zeros(max(end, 2 * len(self.data), 64), dtype=np.int32)
            grown[: self.n] = self.data[: self.n]
            self.data = grown
        self.data[first:end] = tokens
        self.n = end

    def take(self, positions: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.data[positions])

    def truncate(self, n: int) -> None:
        self.n = min(self.n, n)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


class ResidualStore:
    """h^(0..n_layer-1) of every position, as float32 [n_layer, n_positions, n_embd] in one reserved
    mapping. The system backs a page only once a row in it is written, so memory follows the rows
    held; and rows never move, so a decode reads the evicted rows and writes its new ones in place,
    through views (no gather, no copy, no regrowth that would hold two copies at once)."""

    def __init__(self, n_layer: int, n_embd: int, n_positions: int):
        self._row_bytes = n_layer * n_embd * 4
        self.data = _reserved_floats((n_layer, n_positions, n_embd))
        self.n = 0
        self._written = 0  # rows ever written: the pages backed

    def rows(self, first: int, end: int) -> np.ndarray:
        """A writeable view of positions [first, end) at every layer."""
        return self.data[:, first:end, :]

    def written(self, end: int) -> None:
        """Rows up to end now hold residuals."""
        self.n = end
        self._written = max(self._written, end)

    def take(self, positions: np.ndarray) -> np.ndarray:
        """The rows of these positions: a view when they are one run (as kvdirect's evicted rows are)."""
        if len(positions) and int(positions[-1]) - int(positions[0]) + 1 == len(positions):
            return self.rows(int(positions[0]), int(positions[-1]) + 1)
        return np.ascontiguousarray(np.take(self.data, positions, axis=1))

    def truncate(self, n: int) -> None:
        self.n = min(self.n, n)

    @property
    def nbytes(self) -> int:
        """The bytes of the rows written (the reservation beyond them takes no memory)."""
        return self._written * self._row_bytes


def _reserved_floats(shape: tuple[int, int, int]) -> np.ndarray:
    nbytes = int(np.prod(shape)) * 4
    if nbytes == 0:
        return np.zeros(shape, dtype=np.float32)
    flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0) | _NORESERVE
    try:
        region = mmap.mmap(-1, nbytes, flags=flags) if flags else None
    except (OSError, ValueError, TypeError):
        region = None
    if region is not None:
        return np.frombuffer(region, dtype=np.float32).reshape(shape)
    try:  # no anonymous mapping here, or it was refused: calloc'd zeros are backed lazily too
        return np.zeros(shape, dtype=np.float32)
    except MemoryError:
        raise PolicyError(
            f"a residual checkpoint of {shape[1]} positions needs {nbytes / 2**30:.1f} GiB of address space, "
            "which this system refuses: use checkpoint='tokens'"
        ) from None
