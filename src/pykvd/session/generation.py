"""Generating text: generate, stream, chat and chat_stream over a session core."""

from __future__ import annotations

import codecs
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from .._llama import native
from ..errors import ArgumentError, ArgumentTypeError, ContextOverflowError, PromptError
from ..model import Message
from ..sampling import SamplingParams
from .core import FINISH_CONTEXT, FINISH_LENGTH, FINISH_STOP, _one_call, common_prefix
from .verification import Verifying


@dataclass
class Generation:
    text: str
    tokens: list[int]
    finish_reason: str
    n_prompt_tokens: int
    prefill_s: float
    decode_s: float


@dataclass
class _Run:
    """Book-keeping of one generation while its tokens stream out."""

    tokens: list[int] = field(default_factory=list)
    finish_reason: str = FINISH_LENGTH
    n_prompt_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0


class _HeldStream:
    """A stream's pieces, holding the session's call slot until they run out, fail or are closed
    (a stream dropped unfinished is closed when it is garbage-collected)."""

    def __init__(self, pieces: Iterator[str], release):
        self._pieces, self._release = pieces, release

    def __iter__(self) -> _HeldStream:
        return self

    def __next__(self) -> str:
        if self._release is None:
            raise StopIteration
        try:
            return next(self._pieces)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            try:
                close = getattr(self._pieces, "close", None)  # a generator: run its finally blocks now
                if close is not None:
                    close()
            finally:
                release()

    def __del__(self) -> None:
        self.close()


class Generating(Verifying):
    # -- generation --------------------------------------------------------

    @_one_call
    def generate(
        self,
        prompt: str | Sequence[int] | np.ndarray | None = None,
        *,
        max_tokens: int = 128,
        sampling: SamplingParams | None = None,
        stop_at_eog: bool = True,
    ) -> Generation:
        """Process ``prompt`` (if any) and generate up to max_tokens tokens."""
        run = _Run()
        pieces = list(self._run(prompt, max_tokens, sampling, stop_at_eog, run))
        return Generation(
            "".join(pieces), run.tokens, run.finish_reason, run.n_prompt_tokens, run.prefill_s, run.decode_s
        )

    def stream(
        self,
        prompt: str | Sequence[int] | np.ndarray | None = None,
        *,
        max_tokens: int = 128,
        sampling: SamplingParams | None = None,
        stop_at_eog: bool = True,
    ) -> Iterator[str]:
        """Like generate, yielding text as it is produced (whole UTF-8 characters only).

        The prompt is validated and processed when stream() is called; tokens are
        generated as the iterator is consumed; until it is exhausted or closed, the session
        takes no other call.
        """
        self._acquire()
        try:
            return _HeldStream(self._run(prompt, max_tokens, sampling, stop_at_eog, _Run()), self._busy.release)
        except BaseException:
            self._busy.release()
            raise

    def _run(
        self, prompt, max_tokens: int, sampling: SamplingParams | None, stop_at_eog: bool, run: _Run
    ) -> Iterator[str]:
        # Validate everything before any state changes, so bad input loses nothing.
        params = self._check_run_args(max_tokens, sampling)
        ids = None if prompt is None else self._prompt_ids(prompt)
        if ids is None and self._pending:
            ids = np.zeros(0, dtype=np.int32)  # decode the pending token first
        self._context()
        if ids is None and not self._has_logits():
            # Fresh or reset session: the context's last logits, if any, belong to forgotten tokens.
            raise PromptError("nothing to continue from: give a prompt")
        if ids is not None:
            run.n_prompt_tokens = len(ids) + len(self._pending)
            run.prefill_s = self._prefill(ids)
        return self._decode_loop(max_tokens, params, stop_at_eog, run)

    def _check_run_args(self, max_tokens: int, sampling: SamplingParams | None) -> SamplingParams:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
            raise ArgumentError(f"max_tokens must be an integer >= 0, not {max_tokens!r}")
        params = sampling or self.sampling
        if not isinstance(params, SamplingParams):
            raise ArgumentTypeError("sampling must be a pykvd.SamplingParams")
        return params

    def _decode_loop(self, max_tokens: int, params: SamplingParams, stop_at_eog: bool, run: _Run) -> Iterator[str]:
        ctx, model = self._context(), self._model
        native_model = model._handle()  # sampled ids are always in the vocabulary: skip re-validation
        sampler = self._sampler(params)
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        start = time.perf_counter()
        try:
            while len(run.tokens) < max_tokens:
                token = sampler.sample(ctx) if self._logits is None else sampler.sample_logits(self._logits)
                if stop_at_eog and model.is_end_of_generation(token):
                    run.finish_reason = FINISH_STOP
                    break
                run.tokens.append(token)
                self._counters.n_generated += 1
                self._pending = [token]
                text = utf8.decode(native_model.token_to_piece(token, False))
                if text:
                    yield text
                if len(run.tokens) == max_tokens:
                    break
                if len(self._tokens) >= self._max_positions():
                    run.finish_reason = FINISH_CONTEXT
                    break
                self._advance(token)
                self._pending = []
                self._counters.n_decode_steps += 1
            tail = utf8.decode(b"", final=True)
            if tail:
                yield tail
        finally:
            # A stream that ends, fails or is closed leaves what a step-by-step run would.
            self._drop_ahead()
            run.decode_s = time.perf_counter() - start
            self._counters.decode_s += run.decode_s

    def _sampler(self, params: SamplingParams):
        # llama.cpp allocates the penalty window up front; no sequence outgrows the context.
        repeat_last_n = min(int(params.repeat_last_n), self._max_positions())
        temperature = 0.0 if params.greedy else float(params.temperature)
        sampler = native.Sampler(
            self._model._handle(),
            temperature=temperature,
            top_k=int(params.top_k),
            top_p=float(params.top_p),
            min_p=float(params.min_p),
            repeat_penalty=float(params.repeat_penalty),
            repeat_last_n=repeat_last_n,
            seed=int(params.resolved_seed()),
        )
        if params.repeat_penalty != 1.0 and repeat_last_n:
            for token in self.tokens[-repeat_last_n:]:
                sampler.accept(token)
        return sampler

    # -- chat --------------------------------------------------------------

    def chat(
        self,
        message: str | Message | Sequence[Message],
        *,
        max_tokens: int = 256,
        sampling: SamplingParams | None = None,
    ) -> str:
        """Add message(s) (a str is a user message), generate the assistant's reply and return it."""
        return "".join(self.chat_stream(message, max_tokens=max_tokens, sampling=sampling))

    def chat_stream(
        self,
        message: str | Message | Sequence[Message],
        *,
        max_tokens: int = 256,
        sampling: SamplingParams | None = None,
    ) -> Iterator[str]:
        """Like chat, yielding the reply as it is produced (holding the session, as stream does)."""
        self._acquire()
        try:
            return _HeldStream(self._chat_pieces(message, max_tokens, sampling), self._busy.release)
        except BaseException:
            self._busy.release()
            raise

    def _chat_pieces(self, message, max_tokens: int, sampling: SamplingParams | None) -> Iterator[str]:
        self._context()
        new = _as_messages(message)
        conversation = self.messages + new
        self._check_run_args(max_tokens, sampling)  # before _reuse_prefix changes the cache
        ids = self._model.tokenize(self._model.apply_chat_template(conversation, add_generation_prompt=True))
        suffix = self._reuse_prefix(ids)
        run = _Run()
        pieces = self._run(suffix, max_tokens, sampling, True, run)
        self.messages = conversation
        return self._record_reply(pieces)

    def _record_reply(self, pieces: Iterator[str]) -> Iterator[str]:
        reply = []
        for piece in pieces:
            reply.append(piece)
            yield piece
        self.messages.append({"role": "assistant", "content": "".join(reply)})

    def _reuse_prefix(self, ids: np.ndarray) -> np.ndarray:
        """Keep the cached tokens that start ``ids``, drop the rest; return the ids still to process."""
        ctx = self._context()
        if len(ids) > self._max_positions():
            raise ContextOverflowError(
                f"the conversation has {len(ids)} tokens, the context holds {self._max_positions()}"
            )
        held = self._tokens
        n = common_prefix(held, ids)
        if n == len(ids):
            n -= 1  # re-process the last token so its logits exist
        if n < len(held):
            if not ctx.seq_rm(0, n, -1):
                # Recurrent state cannot be cut back to a prefix: start the conversation over.
                ctx.memory_clear()
                n = 0
            del self._tokens[n:]
            self._logits = None
            self._policy.truncate(n)
        self._pending = []
        return ids[n:]


def _as_messages(message: str | Message | Sequence[Message]) -> list[Message]:
    if isinstance(message, str):
        if not message:
            raise PromptError("message is empty")
        return [{"role": "user", "content": message}]
    if isinstance(message, dict):
        return [message]
    messages = list(message)
    if not messages:
        raise PromptError("no messages given")
    return messages
