"""window: only the most recent tokens keep their K/V."""

from __future__ import annotations

from .base import CachePolicy


class RecentWindow(CachePolicy):
    name = "window"

    def victims(self, n: int) -> list[int]:
        return self.hot[:n]
