"""Residual-stream checkpoints: what a capture holds, and the checks every
re-injection runs before its arrays reach llama.cpp."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import IndexOutOfRangeError, ResidualError


class ResidualCapture:
    """Residual-stream vectors h^(l) captured while a session decodes.

    ``residuals[l]`` is float32 [n_tokens, n_embd]: the input of layer l (l = n_layer:
    the output of the last layer) of every token processed inside the capture, in order;
    ``positions`` gives each row's position in the sequence.
    """

    def __init__(self, layers: Sequence[int], model=None):
        self.layers = tuple(layers)
        self.model_key = model.key if model is not None else None
        self._rows: dict[int, list[np.ndarray]] = {layer: [] for layer in self.layers}
        self._positions: list[np.ndarray] = []
        self._tokens: list[np.ndarray] = []

    def _add(self, ctx, first_pos: int, tokens: np.ndarray) -> None:
        for layer in self.layers:
            self._rows[layer].append(ctx.captured(layer))
        self._positions.append(np.arange(first_pos, first_pos + len(tokens), dtype=np.int32))
        self._tokens.append(np.asarray(tokens, dtype=np.int32))

    @property
    def residuals(self) -> dict[int, np.ndarray]:
        """Read-only arrays; reading them again costs no copy."""
        return {layer: _joined(rows, (0, 0), np.float32) for layer, rows in self._rows.items()}

    @property
    def positions(self) -> np.ndarray:
        return _joined(self._positions, (0,), np.int32)

    @property
    def tokens(self) -> np.ndarray:
        """The token id at each captured position: residuals plus these ids are a full checkpoint."""
        return _joined(self._tokens, (0,), np.int32)

    def stack(self, layers: range, positions: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """float32 [len(layers), n_tokens, n_embd]: h^(l) of these layers for these positions
        (default: every captured position), in the order refill takes them."""
        missing = [layer for layer in layers if layer not in self._rows]
        if missing:
            raise ResidualError(f"layers {missing} were not captured (captured: {list(self.layers)})")
        captured = self.positions
        rows = np.arange(len(captured))
        if positions is not None:
            index = {int(p): i for i, p in enumerate(captured)}
            wanted = np.asarray(positions).reshape(-1)
            absent = [int(p) for p in wanted if int(p) not in index]
            if absent:
                raise ResidualError(f"positions {absent[:8]} were not captured")
            rows = np.array([index[int(p)] for p in wanted], dtype=np.int64)
        return np.ascontiguousarray(
            np.stack([_joined(self._rows[layer], (0, 0), np.float32)[rows] for layer in layers])
        )


def _joined(chunks: list[np.ndarray], empty_shape: tuple[int, ...], dtype) -> np.ndarray:
    """The chunks (one per decode) as one read-only array. The joined array replaces the chunks,
    so later reads do not concatenate again, and rows added afterwards still join it."""
    if not chunks:
        return np.zeros(empty_shape, dtype)
    if len(chunks) > 1:
        chunks[:] = [np.concatenate(chunks)]
    view = chunks[0].view()
    view.flags.writeable = False
    return view


def checked_positions(positions, n_known: int) -> np.ndarray:
    """positions as int32, non-empty, strictly increasing and inside the sequence [0, n_known)."""
    array = np.asarray(positions)
    if array.ndim != 1 or array.size == 0:
        raise ResidualError("positions must be a non-empty 1-D sequence of integers")
    if array.dtype.kind not in "iu":
        raise ResidualError(f"positions must be integers, not {array.dtype}")
    if np.any(np.diff(array.astype(np.int64)) <= 0):
        raise ResidualError("positions must be strictly increasing")
    if array[0] < 0 or array[-1] >= n_known:
        raise IndexOutOfRangeError(
            f"positions must lie in the sequence [0, {n_known}); got {int(array[0])}..{int(array[-1])}"
        )
    return array.astype(np.int32)


def checked_rows(rows, shape: tuple[int, ...], what: str) -> np.ndarray:
    """rows as a C-contiguous float32 array of exactly this shape (no silent conversion)."""
    if not isinstance(rows, np.ndarray):
        raise ResidualError(f"{what} must be a numpy array, not {type(rows).__name__}")
    if rows.dtype != np.float32:
        raise ResidualError(f"{what} must be float32, not {rows.dtype}")
    if rows.shape != shape:
        raise ResidualError(f"{what} must have shape {shape}, not {rows.shape}")
    if not np.all(np.isfinite(rows)):
        raise ResidualError(f"{what} contains NaN or infinity")
    return np.ascontiguousarray(rows)


def checked_layer_range(start, end, n_layer: int) -> range:
    """[start, end) as a non-empty range of layers inside [0, n_layer)."""
    for name, value in (("start", start), ("end", end)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise IndexOutOfRangeError(f"layer {name} must be an integer, not {value!r}")
    if not 0 <= start < end <= n_layer:
        raise IndexOutOfRangeError(f"layers [{start}, {end}) must be a non-empty range inside [0, {n_layer})")
    return range(int(start), int(end))
