"""kvdirect: the hot set is the sinks plus the recent window, as in streaming, but no token
leaves the context. Every decode recomputes the K/V of the evicted tokens at every layer from
their checkpoint and attends to them without storing them (P4: llama_kvd_decode_ephemeral), in
position order, so the output equals the full cache's bit for bit.

A prompt longer than the cells is one pass: its tokens that will not stay hot are ephemeral on arrival.
Decoding can draft k tokens over the hot cells alone (what streaming would decode) and verify them
in one such decode, which recomputes the evicted tokens once for all k + 1 rows.

Checkpoint kinds:

- ``tokens``: only the token ids are kept (4 bytes a token); each decode re-runs the evicted
  tokens through every layer, like a prefill of them.
- ``residuals``: each token's layer inputs h^(0..n_layer-1) are kept in host memory
  (n_layer x n_embd floats a token); each decode re-runs only the norm, Q/K/V projections and
  RoPE of every layer for them (the paper's scheme). llama.cpp's layer code computes Q along with
  K and V, so the Q projection is paid too.
"""

from __future__ import annotations

import numpy as np

from ..errors import PolicyError
from ..outputs import Outputs
from .streaming import StreamingSinks

CHECKPOINTS = ("tokens", "residuals")


class _Rows:
    """A growable array of per-token rows along axis ``axis`` (capacity doubles, like a list)."""

    def __init__(self, shape: tuple[int, ...], dtype, axis: int):
        self._shape, self._dtype, self._axis = shape, dtype, axis
        self.data = np.zeros(self._sized(0), dtype=dtype)
        self.n = 0

    def _sized(self, rows: int) -> tuple[int, ...]:
        shape = list(self._shape)
        shape.insert(self._axis, rows)
        return tuple(shape)

    def put(self, first: int, rows: np.ndarray, *, owned: bool = False) -> None:
        """Store rows from position first on. owned: nobody else holds rows, so the first rows (a whole
        prompt's residuals, say) may become the store itself instead of being copied."""
        end = first + rows.shape[self._axis]
        if owned and self.n == 0 and first == 0 and rows.dtype == self._dtype and rows.flags.c_contiguous:
            self.data, self.n = rows, end
            return
        if end > self.data.shape[self._axis]:
            grown = np.zeros(self._sized(max(end, 2 * self.data.shape[self._axis], 64)), dtype=self._dtype)
            index = [slice(None)] * grown.ndim
            index[self._axis] = slice(0, self.n)
            grown[tuple(index)] = self.data[tuple(index)]
            self.data = grown
        index = [slice(None)] * self.data.ndim
        index[self._axis] = slice(first, end)
        self.data[tuple(index)] = rows
        self.n = end

    def take(self, positions: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.take(self.data, positions, axis=self._axis))


class KVDirect(StreamingSinks):
    name = "kvdirect"
    lossless = True
    needs_exact_attention = True
    checkpoints = CHECKPOINTS
    needs_layer_hooks = True
    allows_capture = False
    prompt_in_one_pass = True
    verifies_drafts = True

    def __init__(
        self, budget: int | None, *, n_sink: int = 4, checkpoint: str = "tokens", n_layer: int = 0, n_embd: int = 0
    ):
        super().__init__(budget, n_sink=n_sink)
        if checkpoint not in CHECKPOINTS:
            raise PolicyError(f"unknown checkpoint kind {checkpoint!r} (choose from {', '.join(CHECKPOINTS)})")
        self.checkpoint = checkpoint
        self._layers = (n_layer, n_embd)
        self._store = self._new_store()

    def _new_store(self) -> _Rows:
        if self.checkpoint == "tokens":
            return _Rows((), np.int32, 0)
        n_layer, n_embd = self._layers
        return _Rows((n_layer, n_embd), np.float32, 1)

    def evicted(self, pos: int) -> np.ndarray:
        """Positions before pos that are in no cell: the ephemeral rows of a decode at pos."""
        cold = np.ones(pos, dtype=bool)
        cold[[p for p in self.hot if p < pos]] = False
        return np.flatnonzero(cold).astype(np.int32)

    def arrive(self, ctx, tokens: np.ndarray, pos: int, outputs: Outputs) -> np.ndarray | None:
        """Tokens beyond the cells left for them are processed in the same single pass: the ones that
        will not stay hot are ephemeral on arrival (attended to at every layer, never stored), so a long
        prompt costs one pass over what is recomputed plus the new tokens."""
        logits = None
        if pos < self.n_sink:
            # The sinks take cells, and a decode's new rows in cells come after all its ephemeral rows.
            n = min(self.n_sink - pos, len(tokens))
            logits = super().arrive(ctx, tokens[:n], pos, outputs if n == len(tokens) else Outputs.NONE)
            tokens, pos = tokens[n:], pos + n
        if len(tokens) == 0:
            return logits
        n_stay = min(len(tokens), self.cells - self.n_sink)
        self.make_room(ctx, n_stay)
        logits = self.decode(ctx, tokens, pos, outputs, n_passing=len(tokens) - n_stay)
        self.admitted(range(pos + len(tokens) - n_stay, pos + len(tokens)))
        return logits

    def decode(self, ctx, tokens: np.ndarray, pos: int, outputs: Outputs, n_passing: int = 0) -> np.ndarray:
        """Decode tokens at pos; the first n_passing of them are ephemeral on arrival."""
        old = self.evicted(pos)
        eph_pos = np.concatenate([old, np.arange(pos, pos + n_passing, dtype=np.int32)])
        new = tokens[n_passing:]
        flags = outputs.flags(len(new))  # the output head only where logits are asked for
        if self.checkpoint == "tokens":
            self._store.put(pos, tokens)
            logits, _ = ctx.decode_ephemeral(new, pos + n_passing, self._store.take(eph_pos), eph_pos, outputs=flags)
            return logits
        # Evicted tokens enter from their residuals; passing ones run from their ids, and every row
        # run gives its residuals to the checkpoint.
        n_layer, n_embd = self._layers
        old_h = self._store.take(old) if len(old) else np.zeros((n_layer, 0, n_embd), np.float32)
        eph_tokens = np.concatenate([np.zeros(len(old), np.int32), tokens[:n_passing]])
        logits, h = ctx.decode_ephemeral(new, pos + n_passing, eph_tokens, eph_pos, old_h, capture=True, outputs=flags)
        self._store.put(pos, h, owned=True)  # the binding's fresh array
        return logits

    def draft(self, ctx, token: int, pos: int, k: int) -> list[int]:
        """k greedy tokens after token (at pos) decoded over the hot cells alone, as streaming would: a
        lossy cache that is nearly free to run. Makes room for the k + 1 rows of the verification; the
        draft's own rows leave the cells again."""
        self.make_room(ctx, k + 1)
        drafted: list[int] = []
        try:
            for i in range(k):
                ctx.decode(np.array([drafted[-1] if drafted else token], np.int32), pos + i, outputs=int(Outputs.LAST))
                drafted.append(int(np.argmax(ctx.logits(-1))))
        finally:
            ctx.seq_rm(0, pos, -1)
        return drafted

    def checkpoint_bytes(self) -> int:
        return int(self._store.data.nbytes)

    def truncate(self, n: int) -> None:
        super().truncate(n)
        self._store.n = min(self._store.n, n)

    def reset(self) -> None:
        super().reset()
        self._store = self._new_store()
