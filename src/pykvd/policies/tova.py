"""tova: evict the tokens the current query attends to least (TOVA).

The score is the attention from the last decoded token (llama.cpp's softmax, averaged over
heads and layers). The original evicts per head; here a token leaves every layer at once.
"""

from __future__ import annotations

from .base import ScoredCache


class TokenOmission(ScoredCache):
    name = "tova"

    def observe(self, ctx, first_pos: int, n: int) -> None:
        positions, _, last, _ = ctx.attention_scores()
        self.score = dict(zip(positions.tolist(), last.tolist()))
