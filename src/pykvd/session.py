"""Sessions: a llama.cpp context with its token history, generation and chat."""

from __future__ import annotations

import codecs
import contextlib
import functools
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from ._llama import native
from .errors import (ArgumentError, ArgumentTypeError, ContextOverflowError, IndexOutOfRangeError, PolicyError,
                     PromptError, ResidualError, SessionBusyError, SessionClosedError, UnsupportedArchitectureError)
from .memory import rss_bytes
from .model import LoadedModel, Message
from .outputs import Outputs
from .profile import FLASH_ATTN_OFF, RuntimeProfile
from .policies.base import runs
from .residuals import ResidualCapture, checked_layer_range, checked_positions, checked_rows
from .sampling import SamplingParams

FINISH_STOP = "stop"  # the model produced an end-of-generation token
FINISH_LENGTH = "length"  # max_tokens reached
FINISH_CONTEXT = "context"  # the context is full

# Architectures whose graphs carry llama-kvd's layer hooks (capture, re-injection, kvdirect): llama-kvd's own list.
CAPTURE_ARCHITECTURES = frozenset(native.kvd_architectures())


def _unsupported(what: str, arch: str) -> UnsupportedArchitectureError:
    return UnsupportedArchitectureError(f"{what} is not available for {arch!r}: {native.kvd_unsupported_reason(arch)} "
                                        f"(supported: {', '.join(sorted(CAPTURE_ARCHITECTURES))})")

_MAX_INT32 = 2**31 - 1
# ggml's CPU backend runs at most GGML_MAX_N_THREADS (512) threads; beyond that OpenMP fails or the
# process crashes.
MAX_THREADS = 512


@dataclass
class SessionStats:
    """Counters and timings of a session (cumulative since it was created, across reset()),
    and memory read now from llama.cpp's allocator and the OS."""

    n_ctx: int
    n_tokens: int  # tokens of the sequence so far
    n_cached: int  # of those, the ones whose K/V are in cells now
    n_prefill_tokens: int = 0
    n_generated: int = 0
    n_decode_steps: int = 0  # single-token decodes (the last sampled token is never decoded)
    prefill_s: float = 0.0
    decode_s: float = 0.0  # sampling plus single-token decodes
    kv_bytes: int = 0
    checkpoint_bytes: int = 0  # what the policy keeps outside the cells to recompute evicted tokens
    compute_bytes: int = 0
    model_bytes: int = 0
    rss_bytes: int = 0

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.n_prefill_tokens / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.n_decode_steps / self.decode_s if self.decode_s else 0.0


@dataclass
class Generation:
    text: str
    tokens: list[int]
    finish_reason: str
    n_prompt_tokens: int
    prefill_s: float
    decode_s: float


@dataclass
class _Counters:
    n_prefill_tokens: int = 0
    n_generated: int = 0
    n_decode_steps: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0


@dataclass
class _Run:
    """Book-keeping of one generation while its tokens stream out."""

    tokens: list[int] = field(default_factory=list)
    finish_reason: str = FINISH_LENGTH
    n_prompt_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0


def _one_call(method):
    """Runs the method as the session's only call in progress (see Session._serving)."""
    @functools.wraps(method)
    def serving(self, *args, **kwargs):
        with self._serving():
            return method(self, *args, **kwargs)
    return serving


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
                self._pieces.close()
            finally:
                release()

    def __del__(self) -> None:
        self.close()


class Session:
    """A conversation state over one llama.cpp context.

    The session owns a KV cache of ``n_ctx`` tokens. ``generate`` and ``stream``
    continue the text in it; ``chat`` formats messages with the model's chat
    template and keeps the conversation across turns, processing only the
    tokens a turn adds. ``exact`` defaults to the model's profile.
    ``swa_full`` (llama.cpp's default) gives sliding-window layers a full-size
    cache; False keeps only their window plus one batch of cells.

    ``kv_budget`` (tokens, or bytes such as "64MiB") bounds the K/V kept in cells;
    ``policy`` chooses what happens to the tokens that no longer fit (see
    pykvd.policies; default "streaming" with a budget, "full" without). The
    context's KV buffer is allocated once, for the budget, and never grows.
    ``checkpoint`` ("tokens", the default, or "residuals") is what the kvdirect
    policy keeps to recompute evicted tokens exactly.

    A session serves one call at a time. A call that would change it (feed, generate,
    stream, chat, chat_stream, reset, evict, refill, forward_layers, capture) made while
    another is in progress -- in another thread, or a stream()/chat_stream() not yet
    exhausted or closed -- raises SessionBusyError and changes nothing; close() always
    works. Use one session per thread, or finish (or close()) a stream before the next call.
    """

    def __init__(self, model: LoadedModel, *, n_ctx: int | None = None, n_batch: int = 512, n_ubatch: int | None = None,
                 n_threads: int | None = None, sampling: SamplingParams | None = None, exact: bool | None = None,
                 swa_full: bool = True, kv_budget: int | str | None = None, policy: str | None = None,
                 n_sink: int = 4, checkpoint: str | None = None):
        info = model.info
        _check_sizes(n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_ubatch, n_threads=n_threads)
        self._policy, self.kv_budget = self._make_policy(model, kv_budget, policy, n_sink, checkpoint)
        if self.kv_budget is not None:
            if n_ctx is not None:
                raise ArgumentError("give either n_ctx or kv_budget: a bounded session's cells are its budget")
            n_ctx, swa_full = self.kv_budget.tokens, True
        n_ctx = min(4096, info.n_ctx_train) if n_ctx is None else n_ctx
        n_ubatch = n_batch if n_ubatch is None else n_ubatch
        n_threads = min(_usable_cpus(), MAX_THREADS) if n_threads is None else n_threads
        if n_ubatch > n_batch:
            raise ArgumentError("n_ubatch cannot exceed n_batch")
        self.profile = model.profile if exact is None else RuntimeProfile.of(exact)
        if self._policy.needs_exact_attention and self.profile.flash_attn != FLASH_ATTN_OFF:
            raise PolicyError(f"policy {self._policy.name!r} works on llama.cpp's attention with flash attention "
                              "off: use the exact profile")
        if self._policy.needs_layer_hooks and info.architecture not in CAPTURE_ARCHITECTURES:
            raise _unsupported(f"policy {self._policy.name!r} (recomputing evicted tokens)", info.architecture)
        self.model = model
        # The session's own view of the weights, usable even after model.close().
        self._model = model._share()
        self.sampling = sampling or SamplingParams()
        self.messages: list[Message] = []
        try:
            self._ctx = native.Context(self._model._handle(), n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_ubatch,
                                       n_threads=n_threads, n_threads_batch=n_threads,
                                       flash_attn=self.profile.flash_attn, swa_full=swa_full,
                                       bounded=self.kv_budget is not None,
                                       attention_window=self._policy.attention_window)
        except BaseException:
            self._model.close()
            raise
        self._tokens: list[int] = []  # every processed token, at positions 0..n-1 (evicted ones included)
        self._pending: list[int] = []  # sampled but not yet decoded
        self._counters = _Counters()
        self._busy = threading.Lock()  # held by the call in progress (a stream: until it ends)
        self._capture: ResidualCapture | None = None
        self._logits: np.ndarray | None = None  # last logits, when the policy computed them (kvdirect)

    @staticmethod
    def _make_policy(model: LoadedModel, kv_budget, policy, n_sink, checkpoint):
        from .budget import resolve_budget
        from .policies import checked_n_sink, make_policy

        n_sink = checked_n_sink(n_sink)
        name = policy if policy is not None else ("full" if kv_budget is None else "streaming")
        budget = None if kv_budget is None else resolve_budget(kv_budget, model, min_tokens=n_sink + 1)
        info = model.info
        return make_policy(name, None if budget is None else budget.tokens, n_sink=n_sink, checkpoint=checkpoint,
                           n_layer=info.n_layer, n_embd=info.n_embd), budget

    @property
    def policy(self) -> str:
        """The cache policy's name; fixed for the session's life."""
        return self._policy.name

    @property
    def checkpoint(self) -> str | None:
        """kvdirect's checkpoint kind ("tokens" or "residuals"); None for other policies."""
        return self._policy.checkpoint

    # -- lifetime ----------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._ctx.closed

    def close(self) -> None:
        self._ctx.close()
        self._model.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _acquire(self) -> None:
        if not self._busy.acquire(blocking=False):
            raise SessionBusyError("the session is busy with another call (in another thread, or a stream not "
                                   "yet finished): finish or close() that stream, or use one session per thread")

    @contextlib.contextmanager
    def _serving(self):
        self._acquire()
        try:
            yield
        finally:
            self._busy.release()

    def _context(self):
        if self._ctx.closed:
            raise SessionClosedError("session is closed")
        return self._ctx

    # -- state -------------------------------------------------------------

    @property
    def n_ctx(self) -> int:
        return self._context().n_ctx

    @property
    def tokens(self) -> list[int]:
        """Every token of the session so far, including a last sampled one not yet decoded."""
        self._context()
        return self._tokens + self._pending

    @_one_call
    def reset(self) -> None:
        """Forget all tokens and the conversation; the context stays allocated."""
        self._context().memory_clear()
        self._tokens, self._pending, self.messages = [], [], []
        self._logits = None
        self._policy.reset()

    def logits(self) -> np.ndarray:
        """Logits (float32, n_vocab) for the next token after the last processed one."""
        ctx = self._context()
        if not self._has_logits():
            raise PromptError("no logits yet: feed a prompt first")
        return self._logits.copy() if self._logits is not None else ctx.logits(-1)

    def _has_logits(self) -> bool:
        return bool(self._tokens) and (self._logits is not None or self._ctx.n_outputs > 0)

    @property
    def stats(self) -> SessionStats:
        ctx = self._context()
        mem = ctx.memory()
        c = self._counters
        return SessionStats(
            n_ctx=ctx.n_ctx, n_tokens=len(self._tokens), n_cached=len(self._policy.hot),
            n_prefill_tokens=c.n_prefill_tokens,
            n_generated=c.n_generated, n_decode_steps=c.n_decode_steps, prefill_s=c.prefill_s,
            decode_s=c.decode_s, kv_bytes=mem["kv"], checkpoint_bytes=self._policy.checkpoint_bytes(),
            compute_bytes=mem["compute"], model_bytes=mem["model"],
            rss_bytes=rss_bytes(),
        )

    # -- feeding tokens ----------------------------------------------------

    @_one_call
    def feed(self, prompt: str | Sequence[int] | np.ndarray) -> int:
        """Process text or token ids after what the session holds; returns how many tokens were added."""
        ids = self._prompt_ids(prompt)
        self._prefill(ids)
        return len(ids)

    def _prompt_ids(self, prompt: str | Sequence[int] | np.ndarray) -> np.ndarray:
        if isinstance(prompt, str):
            if not prompt:
                raise PromptError("prompt is empty")
            # BOS belongs only at the very start of the context.
            ids = self._model.tokenize(prompt, add_special=not self.tokens)
        else:
            ids = self._model.check_tokens(prompt)
        if ids.size == 0:
            raise PromptError("prompt has no tokens")
        return ids

    def _prefill(self, ids: np.ndarray) -> float:
        """Decode pending + ids in n_batch chunks, logits for the last token only; returns seconds."""
        ctx = self._context()
        ids = np.concatenate([np.asarray(self._pending, dtype=np.int32), ids.astype(np.int32, copy=False)])
        if len(self._tokens) + len(ids) > self._max_positions():
            raise ContextOverflowError(
                f"{len(ids)} tokens do not fit: the context holds {self._max_positions()} and "
                f"{len(self._tokens)} are used")
        n_batch = min(ctx.n_batch, self._policy.max_new_tokens())
        # h^(n_layer) exists only for tokens that produce outputs.
        every_output = self._capture is not None and self.model.info.n_layer in self._capture.layers
        start = time.perf_counter()
        for i in range(0, len(ids), n_batch):
            chunk = ids[i:i + n_batch]
            last = i + n_batch >= len(ids)
            self._decode(chunk, Outputs.ALL if every_output else (Outputs.LAST if last else Outputs.NONE))
        self._pending = []
        elapsed = time.perf_counter() - start
        self._counters.n_prefill_tokens += len(ids)
        self._counters.prefill_s += elapsed
        return elapsed

    def _decode(self, chunk, outputs: Outputs) -> None:
        """Decode tokens after the last position, evicting first if the policy's budget needs it."""
        ctx, pos = self._ctx, len(self._tokens)
        self._policy.make_room(ctx, len(chunk))
        logits = self._policy.decode(ctx, np.asarray(chunk, dtype=np.int32), pos, outputs)
        self._logits = None if logits is None else logits[-1]
        self._policy.admitted(range(pos, pos + len(chunk)))
        self._policy.observe(ctx, pos, len(chunk))
        if self._capture is not None:
            self._capture._add(ctx, pos, chunk)
        self._tokens.extend(int(t) for t in chunk)

    def _max_positions(self) -> int:
        """How long the sequence may grow: the cells, or for a bounded session the trained context."""
        return self.model.info.n_ctx_train if self._policy.bounded else self._ctx.n_ctx

    # -- reading the KV cache ------------------------------------------------

    def read_kv(self, layer: int, position: int) -> tuple[np.ndarray, np.ndarray]:
        """The K and V rows (float32, n_embd_k_gqa / n_embd_v_gqa) cached for a position at a layer.

        Raises IndexError for a layer out of range and KeyError when no cell holds the
        position (never processed, removed, or outside a sliding window).
        """
        ctx = self._context()
        layer = _checked_index(layer, "layer", self.model.info.n_layer - 1)
        return ctx.read_kv(layer, _checked_index(position, "position"))

    # -- residual capture (P1) ---------------------------------------------

    @contextlib.contextmanager
    def capture(self, layers: Sequence[int]) -> Iterator[ResidualCapture]:
        """Capture h^(l) for these layers (0..n_layer) of every token decoded inside the block.

        Capturing layer n_layer makes every prefilled token an output (logits included),
        since llama.cpp computes the last layer's output only for output rows.
        """
        ctx = self._context()
        info = self.model.info
        if info.architecture not in CAPTURE_ARCHITECTURES:
            raise _unsupported("residual capture", info.architecture)
        wanted = sorted({_checked_index(layer, "layer", info.n_layer) for layer in layers})
        if not wanted:
            raise ArgumentError("no layers to capture")
        if not self._policy.allows_capture:
            raise PolicyError(f"policy {self._policy.name!r} decodes outside llama.cpp's capture; "
                              "it keeps its own checkpoint")
        with self._serving():
            if self._capture is not None:
                raise SessionBusyError("a capture is already active on this session")
            ctx.set_capture(wanted)
            self._capture = ResidualCapture(wanted, self.model)
        try:
            yield self._capture
        finally:
            self._capture = None
            if not ctx.closed:
                ctx.set_capture([])

    # -- re-injection (P2, P3) ---------------------------------------------

    @_one_call
    def evict(self, positions: Sequence[int] | np.ndarray) -> None:
        """Free the KV cells of these positions at every layer. The tokens stay part of the
        session's history; until refilled, attention no longer sees them."""
        ctx = self._context()
        positions = checked_positions(positions, len(self._tokens))
        for first, last in runs(positions):
            ctx.seq_rm(0, first, last + 1)
        self._policy.forget(positions.tolist())

    @_one_call
    def refill(self, residuals: ResidualCapture | np.ndarray, positions: Sequence[int] | np.ndarray | None = None,
               layers: range | None = None) -> None:
        """P2: recompute the K/V of ``layers`` for ``positions`` from their residuals and write them
        into KV cells, running only each layer's K/V projection path.

        ``residuals`` is a ResidualCapture of this model (``positions`` default to all it holds,
        ``layers`` to every captured layer below n_layer, which must form one range) or a float32
        array [len(layers), len(positions), n_embd] holding h^(l) for each layer of ``layers``.
        A position whose cell the session still holds is overwritten in that cell; an evicted one
        takes the lowest free cell. Raises ResidualError, IndexError or ContextOverflowError (no free
        cells) before anything is changed.
        """
        ctx = self._context()
        info = self.model.info
        extension: list[int] = []
        if isinstance(residuals, ResidualCapture):
            residuals, positions, layers, extension = self._from_capture(residuals, positions, layers)
        elif positions is None or layers is None:
            raise ResidualError("refill from an array needs positions and layers")
        if not isinstance(layers, range) or layers.step != 1:
            raise IndexOutOfRangeError(f"layers must be a range of consecutive layers, not {layers!r}")
        layers = checked_layer_range(layers.start, layers.stop, info.n_layer)
        positions = checked_positions(positions, len(self._tokens) + len(extension))
        rows = checked_rows(residuals, (len(layers), len(positions), info.n_embd), "residuals")
        self._check_reinjection()
        self._check_room(positions)
        ctx.refill(rows, positions, layers.start, layers.stop)
        self._tokens.extend(extension)
        self._policy.admitted(positions.tolist())

    @_one_call
    def forward_layers(self, h: np.ndarray, positions: Sequence[int] | np.ndarray, start: int, end: int, *,
                       logits: bool = False):
        """P3: run layers [start, end) from h^(start) (float32 [len(positions), n_embd]) with
        attention over the session's cells, write those layers' K/V and return h^(end).

        With ``logits=True`` (``end`` must be n_layer) returns (h^(end), logits [n, n_vocab]).
        The session's own next-token logits are not changed.
        """
        ctx = self._context()
        info = self.model.info
        layers = checked_layer_range(start, end, info.n_layer)
        if logits and layers.stop != info.n_layer:
            raise IndexOutOfRangeError("logits need the forward to run to the last layer (end == n_layer)")
        positions = checked_positions(positions, len(self._tokens))
        rows = checked_rows(h, (len(positions), info.n_embd), "h")
        self._check_reinjection()
        self._check_room(positions)
        h_end, out = ctx.forward(rows, positions, layers.start, layers.stop, logits=logits)
        self._policy.admitted(positions.tolist())
        return (h_end, out) if logits else h_end

    def _from_capture(self, capture: ResidualCapture, positions, layers):
        if capture.model_key != self.model.key:
            raise ResidualError("these residuals were captured from a different model")
        if layers is None:
            inner = [layer for layer in capture.layers if layer < self.model.info.n_layer]
            if not inner or inner != list(range(inner[0], inner[-1] + 1)):
                raise ResidualError(f"captured layers {list(capture.layers)} do not form one range: pass layers=")
            layers = range(inner[0], inner[-1] + 1)
        if positions is None:
            positions = capture.positions
        extension = self._tokens_to_adopt(capture, positions)
        return capture.stack(layers, positions), positions, layers, extension

    def _tokens_to_adopt(self, capture: ResidualCapture, positions) -> list[int]:
        """Checks the capture's tokens against the session's history; returns the captured tokens
        that extend the history up to the last position, so a fresh session can be rebuilt."""
        positions = checked_positions(positions, _MAX_INT32).tolist()
        by_position = dict(zip(capture.positions.tolist(), capture.tokens.tolist()))
        known = len(self._tokens)
        for p in positions:
            if p < known and by_position.get(p, self._tokens[p]) != self._tokens[p]:
                raise ResidualError(f"position {p} holds another token in this session than in the capture")
        top = positions[-1]
        if top < known:
            return []
        if self._pending:
            raise ResidualError("cannot extend a session that has a sampled token not yet decoded")
        missing = [p for p in range(known, top + 1) if p not in by_position]
        if missing:
            raise ResidualError(f"the capture lacks positions {missing[:8]} between the session's end and {top}")
        return [by_position[p] for p in range(known, top + 1)]

    def _check_room(self, positions: np.ndarray) -> None:
        """A bounded session re-admits tokens only within its budget."""
        budget = self._policy.budget
        if budget is not None and len(set(self._policy.hot) | set(positions.tolist())) > budget:
            raise ContextOverflowError(f"re-admitting these positions would exceed the KV budget of {budget} tokens")

    def _check_reinjection(self) -> None:
        if self.model.info.architecture not in CAPTURE_ARCHITECTURES:
            raise _unsupported("K/V re-injection", self.model.info.architecture)

    # -- generation --------------------------------------------------------

    @_one_call
    def generate(self, prompt: str | Sequence[int] | np.ndarray | None = None, *, max_tokens: int = 128,
                 sampling: SamplingParams | None = None, stop_at_eog: bool = True) -> Generation:
        """Process ``prompt`` (if any) and generate up to max_tokens tokens."""
        run = _Run()
        pieces = list(self._run(prompt, max_tokens, sampling, stop_at_eog, run))
        return Generation("".join(pieces), run.tokens, run.finish_reason, run.n_prompt_tokens, run.prefill_s,
                          run.decode_s)

    def stream(self, prompt: str | Sequence[int] | np.ndarray | None = None, *, max_tokens: int = 128,
               sampling: SamplingParams | None = None, stop_at_eog: bool = True) -> Iterator[str]:
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

    def _run(self, prompt, max_tokens: int, sampling: SamplingParams | None, stop_at_eog: bool,
             run: _Run) -> Iterator[str]:
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

    def _decode_loop(self, max_tokens: int, params: SamplingParams, stop_at_eog: bool,
                     run: _Run) -> Iterator[str]:
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
                self._decode([token], Outputs.LAST)
                self._pending = []
                self._counters.n_decode_steps += 1
            tail = utf8.decode(b"", final=True)
            if tail:
                yield tail
        finally:
            run.decode_s = time.perf_counter() - start
            self._counters.decode_s += run.decode_s

    def _sampler(self, params: SamplingParams):
        # llama.cpp allocates the penalty window up front; no sequence outgrows the context.
        repeat_last_n = min(int(params.repeat_last_n), self._max_positions())
        temperature = 0.0 if params.greedy else float(params.temperature)
        sampler = native.Sampler(self._model._handle(), temperature=temperature,
                                 top_k=int(params.top_k), top_p=float(params.top_p), min_p=float(params.min_p),
                                 repeat_penalty=float(params.repeat_penalty),
                                 repeat_last_n=repeat_last_n, seed=int(params.resolved_seed()))
        if params.repeat_penalty != 1.0 and repeat_last_n:
            for token in self.tokens[-repeat_last_n:]:
                sampler.accept(token)
        return sampler

    # -- chat --------------------------------------------------------------

    def chat(self, message: str | Message | Sequence[Message], *, max_tokens: int = 256,
             sampling: SamplingParams | None = None) -> str:
        """Add message(s) (a str is a user message), generate the assistant's reply and return it."""
        return "".join(self.chat_stream(message, max_tokens=max_tokens, sampling=sampling))

    def chat_stream(self, message: str | Message | Sequence[Message], *, max_tokens: int = 256,
                    sampling: SamplingParams | None = None) -> Iterator[str]:
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
                f"the conversation has {len(ids)} tokens, the context holds {self._max_positions()}")
        held = self._tokens
        n = 0
        limit = min(len(held), len(ids))
        while n < limit and held[n] == ids[n]:
            n += 1
        if n == len(ids):
            n -= 1  # re-process the last token so its logits exist
        if n < len(held):
            ctx.seq_rm(0, n, -1)
            del self._tokens[n:]
            self._logits = None
            self._policy.truncate(n)
        self._pending = []
        return ids[n:]


def _check_sizes(**sizes) -> None:
    """Each given size (None: derived later) as a positive int32; threads at most MAX_THREADS."""
    for name, value in sizes.items():
        if value is None:
            continue
        top = MAX_THREADS if name == "n_threads" else _MAX_INT32
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
            raise ArgumentError(f"{name} must be an integer in [1, {top}], not {value!r}")


def _checked_index(value, name: str, last: int = _MAX_INT32) -> int:
    """value as an int in [0, last] (llama.cpp's positions and layers are int32), else IndexError."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0
    if not ok or value > last:
        raise IndexOutOfRangeError(f"{name} must be an integer in [0, {last}], not {value!r}")
    return int(value)


def _usable_cpus() -> int:
    """CPUs this process may run on (respects affinity and container CPU sets, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 4


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
