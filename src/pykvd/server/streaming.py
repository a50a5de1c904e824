"""Server-sent events, and noticing that a client has gone.

Starlette's own StreamingResponse notices a disconnect in different ways depending on the ASGI
version the server speaks (a cancelled task, or an OSError from a later send), and a cancelled async
generator may run its cleanup late. A slot must be freed the moment its client leaves, so this
module watches the ASGI receive channel itself and calls back at once, whichever way the stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import AsyncIterator, Callable, Union

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

DONE = "[DONE]"


def sse(data: Union[dict, str]) -> bytes:
    """One server-sent event carrying data (a JSON object, or OpenAI's closing [DONE])."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


class DisconnectWatch:
    """While active, reads the request's receive channel and calls on_gone once the client disconnects.

    Use only after the request body has been read: from then on the channel carries nothing but the
    disconnect."""

    def __init__(self, receive: Receive, on_gone: Callable[[], None] | None = None):
        self._receive = receive
        self._callbacks = [] if on_gone is None else [on_gone]
        self.gone = asyncio.Event()
        self._task: asyncio.Task | None = None

    def call_when_gone(self, callback: Callable[[], None]) -> None:
        """callback() once the client disconnects; at once if it already has."""
        if self.gone.is_set():
            callback()
        else:
            self._callbacks.append(callback)

    async def __aenter__(self) -> DisconnectWatch:
        self._task = asyncio.ensure_future(self._watch())
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.mark_gone()

    def mark_gone(self) -> None:
        if not self.gone.is_set():
            self.gone.set()
            for callback in self._callbacks:
                callback()


class EventStream(Response):
    """A text/event-stream response of the events an async iterator yields; on_gone runs as soon as
    the client disconnects (and the stream then stops)."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes], on_gone: Callable[[], None]):
        self._events, self._on_gone = events, on_gone
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with DisconnectWatch(receive, self._on_gone) as watch:
            try:
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                async for event in self._events:
                    if watch.gone.is_set():
                        return
                    await send({"type": "http.response.body", "body": event, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except OSError:  # the client went away and the server says so on send
                watch.mark_gone()
            finally:
                close = getattr(self._events, "aclose", None)  # run the producer's cleanup now, not at GC
                if close is not None:
                    await close()
