"""Slots: one pykvd Session each, lent to one request at a time, and the bounded queue in front of them.

The pool lives on the event loop (only coroutines and loop callbacks touch it), so it needs no lock.
A request takes the free slot whose tokens share the longest prefix with its prompt (prompt reuse);
when none is free it waits, first come first served, in a queue of at most ``queue_limit`` requests,
and beyond that is refused at once (503).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from typing import Sequence

from ..prompt_reuse import common_prefix
from ..session import Session, SessionStats
from .errors import queue_full


class Slot:
    """A session and what is known of it between requests (read on the loop, written by its worker)."""

    def __init__(self, index: int, session: Session):
        self.index = index
        self.session = session
        self.busy = False
        self.last_used = 0  # the pool's clock when the slot was last handed out
        self.n_requests = 0
        self.tokens: list[int] = []
        self.stats: SessionStats = session.stats
        self.snapshot()

    def snapshot(self) -> None:
        """Copy the session's tokens and stats, for the pool and /slots to read while a worker runs it.
        Called only by the thread that holds the slot (or before it is first lent)."""
        self.tokens = self.session.tokens
        self.stats = self.session.stats

    def describe(self) -> dict:
        s = self.stats
        return {
            "id": self.index,
            "is_processing": self.busy,
            "n_requests": self.n_requests,
            "policy": self.session.policy,
            "checkpoint": self.session.checkpoint,
            "n_ctx": s.n_ctx,
            "tokens": len(self.tokens),
            "cells_in_use": s.n_cached,
            "kv_bytes": s.kv_bytes,
            # llama.cpp allocates every cell up front: the cells in use times the bytes per cell.
            "kv_bytes_in_use": s.n_cached * s.kv_bytes // s.n_ctx if s.n_ctx else 0,
            "checkpoint_bytes": s.checkpoint_bytes,
            "compute_bytes": s.compute_bytes,
        }


class _Waiter:
    def __init__(self, prompt: Sequence[int], future: asyncio.Future):
        self.prompt, self.future = prompt, future


class SlotPool:
    def __init__(self, slots: list[Slot], queue_limit: int):
        self.slots = slots
        self.queue_limit = queue_limit
        self._waiting: deque[_Waiter] = deque()
        self._clock = itertools.count(1)

    @property
    def n_waiting(self) -> int:
        return len(self._waiting)

    async def acquire(self, prompt: Sequence[int]) -> Slot:
        """A slot for prompt, now or once one is free; APIError 503 when the queue is full."""
        if not self._waiting and any(not s.busy for s in self.slots):
            return self._lend(prompt)
        if len(self._waiting) >= self.queue_limit:
            raise queue_full(len(self.slots), len(self._waiting))
        waiter = _Waiter(prompt, asyncio.get_running_loop().create_future())
        self._waiting.append(waiter)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            # The request went away while it waited: leave the queue, or give back a slot it was just handed.
            if waiter in self._waiting:
                self._waiting.remove(waiter)
            elif waiter.future.done() and not waiter.future.cancelled():
                self.release(waiter.future.result())
            raise

    def release(self, slot: Slot) -> None:
        """The slot's request is over: hand it to the first waiter, if any."""
        slot.busy = False
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.future.done():
                waiter.future.set_result(self._lend(waiter.prompt))
                return

    def _lend(self, prompt: Sequence[int]) -> Slot:
        free = [s for s in self.slots if not s.busy]
        # The longest shared prefix wins; among equals, the slot idle longest (its tokens matter least).
        slot = max(free, key=lambda s: (common_prefix(s.tokens, prompt), -s.last_used))
        slot.busy = True
        slot.last_used = next(self._clock)
        slot.n_requests += 1
        return slot
