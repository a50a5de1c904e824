"""h2o: heavy hitters by accumulated attention, plus the most recent tokens (H2O).

Every decode adds the attention each held token received (llama.cpp's own softmax, averaged
over heads and layers, summed over query rows) to its score. The recent half of the budget is
never evicted; among the rest the lowest-scoring tokens go. Unlike the original, which keeps a
separate heavy-hitter set per head and layer, eviction removes whole tokens from every layer.
"""

from __future__ import annotations

from .base import ScoredCache


class HeavyHitters(ScoredCache):
    name = "h2o"

    @property
    def protected(self) -> int:
        return min(max(1, self.cells // 2), self.cells - 1)

    def observe(self, ctx, first_pos: int, n: int) -> None:
        positions, total, _, _ = ctx.attention_scores()
        for p, s in zip(positions.tolist(), total.tolist()):
            self.score[p] = self.score.get(p, 0.0) + s
