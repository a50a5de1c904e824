"""The endpoints: /health, /v1/models, /v1/chat/completions, /v1/completions and /slots.

A completion request is checked (400), turned into tokens (400 if too long), given a slot (waiting,
or 503) and run in the slot's thread. A non-streamed reply is gathered while the client is watched;
a streamed one is sent as server-sent events once the prompt has been processed, so an error in the
prompt still gets its HTTP status rather than an error event.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator, Awaitable, Callable, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import shapes
from .engine import Engine, RunningJob
from .streaming import DONE, DisconnectWatch, EventStream, sse
from .validation import GenerationRequest, parse_chat, parse_completion, parse_json
from .worker import Failed, Finished, Piece, Prefilled

T = TypeVar("T")

# Nobody reads the answer to a request whose client has gone (nginx's name for it).
CLIENT_GONE = 499


def _engine(request: Request) -> Engine:
    return request.app.state.engine


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def models(request: Request) -> Response:
    engine = _engine(request)
    info = engine.model.info
    meta = {
        "architecture": info.architecture,
        "n_params": info.n_params,
        "size": info.size_bytes,
        "n_ctx_train": info.n_ctx_train,
        "n_vocab": info.n_vocab,
        "n_ctx_slot": engine.context_limit,
        "policy": engine.pool.slots[0].session.policy,
        "kv_budget_tokens": engine.kv_budget_tokens,
    }
    return JSONResponse(shapes.model_list(engine.config.model_id, engine.created, meta))


async def slots(request: Request) -> Response:
    return JSONResponse(_engine(request).slots_report())


async def chat_completions(request: Request) -> Response:
    return await _complete(request, parse_chat, chat=True)


async def completions(request: Request) -> Response:
    return await _complete(request, parse_completion, chat=False)


async def _complete(request: Request, parse: Callable[..., GenerationRequest], *, chat: bool) -> Response:
    engine = _engine(request)
    checked = parse(parse_json(await request.body()), engine.config.sampling)
    prompt = await asyncio.to_thread(engine.prompt_tokens, checked)
    reply = shapes.Reply.new(engine.config.model_id, chat=chat)
    async with DisconnectWatch(request.receive) as watch:
        running = await _unless_gone(engine.start(checked, prompt), watch)
        if running is None:
            return Response(status_code=CLIENT_GONE)
        watch.call_when_gone(running.cancel)
        prefilled = await _unless_gone(running.next_event(), watch)
        if isinstance(prefilled, Failed):
            raise prefilled.error
        if not isinstance(prefilled, Prefilled):  # the client left while the prompt was processed
            running.cancel()
            return Response(status_code=CLIENT_GONE)
        if not checked.stream:
            return JSONResponse(await _gather(running, reply))
    return EventStream(_events(running, reply, checked.include_usage), on_gone=running.cancel)


async def _unless_gone(step: Awaitable[T], watch: DisconnectWatch) -> T | None:
    """step's result, or None (step cancelled) if the client disconnects first."""
    task = asyncio.ensure_future(step)
    gone = asyncio.ensure_future(watch.gone.wait())
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


async def _gather(running: RunningJob, reply: shapes.Reply) -> dict:
    """The whole answer: a job that does not stream sends its text only with Finished."""
    while True:
        event = await running.next_event()
        if isinstance(event, Finished):
            return reply.whole(event.text, event.finish_reason, _usage(event))
        if isinstance(event, Failed):
            raise event.error


async def _events(running: RunningJob, reply: shapes.Reply, include_usage: bool) -> AsyncIterator[bytes]:
    try:
        first = reply.first_chunk()
        if first is not None:
            yield sse(first)
        while True:
            event = await running.next_event()
            if isinstance(event, Piece):
                yield sse(reply.text_chunk(event.text))
            elif isinstance(event, Finished):
                yield sse(reply.last_chunk(event.finish_reason))
                if include_usage:
                    yield sse(reply.usage_chunk(_usage(event)))
                break
            elif isinstance(event, Failed):
                yield sse(event.error.body())
                break
        yield sse(DONE)
    finally:
        running.cancel()  # a stream closed early stops its generation (a finished one: nothing to stop)


def _usage(event: Finished) -> dict:
    return shapes.usage(event.n_prompt, event.n_cached, event.n_completion)
