"""full: the ordinary cache; every token keeps its K/V in a cell (the reference)."""

from __future__ import annotations

from .base import CachePolicy


class FullCache(CachePolicy):
    name = "full"
    lossless = True
    takes_budget = False

    def victims(self, n: int) -> list[int]:
        raise AssertionError("the full cache never evicts")
