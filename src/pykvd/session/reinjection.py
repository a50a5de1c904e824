"""Reading, capturing and re-injecting a session's state: read_kv, capture (P1), evict, refill (P2)
and forward_layers (P3)."""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import numpy as np

from ..errors import (
    ArgumentError,
    ContextOverflowError,
    IndexOutOfRangeError,
    PolicyError,
    ResidualError,
    SessionBusyError,
)
from ..integers import INT32_MAX
from ..policies.base import runs
from ..residuals import ResidualCapture, checked_layer_range, checked_positions, checked_rows
from .core import CAPTURE_ARCHITECTURES, SessionCore, _checked_index, _one_call, _unsupported


class Reinjection(SessionCore):
    # -- reading the KV cache ------------------------------------------------

    def read_kv(self, layer: int, position: int) -> tuple[np.ndarray, np.ndarray]:
        """The K and V rows (float32, n_embd_k_gqa / n_embd_v_gqa) cached for a position at a layer.

        Raises IndexError for a layer out of range and KeyError when no cell holds the
        position (never processed, removed, or outside a sliding window).
        """
        ctx = self._context()
        layer = _checked_index(layer, "layer", self.model.info.n_layer - 1)
        return ctx.read_kv(layer, _checked_index(position, "position"))

    # -- residual capture (P1) ---------------------------------------------

    @contextlib.contextmanager
    def capture(self, layers: Sequence[int]) -> Iterator[ResidualCapture]:
        """Capture h^(l) for these layers (0..n_layer) of every token decoded inside the block.

        Capturing layer n_layer makes every prefilled token an output (logits included),
        since llama.cpp computes the last layer's output only for output rows.
        """
        ctx = self._context()
        info = self.model.info
        if info.architecture not in CAPTURE_ARCHITECTURES:
            raise _unsupported("residual capture", info.architecture)
        wanted = sorted({_checked_index(layer, "layer", info.n_layer) for layer in layers})
        if not wanted:
            raise ArgumentError("no layers to capture")
        if not self._policy.allows_capture:
            raise PolicyError(
                f"policy {self._policy.name!r} decodes outside llama.cpp's capture; it keeps its own checkpoint"
            )
        with self._serving():
            if self._capture is not None:
                raise SessionBusyError("a capture is already active on this session")
            ctx.set_capture(wanted)
            self._capture = ResidualCapture(wanted, self.model)
        try:
            yield self._capture
        finally:
            self._capture = None
            if not ctx.closed:
                ctx.set_capture([])

    # -- re-injection (P2, P3) ---------------------------------------------

    @_one_call
    def evict(self, positions: Sequence[int] | np.ndarray) -> None:
        """Free the KV cells of these positions at every layer. The tokens stay part of the
        session's history; until refilled, attention no longer sees them."""
        ctx = self._context()
        if self.model.info.recurrent:
            raise _unsupported("eviction", self.model.info.architecture)
        positions = checked_positions(positions, len(self._tokens))
        for first, last in runs(positions):
            ctx.seq_rm(0, first, last + 1)
        self._policy.forget(positions.tolist())

    @_one_call
    def refill(
        self,
        residuals: ResidualCapture | np.ndarray,
        positions: Sequence[int] | np.ndarray | None = None,
        layers: range | None = None,
    ) -> None:
        """P2: recompute the K/V of ``layers`` for ``positions`` from their residuals and write them
        into KV cells, running only each layer's K/V projection path.

        ``residuals`` is a ResidualCapture of this model (``positions`` default to all it holds,
        ``layers`` to every captured layer below n_layer, which must form one range) or a float32
        array [len(layers), len(positions), n_embd] holding h^(l) for each layer of ``layers``.
        A position whose cell the session still holds is overwritten in that cell; an evicted one
        takes the lowest free cell. Raises ResidualError, IndexError or ContextOverflowError (no free
        cells) before anything is changed.
        """
        ctx = self._context()
        info = self.model.info
        extension: list[int] = []
        if isinstance(residuals, ResidualCapture):
            residuals, positions, layers, extension = self._from_capture(residuals, positions, layers)
        elif positions is None or layers is None:
            raise ResidualError("refill from an array needs positions and layers")
        if not isinstance(layers, range) or layers.step != 1:
            raise IndexOutOfRangeError(f"layers must be a range of consecutive layers, not {layers!r}")
        layers = checked_layer_range(layers.start, layers.stop, info.n_layer)
        positions = checked_positions(positions, len(self._tokens) + len(extension))
        rows = checked_rows(residuals, (len(layers), len(positions), info.n_embd), "residuals")
        self._check_reinjection()
        self._check_room(positions)
        ctx.refill(rows, positions, layers.start, layers.stop)
        self._tokens.extend(extension)
        self._policy.admitted(positions.tolist())

    @_one_call
    def forward_layers(
        self, h: np.ndarray, positions: Sequence[int] | np.ndarray, start: int, end: int, *, logits: bool = False
    ):
        """P3: run layers [start, end) from h^(start) (float32 [len(positions), n_embd]) with
        attention over the session's cells, write those layers' K/V and return h^(end).

        With ``logits=True`` (``end`` must be n_layer) returns (h^(end), logits [n, n_vocab]).
        The session's own next-token logits are not changed.
        """
        ctx = self._context()
        info = self.model.info
        layers = checked_layer_range(start, end, info.n_layer)
        if logits and layers.stop != info.n_layer:
            raise IndexOutOfRangeError("logits need the forward to run to the last layer (end == n_layer)")
        positions = checked_positions(positions, len(self._tokens))
        rows = checked_rows(h, (len(positions), info.n_embd), "h")
        self._check_reinjection()
        self._check_room(positions)
        h_end, out = ctx.forward(rows, positions, layers.start, layers.stop, logits=logits)
        self._policy.admitted(positions.tolist())
        return (h_end, out) if logits else h_end

    def _from_capture(self, capture: ResidualCapture, positions, layers):
        if capture.model_key != self.model.key:
            raise ResidualError("these residuals were captured from a different model")
        if layers is None:
            inner = [layer for layer in capture.layers if layer < self.model.info.n_layer]
            if not inner or inner != list(range(inner[0], inner[-1] + 1)):
                raise ResidualError(f"captured layers {list(capture.layers)} do not form one range: pass layers=")
            layers = range(inner[0], inner[-1] + 1)
        if positions is None:
            positions = capture.positions
        extension = self._tokens_to_adopt(capture, positions)
        return capture.stack(layers, positions), positions, layers, extension

    def _tokens_to_adopt(self, capture: ResidualCapture, positions) -> list[int]:
        """Checks the capture's tokens against the session's history; returns the captured tokens
        that extend the history up to the last position, so a fresh session can be rebuilt."""
        positions = checked_positions(positions, INT32_MAX).tolist()
        by_position = dict(zip(capture.positions.tolist(), capture.tokens.tolist()))
        known = len(self._tokens)
        for p in positions:
            if p < known and by_position.get(p, self._tokens[p]) != self._tokens[p]:
                raise ResidualError(f"position {p} holds another token in this session than in the capture")
        top = positions[-1]
        if top < known:
            return []
        if self._pending:
            raise ResidualError("cannot extend a session that has a sampled token not yet decoded")
        missing = [p for p in range(known, top + 1) if p not in by_position]
        if missing:
            raise ResidualError(f"the capture lacks positions {missing[:8]} between the session's end and {top}")
        return [by_position[p] for p in range(known, top + 1)]

    def _check_room(self, positions: np.ndarray) -> None:
        """A bounded session re-admits tokens only within its budget."""
        budget = self._policy.budget
        if budget is not None and len(set(self._policy.hot) | set(positions.tolist())) > budget:
            raise ContextOverflowError(f"re-admitting these positions would exceed the KV budget of {budget} tokens")

    def _check_reinjection(self) -> None:
        if self.model.info.architecture not in CAPTURE_ARCHITECTURES:
            raise _unsupported("K/V re-injection", self.model.info.architecture)
