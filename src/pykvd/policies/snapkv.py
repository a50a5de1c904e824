"""snapkv: keep the tokens an observation window at the end of the prompt attends to most,
plus the window itself (SnapKV).

After every multi-token decode (the prompt, or each chunk of a prompt longer than the budget)
the last ``window`` query rows' attention (llama.cpp's softmax, averaged over heads and layers)
is smoothed over neighbouring positions (average pool of 5, as SnapKV clusters) and becomes each
token's score. Single-token decode steps do not rescore: tokens generated afterwards have no
score and are the first to go once they leave the window. Eviction removes whole tokens.
"""

from __future__ import annotations

import numpy as np

from .base import ScoredCache

POOL = 5


class SnapKV(ScoredCache):
    name = "snapkv"

    def __init__(self, budget: int | None, *, n_sink: int = 4):
        super().__init__(budget, n_sink=n_sink)
        self.window = max(1, min(32, self.cells // 4))
        self.attention_window = self.window

    @property
    def protected(self) -> int:
        return self.window

    def observe(self, ctx, first_pos: int, n: int) -> None:
        if n < 2:
            return
        positions, _, _, window = ctx.attention_scores()
        pooled = np.convolve(window, np.ones(POOL) / POOL, mode="same")
        self.score.update(zip(positions.tolist(), pooled.tolist()))
