"""streaming: attention sinks (the first n_sink tokens) plus the recent window (StreamingLLM).

Unlike StreamingLLM's reference code, positions are not re-assigned inside the cache:
every token keeps its original position.
"""

from __future__ import annotations

from .base import CachePolicy


class StreamingSinks(CachePolicy):
    name = "streaming"

    @property
    def protected(self) -> int:
        return self.n_sink

    def victims(self, n: int) -> list[int]:
        evictable = [p for p in self.hot if p >= self.n_sink]
        return evictable[:n]
