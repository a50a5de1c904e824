"""The model, its slots and the worker threads: what the routes hand a checked request to.

A request becomes token ids (chat template and tokenizer, in a thread: they are llama.cpp calls),
waits for a slot, and runs on it in the slot pool's executor, one thread per slot. Its events come
back to the event loop through an asyncio queue.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from ..api import Model
from ..errors import ArgumentError, PykvdError
from ..memory import rss_bytes
from . import worker
from .config import ServerConfig
from .errors import context_exceeded, from_pykvd, invalid, server_error
from .slots import Slot, SlotPool
from .validation import GenerationRequest


class RunningJob:
    """A job lent a slot: its events as they come, and a way to stop it."""

    def __init__(self, job: worker.Job, loop: asyncio.AbstractEventLoop):
        self.job = job
        self._loop = loop
        self._events: asyncio.Queue[worker.Event] = asyncio.Queue()

    def emit(self, event: worker.Event) -> None:
        """Called from the worker thread."""
        try:
            self._loop.call_soon_threadsafe(self.deliver, event)
        except RuntimeError:  # the loop has closed: the server is shutting down
            self.cancel()

    def deliver(self, event: worker.Event) -> None:
        """Called on the loop."""
        self._events.put_nowait(event)

    async def next_event(self) -> worker.Event:
        return await self._events.get()

    def cancel(self) -> None:
        self.job.cancelled.set()


class Engine:
    def __init__(self, model: Model, config: ServerConfig, slots: list[Slot]):
        self.model = model
        self.config = config
        self.pool = SlotPool(slots, config.queue)
        self.created = int(time.time())
        self._executor = ThreadPoolExecutor(max_workers=len(slots), thread_name_prefix="pykvd-slot")
        self._running: set[RunningJob] = set()
        first = slots[0].session
        # A bounded session's sequence may grow to the trained context; a full one to its cells.
        self.context_limit = first.n_ctx if first.kv_budget is None else model.info.n_ctx_train

    @classmethod
    def load(cls, config: ServerConfig, progress: Callable[[str], None] = lambda _: None) -> Engine:
        """Load the model and open one session per slot (pykvd errors for a bad model or setting)."""
        model = Model(config.model, exact=config.exact, chat_template=config.chat_template, progress=progress)
        sessions = []
        try:
            n_ctx = _cells_per_slot(config, model.info.n_ctx_train)
            for _ in range(config.parallel):
                sessions.append(
                    model.session(
                        n_ctx=n_ctx,
                        n_batch=config.batch_size,
                        n_threads=config.threads_per_slot(),
                        sampling=config.sampling,
                        kv_budget=config.kv_budget,
                        policy=config.policy,
                        n_sink=config.n_sink,
                        checkpoint=config.checkpoint,
                        draft=config.draft,
                    )
                )
        except BaseException:
            for session in sessions:
                session.close()
            model.close()
            raise
        return cls(model, config, [Slot(i, s) for i, s in enumerate(sessions)])

    # -- requests ----------------------------------------------------------------------------------

    def prompt_tokens(self, request: GenerationRequest) -> list[int]:
        """The request's prompt as token ids (the chat template applied), else APIError 400. Blocking."""
        if request.messages is not None and self.model.chat_template is None:
            raise invalid(
                f"{self.model.path.name} has no chat template: start the server with --chat-template NAME "
                "(a llama.cpp built-in such as gemma or chatml), or use /v1/completions",
                param="messages",
                code="no_chat_template",
            )
        try:
            if request.messages is not None:
                text = self.model.apply_chat_template(request.messages, add_generation_prompt=True)
                ids = self.model.tokenize(text)
            elif isinstance(request.prompt, str):
                ids = self.model.tokenize(request.prompt)
            else:
                ids = self.model.check_tokens(request.prompt or [])
        except PykvdError as exc:
            raise from_pykvd(exc) from None
        if len(ids) == 0:
            raise invalid("the prompt is empty: it has no tokens", param="prompt", code="invalid_prompt")
        if len(ids) > self.context_limit:
            raise context_exceeded(len(ids), self.context_limit)
        return [int(t) for t in ids]

    async def start(self, request: GenerationRequest, prompt: list[int]) -> RunningJob:
        """Wait for a slot (APIError 503 if the queue is full) and start the request on it."""
        slot = await self.pool.acquire(prompt)
        job = worker.Job(
            prompt=prompt,
            max_tokens=self._max_tokens(request),
            sampling=request.sampling,
            stop=request.stop,
            stop_at_eog=request.stop_at_eog,
            context_limit=self.context_limit,
            stream=request.stream,
        )
        loop = asyncio.get_running_loop()
        running = RunningJob(job, loop)
        self._running.add(running)

        def serve() -> None:
            last: worker.Event = worker.Failed(server_error("the worker stopped"))
            try:
                last = worker.run(slot, job, running.emit)
            finally:
                try:
                    loop.call_soon_threadsafe(self._finished, slot, running, last)
                except RuntimeError:  # the loop is gone: nobody is left to lend the slot to
                    pass

        self._executor.submit(serve)
        return running

    def _max_tokens(self, request: GenerationRequest) -> int:
        """The request's limit, else the server's (-n), else none: the context ends the generation."""
        for limit in (request.max_tokens, self.config.max_tokens):
            if limit is not None:
                return limit
        return self.context_limit

    def _finished(self, slot: Slot, running: RunningJob, last: worker.Event) -> None:
        """The slot is free before the answer's last event goes out: a client's next turn finds it so."""
        self._running.discard(running)
        self.pool.release(slot)
        running.deliver(last)

    def chat_template_problem(self) -> str | None:
        """Why chat requests will fail (no template, or one llama.cpp cannot apply), or None."""
        if self.model.chat_template is None:
            return "the model has no chat template: /v1/chat/completions answers 400 (give --chat-template NAME)"
        try:
            self.model.apply_chat_template([{"role": "user", "content": "hello"}])
        except PykvdError as exc:
            return f"the chat template cannot be applied ({exc}): /v1/chat/completions answers 400"
        return None

    # -- reporting -----------------------------------------------------------------------------------

    def slots_report(self) -> dict:
        slots = [slot.describe() for slot in self.pool.slots]
        return {
            "model": self.config.model_id,
            "n_slots": len(slots),
            "n_waiting": self.pool.n_waiting,
            "queue_limit": self.pool.queue_limit,
            "context_limit": self.context_limit,
            "kv_budget_tokens": self.kv_budget_tokens,
            "kv_bytes_total": sum(s["kv_bytes"] for s in slots),
            "checkpoint_bytes_total": sum(s["checkpoint_bytes"] for s in slots),
            "rss_bytes": rss_bytes(),
            "slots": slots,
        }

    @property
    def kv_budget_tokens(self) -> int | None:
        budget = self.pool.slots[0].session.kv_budget
        return None if budget is None else budget.tokens

    # -- shutdown -------------------------------------------------------------------------------------

    def cancel_all(self) -> None:
        for running in list(self._running):
            running.cancel()

    def close(self) -> None:
        """Stop every job, wait for the workers, then free the sessions and the model."""
        self.cancel_all()
        self._executor.shutdown(wait=True)
        for slot in self.pool.slots:
            slot.session.close()
        self.model.close()


def _cells_per_slot(config: ServerConfig, n_ctx_train: int) -> int | None:
    """A full-cache slot's context. Like llama-server, -c is the total, shared evenly among the slots
    (0: the trained context); without -c each slot gets min(4096, trained). None under a KV budget,
    whose cells are the budget."""
    if config.kv_budget is not None:
        return None
    if config.ctx_size is None:
        return min(4096, n_ctx_train)
    total = n_ctx_train if config.ctx_size == 0 else config.ctx_size
    per_slot = total // config.parallel
    if per_slot < 1:
        raise ArgumentError(f"a context of {total} tokens cannot be shared among {config.parallel} slots")
    return per_slot
