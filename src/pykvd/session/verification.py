"""Decoding a sampled token, with self-speculative verification when the policy can draft.

kvdirect's hot cells are a lossy cache (sinks plus the recent window). Decoding over them alone drafts
k tokens cheaply; one exact decode then verifies the sampled token and all k drafts together, so the
recompute of every evicted token is shared by k + 1 rows. The verified rows stay ahead of the decoded
tokens: when the sampler, drawing from the exact logits in order as a step-by-step run would, gives
the drafted token, that token is decoded at no cost. The first mismatch drops the rest. So the output
is the step-by-step output, greedy or seeded, and the draft never touches the sampler's random stream.
"""

from __future__ import annotations

import time

import numpy as np

from ..outputs import Outputs
from .core import SessionCore


class Verifying(SessionCore):
    def _advance(self, token: int) -> None:
        """Decode the pending token: from a row the last verification computed when the draft guessed
        it, else by a step (a drafted and verified one when drafting is on)."""
        if self._ahead:
            drafted, logits = self._ahead[0]
            accepted = drafted == token
            self._judge(accepted)
            if accepted:
                del self._ahead[0]
                self._tokens.append(token)
                self._logits = logits
                return
            self._drop_ahead()
        k = self._draft.next() if self._draft is not None else 0
        k = min(k, self._max_positions() - len(self._tokens) - 1)  # every verified row needs a position
        if k <= 0:
            start = time.perf_counter()
            self._decode([token], Outputs.LAST)
            if self._draft is not None:
                self._draft.stepped(time.perf_counter() - start)
            return
        self._verify(token, k)

    def _verify(self, token: int, k: int) -> None:
        ctx, pos, policy = self._ctx, len(self._tokens), self._policy
        try:
            start = time.perf_counter()
            drafted = policy.draft(ctx, token, pos, k)
            drafted_at = time.perf_counter()
            rows = policy.arrive(ctx, np.asarray([token, *drafted], dtype=np.int32), pos, Outputs.ALL)
            verified_at = time.perf_counter()
        except BaseException:
            self._cut_back(pos)  # the session stays as it was before the token, exact
            raise
        self._tokens.append(token)
        self._logits = rows[0]
        self._ahead = list(zip(drafted, rows[1:]))
        self._counters.n_verifies += 1
        self._counters.n_drafted += k
        assert self._draft is not None
        self._draft.verified(k, drafted_at - start, verified_at - drafted_at)

    def _judge(self, accepted: bool) -> None:
        if accepted:
            self._counters.n_draft_accepted += 1
        else:
            self._counters.n_draft_rejected += 1
        assert self._draft is not None  # rows are verified ahead only while drafting
        self._draft.judged(accepted)

    def _drop_ahead(self) -> None:
        """Forget verified rows past the decoded tokens (their cells and checkpoint rows too)."""
        if self._ahead:
            self._ahead = []
            self._cut_back(len(self._tokens))

    def _cut_back(self, n: int) -> None:
        self._ctx.seq_rm(0, n, -1)
        self._policy.truncate(n)
