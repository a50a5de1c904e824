"""One request's generation on its slot, run in a worker thread so llama.cpp never blocks the event loop.

The worker reports what happens as events (Prefilled, then Piece after Piece) through ``emit``, which
hands them to the loop, and returns the last one (Finished, or Failed at any point) instead of emitting
it: the slot must be free again before the client can see its answer and send the next turn, or that
turn could find its slot still taken. It checks ``cancelled`` between tokens, so a client that goes
away stops the generation within one token and frees the slot.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Union

from ..errors import PykvdError
from ..prompt_reuse import continue_from
from ..sampling import SamplingParams
from ..stop_strings import StopStrings
from .errors import APIError, from_pykvd, server_error
from .slots import Slot

log = logging.getLogger("pykvd.server")


@dataclass
class Job:
    prompt: list[int]
    max_tokens: int
    sampling: SamplingParams
    stop: tuple[str, ...]
    stop_at_eog: bool
    context_limit: int  # positions a slot's sequence may reach
    stream: bool  # emit each Piece as it comes; otherwise only the whole text, in Finished (no wake-up per token)
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Prefilled:
    """The prompt has been processed: n_cached of its n_prompt tokens were reused, not processed."""

    n_prompt: int
    n_cached: int


@dataclass(frozen=True)
class Piece:
    text: str


@dataclass(frozen=True)
class Finished:
    finish_reason: str  # "stop" or "length", as OpenAI names them
    n_prompt: int
    n_cached: int
    n_completion: int
    text: str  # the whole reply (also sent piece by piece when the job streams)


@dataclass(frozen=True)
class Failed:
    error: APIError


Event = Union[Prefilled, Piece, Finished, Failed]


def run(slot: Slot, job: Job, emit: Callable[[Event], None]) -> Finished | Failed:
    """Serve job on slot, reporting through emit; returns the last event. Never raises: a failure is an event."""
    try:
        return _generate(slot, job, emit)
    except PykvdError as exc:
        return Failed(from_pykvd(exc))
    except Exception as exc:  # a bug must not take the slot (or the server) down with it
        log.exception("generation failed")
        _recover(slot)
        return Failed(server_error(f"{type(exc).__name__}: {exc}"))
    finally:
        slot.snapshot()


def _generate(slot: Slot, job: Job, emit: Callable[[Event], None]) -> Finished:
    session = slot.session
    before = session.stats
    # stream() hands back an iterator that holds the session until it is closed.
    pieces: Any = session.stream(
        continue_from(session, job.prompt),
        max_tokens=job.max_tokens,
        sampling=job.sampling,
        stop_at_eog=job.stop_at_eog,
    )  # the prompt is processed here, before the first piece
    stops = StopStrings(job.stop)
    texts: list[str] = []

    def send(text: str) -> None:
        texts.append(text)
        if job.stream:
            emit(Piece(text))

    try:
        n_processed = session.stats.n_prefill_tokens - before.n_prefill_tokens
        n_cached = len(job.prompt) - n_processed
        emit(Prefilled(len(job.prompt), n_cached))
        for text in stops.cut(pieces, job.cancelled.is_set):
            send(text)
    finally:
        pieces.close()  # the session takes calls again (closing twice is harmless)
    after = session.stats
    n_completion = after.n_generated - before.n_generated
    reason = _finish_reason(job, stops.stopped, n_completion, after.n_tokens)
    return Finished(reason, len(job.prompt), n_cached, n_completion, "".join(texts))


def _finish_reason(job: Job, hit_stop_string: bool, n_completion: int, n_tokens: int) -> str:
    """ "stop" for an end-of-generation token or a stop string; "length" when max_tokens or the context ran out
    (a session's stream ends for no other reason)."""
    if hit_stop_string:
        return "stop"
    return "length" if n_completion >= job.max_tokens or n_tokens >= job.context_limit else "stop"


def _recover(slot: Slot) -> None:
    """After an unexpected error, start the slot's session over rather than trust its state."""
    try:
        slot.session.reset()
    except Exception:
        log.exception("could not reset slot %d", slot.index)
