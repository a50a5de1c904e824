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
from .checkpoint_store import ResidualStore, TokenStore
from .streaming import StreamingSinks

CHECKPOINTS = ("tokens", "residuals")


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
        self,
        budget: int | None,
        *,
        n_sink: int = 4,
        checkpoint: str = "tokens",
        n_layer: int = 0,
        n_embd: int = 0,
        n_positions: int = 0,
    ):
        super().__init__(budget, n_sink=n_sink)
        if checkpoint not in CHECKPOINTS:
            raise PolicyError(f"unknown checkpoint kind {checkpoint!r} (choose from {', '.join(CHECKPOINTS)})")
        self.checkpoint = checkpoint
        self._layers = (n_layer, n_embd)
        self._n_positions = n_positions
        self._store = self._new_store()

    def _new_store(self) -> TokenStore | ResidualStore:
        if self.checkpoint == "tokens":
            return TokenStore()
        return ResidualStore(*self._layers, self._n_positions)

    def evicted(self, pos: int) -> np.ndarray:
        """Positions before pos that are in no cell: the ephemeral rows of a decode at pos."""
        cold = np.ones(pos, dtype=bool)
        cold[[p for p in self.hot if p < pos]] = False
        return np.flatnonzero(cold).astype(np.int32)

    def arrive(self, ctx, tokens: np.ndarray, pos: int, outputs: Outputs) -> np.ndarray | None:
        """Tokens beyond the cells left for them are processed in the same single pass: the ones that
        will not stay hot are ephemeral on arrival (attended to at every layer, never stored), so a long
        prompt costs one pass over what is recomputed plus the new tokens."""
        logits = self._arrive(ctx, tokens, pos, outputs)
        if self.draft_head is not None:
            # one logits row: a top-k over Gemma 3's vocabulary costs 3 ms
            last = np.atleast_2d(logits)[-1] if logits is not None and logits.size else None
            self.draft_head.observe(tokens, last)
        return logits

    def _arrive(self, ctx, tokens: np.ndarray, pos: int, outputs: Outputs) -> np.ndarray | None:
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
        store = self._store
        if isinstance(store, TokenStore):
            store.put(pos, tokens)
            logits, _ = ctx.decode_ephemeral(new, pos + n_passing, store.take(eph_pos), eph_pos, outputs=flags)
            return logits
        # Evicted tokens enter from their residuals; passing ones run from their ids, and every row
        # run writes its residuals straight into the store.
        end = pos + len(tokens)
        if end > store.data.shape[1]:
            raise PolicyError(f"the residual checkpoint holds {store.data.shape[1]} positions, not {end}")
        eph_tokens = np.concatenate([np.zeros(len(old), np.int32), tokens[:n_passing]])
        logits, _ = ctx.decode_ephemeral(
            new,
            pos + n_passing,
            eph_tokens,
            eph_pos,
            store.take(old),
            capture=True,
            outputs=flags,
            h_out=store.rows(pos, end),
        )
        store.written(end)
        return logits

    def draft(self, ctx, token: int, pos: int, k: int) -> list[int]:
        """k greedy tokens after token (at pos) decoded over the hot cells alone, as streaming would: a
        lossy cache that is nearly free to run. Makes room for the k + 1 rows of the verification; the
        draft's own rows leave the cells again."""
        self.make_room(ctx, k + 1)
        drafted: list[int] = []
        try:
            for i in range(k):
                drafted.append(self._draft_step(ctx, drafted[-1] if drafted else token, pos + i))
        finally:
            ctx.seq_rm(0, pos, -1)
        return drafted

    def _draft_step(self, ctx, token: int, pos: int) -> int:
        """The draft's next token: scored over the candidate head's tokens when there is one (the
        layers alone run), else over the vocabulary by a plain decode."""
        tokens = np.array([token], np.int32)
        head = self.draft_head
        if head is not None and head.n_candidates > 0:
            best = head.argmax(ctx.forward_tokens(tokens, np.array([pos], np.int32), self._layers[0])[0])
            assert best is not None  # it has candidates
            return best
        ctx.decode(tokens, pos, outputs=int(Outputs.LAST))
        return int(np.argmax(ctx.logits(-1)))

    def checkpoint_bytes(self) -> int:
        return self._store.nbytes

    def truncate(self, n: int) -> None:
        super().truncate(n)
        self._store.truncate(n)

    def reset(self) -> None:
        super().reset()
        self._store = self._new_store()
