"""The shared base of every cache policy: the hot set (the positions whose K/V live in
llama.cpp's cells), the budget it must respect, and eviction through the context."""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

import numpy as np

from ..errors import BudgetError, PolicyError
from ..outputs import Outputs

if TYPE_CHECKING:
    from ..draft_head import CandidateHead


class CachePolicy:
    """Keeps the hot set within ``budget`` cells, evicting what ``victims`` chooses.

    Subclasses choose victims; the base does the book-keeping and the llama.cpp
    calls. Positions are never shifted: a token keeps the position it was decoded
    at, so evicted tokens can later be recomputed exactly.
    """

    name = ""
    lossless = False  # True: the output equals the full cache's
    needs_attention = False  # True: victims depend on llama.cpp's attention weights
    attention_window = 0  # final query rows of a decode whose attention is summed apart (0: none recorded)
    needs_exact_attention = False  # True: only correct with batch-invariant attention (the exact profile)
    takes_budget = True  # False: the policy keeps every token and refuses a kv_budget
    checkpoints: tuple[str, ...] = ()  # checkpoint kinds it keeps to recompute evicted tokens (first: default)
    needs_layer_hooks = False  # True: it runs llama-kvd's per-layer hooks, which only some architectures have
    allows_capture = True  # False: it decodes outside llama.cpp's capture of residuals
    checkpoint: str | None = None  # the checkpoint kind in use, for policies that keep one
    prompt_in_one_pass = False  # True: a prompt of any length is one decode (arrive keeps only what fits)
    verifies_drafts = False  # True: its cells are a lossy cache it can draft over (draft) and then verify exactly
    # A drafting policy's output head over a few candidate tokens, set by the session where it pays.
    draft_head: CandidateHead | None = None

    def __init__(self, budget: int | None, *, n_sink: int = 4):
        self.budget = budget
        self.n_sink = n_sink
        self.hot: list[int] = []  # sorted positions held in cells

    @property
    def cells(self) -> int:
        """The budget, for the policies that always have one (make_policy gives every one but full)."""
        if self.budget is None:
            raise PolicyError(f"policy {self.name!r} needs a kv_budget")
        return self.budget

    @property
    def bounded(self) -> bool:
        return self.budget is not None

    @property
    def protected(self) -> int:
        """Hot tokens no eviction may take (the sinks, for policies that keep them)."""
        return 0

    def check_budget(self) -> None:
        """BudgetError unless the budget leaves a cell beyond the protected tokens: make_room must always
        find its victims, or a decode would fail halfway through a prompt."""
        if self.budget is not None and self.budget <= self.protected:
            raise BudgetError(
                f"policy {self.name!r} never evicts {self.protected} of its hot tokens (sinks or "
                f"recent window), so a KV budget of {self.budget} tokens leaves it no room: "
                "use a larger budget"
            )

    def max_new_tokens(self) -> int:
        """The most tokens one decode may add: they all need cells at once. Policies that choose
        by attention take half of what they could, so that part of the older tokens can survive
        each chunk of a prompt longer than the budget."""
        if self.budget is None:
            return 1 << 31
        free = self.budget - self.protected
        return max(1, free // 2) if self.needs_attention else free

    def make_room(self, ctx, n_new: int) -> list[int]:
        """Evict enough hot tokens for n_new more; returns the evicted positions."""
        if self.budget is None:
            return []
        excess = len(self.hot) + n_new - self.budget
        if excess <= 0:
            return []
        victims = sorted(self.victims(excess))
        if len(victims) != excess or len(set(victims)) != excess or not set(victims) <= set(self.hot):
            raise AssertionError(f"{self.name} chose {victims} to evict {excess} of {len(self.hot)} hot tokens")
        for first, last in runs(np.asarray(victims)):
            ctx.seq_rm(0, first, last + 1)
        self.forget(victims)
        return victims

    def victims(self, n: int) -> list[int]:
        """n hot positions to evict."""
        raise NotImplementedError

    def admitted(self, positions) -> None:
        for p in positions:
            i = bisect.bisect_left(self.hot, p)
            if i == len(self.hot) or self.hot[i] != p:
                self.hot.insert(i, p)

    def forget(self, positions) -> None:
        gone = set(int(p) for p in positions)
        self.hot = [p for p in self.hot if p not in gone]

    def truncate(self, n: int) -> None:
        """The sequence was cut back to its first n positions."""
        self.hot = self.hot[: bisect.bisect_left(self.hot, n)]

    def arrive(self, ctx, tokens: np.ndarray, pos: int, outputs: Outputs) -> np.ndarray | None:
        """Make room for tokens at pos, decode them and admit them to the hot set. Returns what decode does."""
        self.make_room(ctx, len(tokens))
        logits = self.decode(ctx, tokens, pos, outputs)
        self.admitted(range(pos, pos + len(tokens)))
        return logits

    def draft(self, ctx, token: int, pos: int, k: int) -> list[int]:
        """k greedy tokens that follow token (at pos), guessed cheaply, for arrive to verify."""
        raise PolicyError(f"policy {self.name!r} has nothing to verify drafts against")

    def decode(self, ctx, tokens: np.ndarray, pos: int, outputs: Outputs) -> np.ndarray | None:
        """Decode tokens at pos once make_room has run. Returns their logits when the policy computes
        them itself; None when llama.cpp holds them in the context, as after any decode."""
        ctx.decode(tokens, pos, outputs=int(outputs))
        return None

    def checkpoint_bytes(self) -> int:
        """Bytes the policy keeps, besides the cells, to recompute what it evicted."""
        return 0

    def observe(self, ctx, first_pos: int, n: int) -> None:
        """Called after every decode of n tokens at first_pos (attention-based policies read scores)."""

    def reset(self) -> None:
        self.hot = []


def runs(positions: np.ndarray):
    """(first, last) of each run of consecutive positions in an increasing array."""
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    for run in np.split(positions, breaks):
        yield int(run[0]), int(run[-1])


class ScoredCache(CachePolicy):
    """A policy that evicts the lowest-scoring tokens outside its protected recent tokens;
    subclasses say how ``observe`` turns llama.cpp's attention into scores."""

    needs_attention = True
    needs_exact_attention = True
    attention_window = 1

    def __init__(self, budget: int | None, *, n_sink: int = 4):
        super().__init__(budget, n_sink=n_sink)
        self.score: dict[int, float] = {}

    def victims(self, n: int) -> list[int]:
        candidates = self.hot[: len(self.hot) - self.protected]
        return sorted(candidates, key=lambda p: (self.score.get(p, 0.0), p))[:n]

    def forget(self, positions) -> None:
        super().forget(positions)
        for p in positions:
            self.score.pop(int(p), None)

    def reset(self) -> None:
        super().reset()
        self.score = {}
