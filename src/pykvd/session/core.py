"""The core of a session: a llama.cpp context, its token history, feeding tokens through the cache
policy, statistics, and one call at a time."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import threading
import time
from dataclasses import dataclass
from typing import Sequence, TypeVar

import numpy as np

from .._llama import native
from ..budget import resolve_budget
from ..draft_head import CandidateHead
from ..draft_length import ADAPTIVE_MAX, DraftLength, checked_draft
from ..errors import (
    ArgumentError,
    BudgetError,
    ContextOverflowError,
    IndexOutOfRangeError,
    PolicyError,
    PromptError,
    SessionBusyError,
    SessionClosedError,
    UnsupportedArchitectureError,
)
from ..integers import INT32_MAX
from ..memory import rss_bytes
from ..model import LoadedModel, Message
from ..outputs import Outputs
from ..policies import checked_n_sink, make_policy
from ..residuals import ResidualCapture
from ..sampling import SamplingParams

FINISH_STOP = "stop"  # the model produced an end-of-generation token
FINISH_LENGTH = "length"  # max_tokens reached
FINISH_CONTEXT = "context"  # the context is full

# Architectures whose graphs carry llama-kvd's layer hooks (capture, re-injection, kvdirect): llama-kvd's own list.
CAPTURE_ARCHITECTURES = frozenset(native.kvd_architectures())


def _unsupported(what: str, arch: str) -> UnsupportedArchitectureError:
    return UnsupportedArchitectureError(
        f"{what} is not available for {arch!r}: {native.kvd_unsupported_reason(arch)} "
        f"(supported: {', '.join(sorted(CAPTURE_ARCHITECTURES))})"
    )


# ggml's CPU backend runs at most GGML_MAX_N_THREADS (512) threads; beyond that OpenMP fails or the
# process crashes.
MAX_THREADS = 512


_Self = TypeVar("_Self", bound="SessionCore")


@dataclass
class SessionStats:
    """Counters and timings of a session (cumulative since it was created, across reset()),
    and memory read now from llama.cpp's allocator and the OS."""

    n_ctx: int
    n_tokens: int  # tokens of the sequence so far
    n_cached: int  # of those, the ones whose K/V are in cells now
    n_prefill_tokens: int = 0
    n_generated: int = 0
    n_decode_steps: int = 0  # tokens decoded after sampling (the last sampled token is never decoded)
    n_verifies: int = 0  # exact verifications of drafted tokens (kvdirect with drafting)
    n_drafted: int = 0  # tokens drafted over the hot cells
    n_draft_accepted: int = 0  # drafted tokens the exact logits gave too
    n_draft_rejected: int = 0  # drafted tokens they did not (drafts after a rejected one are never judged)
    prefill_s: float = 0.0
    decode_s: float = 0.0  # sampling plus single-token decodes
    kv_bytes: int = 0
    checkpoint_bytes: int = 0  # what the policy keeps outside the cells to recompute evicted tokens
    draft_head_bytes: int = 0  # the draft's candidate rows of the output matrix (draft_head.py)
    compute_bytes: int = 0
    model_bytes: int = 0
    rss_bytes: int = 0

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.n_prefill_tokens / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.n_decode_steps / self.decode_s if self.decode_s else 0.0

    @property
    def acceptance(self) -> float:
        """The share of judged drafts the exact logits confirmed (0.0 before any)."""
        judged = self.n_draft_accepted + self.n_draft_rejected
        return self.n_draft_accepted / judged if judged else 0.0

    @property
    def tokens_per_verify(self) -> float:
        """Tokens each verification decoded: its first token plus the accepted drafts (0.0 before any)."""
        return (self.n_verifies + self.n_draft_accepted) / self.n_verifies if self.n_verifies else 0.0


@dataclass
class _Counters:  # the cumulative fields of SessionStats, under the same names
    n_prefill_tokens: int = 0
    n_generated: int = 0
    n_decode_steps: int = 0
    n_verifies: int = 0
    n_drafted: int = 0
    n_draft_accepted: int = 0
    n_draft_rejected: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0


def _one_call(method):
    """Runs the method as the session's only call in progress (see Session._serving)."""

    @functools.wraps(method)
    def serving(self, *args, **kwargs):
        with self._serving():
            return method(self, *args, **kwargs)

    return serving


class SessionCore:
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
    policy keeps to recompute evicted tokens exactly. ``draft`` is how many tokens
    kvdirect drafts over its hot cells before verifying them exactly in one step:
    None (the default) adapts it to the measured acceptance and costs, 0 turns
    drafting off, K drafts K. Output is the same either way.

    A session serves one call at a time. A call that would change it (feed, generate,
    stream, chat, chat_stream, reset, rewind, evict, refill, forward_layers, capture) made while
    another is in progress -- in another thread, or a stream()/chat_stream() not yet
    exhausted or closed -- raises SessionBusyError and changes nothing; close() always
    works. Use one session per thread, or finish (or close()) a stream before the next call.
    """

    def __init__(
        self,
        model: LoadedModel,
        *,
        n_ctx: int | None = None,
        n_batch: int = 512,
        n_ubatch: int | None = None,
        n_threads: int | None = None,
        sampling: SamplingParams | None = None,
        exact: bool | None = None,
        swa_full: bool = True,
        kv_budget: int | str | None = None,
        policy: str | None = None,
        n_sink: int = 4,
        checkpoint: str | None = None,
        draft: int | None = None,
    ):
        info = model.info
        _check_sizes(n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_ubatch, n_threads=n_threads)
        if kv_budget is not None and info.recurrent:
            raise _unsupported("a KV budget (evicting tokens)", info.architecture)
        self._policy, self.kv_budget = self._make_policy(model, kv_budget, policy, n_sink, checkpoint)
        head = model.head_weights
        if self._policy.verifies_drafts and head is not None and head.worthwhile:
            self._policy.draft_head = CandidateHead(head)
        self._adaptive: DraftLength | None = None
        self._draft_setting = checked_draft(draft)
        self._draft = self._draft_length(self._draft_setting)
        if self.kv_budget is not None:
            if n_ctx is not None:
                raise ArgumentError("give either n_ctx or kv_budget: a bounded session's cells are its budget")
            n_ctx, swa_full = self.kv_budget.tokens, True
        n_ctx = min(4096, info.n_ctx_train) if n_ctx is None else n_ctx
        n_ubatch = n_batch if n_ubatch is None else n_ubatch
        n_threads = min(_usable_cpus(), MAX_THREADS) if n_threads is None else n_threads
        if n_ubatch > n_batch:
            raise ArgumentError("n_ubatch cannot exceed n_batch")
        self.profile = model.profile.for_session(exact)
        if self._policy.needs_exact_attention and not self.profile.is_exact:
            raise PolicyError(f"policy {self._policy.name!r} needs batch-invariant attention: use the exact profile")
        if self._policy.needs_attention:
            # llama.cpp's attention weights exist as tensors only without flash attention
            self.profile = self.profile.without_flash_attention()
        if self._policy.needs_layer_hooks and info.architecture not in CAPTURE_ARCHITECTURES:
            raise _unsupported(f"policy {self._policy.name!r} (recomputing evicted tokens)", info.architecture)
        self.model = model
        # The session's own view of the weights, usable even after model.close().
        self._model = model._share()
        self.sampling = sampling or SamplingParams()
        self.messages: list[Message] = []
        try:
            self._ctx = native.Context(
                self._model._handle(),
                n_ctx=n_ctx,
                n_batch=n_batch,
                n_ubatch=n_ubatch,
                n_threads=n_threads,
                n_threads_batch=n_threads,
                flash_attn=self.profile.flash_attn,
                swa_full=swa_full,
                bounded=self.kv_budget is not None,
                attention_window=self._policy.attention_window,
                batch_invariant=self.profile.batch_invariant,
            )
        except BaseException:
            self._model.close()
            raise
        self._tokens: list[int] = []  # every processed token, at positions 0..n-1 (evicted ones included)
        self._pending: list[int] = []  # sampled but not yet decoded
        self._counters = _Counters()
        self._busy = threading.Lock()  # held by the call in progress (a stream: until it ends)
        self._capture: ResidualCapture | None = None
        self._logits: np.ndarray | None = None  # last logits, when the policy computed them (kvdirect)
        self._logits_dropped = False  # rewind() cut off the tokens the context's last logits are for
        # Drafted tokens a verification computed exactly past the last decoded one, with the logits
        # that follow each; they take effect only if the sampler draws the same tokens.
        self._ahead: list[tuple[int, np.ndarray]] = []

    @staticmethod
    def _make_policy(model: LoadedModel, kv_budget, policy, n_sink, checkpoint):
        n_sink = checked_n_sink(n_sink)
        name = policy if policy is not None else ("full" if kv_budget is None else "streaming")
        budget = None if kv_budget is None else resolve_budget(kv_budget, model, min_tokens=n_sink + 1)
        info = model.info
        return make_policy(
            name,
            None if budget is None else budget.tokens,
            n_sink=n_sink,
            checkpoint=checkpoint,
            n_layer=info.n_layer,
            n_embd=info.n_embd,
            n_positions=info.n_ctx_train,
        ), budget

    def _draft_length(self, setting: int | None) -> DraftLength | None:
        """The draft-length chooser, or None when this session does not draft."""
        policy = self._policy
        if setting == 0 or (setting is None and not policy.verifies_drafts):
            return None
        if not policy.verifies_drafts:
            raise PolicyError(
                f"policy {policy.name!r} has nothing to verify drafts against: drafting needs kvdirect "
                "(draft=0 or None turns it off)"
            )
        # The verification's k + 1 rows need cells while the newest hot token keeps its own.
        limit = policy.cells - policy.protected - 2
        if setting is None:
            if self._adaptive is None and limit >= 1:
                self._adaptive = DraftLength(min(ADAPTIVE_MAX, limit))
            return self._adaptive  # what it measured carries over when drafting is turned back on
        if setting > limit:
            raise BudgetError(
                f"drafting {setting} tokens needs {setting + 2} cells beyond the {policy.protected} "
                f"protected ones; the KV budget of {policy.cells} tokens allows draft={max(limit, 0)} at most"
            )
        return DraftLength(limit, fixed=setting)

    @property
    def draft(self) -> int | None:
        """Tokens drafted per verification: None adapts, 0 is off. May be changed between calls."""
        return self._draft_setting

    @draft.setter
    def draft(self, value: int | None) -> None:
        with self._serving():
            self._context()
            setting = checked_draft(value)
            self._draft = self._draft_length(setting)
            self._draft_setting = setting

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

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _acquire(self) -> None:
        if not self._busy.acquire(blocking=False):
            raise SessionBusyError(
                "the session is busy with another call (in another thread, or a stream not "
                "yet finished): finish or close() that stream, or use one session per thread"
            )

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
        self._ahead = []
        self._policy.reset()

    @_one_call
    def rewind(self, n: int) -> None:
        """Keep the first n of ``tokens`` and forget the rest (and the chat messages, which no longer
        match them): a server reusing a cached prompt rewinds to where a new prompt departs from it.

        Under full and kvdirect the session is then exactly one that processed only those n tokens; a
        lossy policy keeps what it still held of them. Nothing is decoded here: the last kept token
        waits, like a sampled token, to be processed again with the next call's tokens, in that call's
        one pass (for kvdirect, one recompute of the evicted tokens instead of two). Its logits, gone
        with the tokens after it, exist again once that call has run.
        """
        ctx = self._context()
        n = _checked_index(n, "n", len(self.tokens))
        if self._capture is not None:
            raise SessionBusyError("cannot rewind while a capture is active: its rows would outlive their tokens")
        if n == len(self.tokens):
            return
        self.messages = []
        if n == len(self._tokens) and not self._logits_dropped:
            self._pending = []  # only the sampled token goes: the logits it was drawn from stay valid
            return
        kept = self.tokens[:n]
        n_decoded = min(max(n - 1, 0), len(self._tokens))  # tokens still pending were never decoded
        if not ctx.seq_rm(0, n_decoded, -1):
            # Recurrent state cannot be cut back to a prefix: keep the tokens, process them all again.
            ctx.memory_clear()
            self._policy.reset()
            n_decoded = 0
        else:
            # forget() before truncate: policies that score tokens drop the scores of the forgotten ones.
            self._policy.forget(range(n_decoded, len(self._tokens)))
            self._policy.truncate(n_decoded)
        self._tokens, self._pending = kept[:n_decoded], kept[n_decoded:]
        self._logits = None
        self._logits_dropped = True

    def logits(self) -> np.ndarray:
        """Logits (float32, n_vocab) for the next token after the last processed one."""
        ctx = self._context()
        if not self._has_logits():
            raise PromptError("no logits yet: feed a prompt first")
        return self._logits.copy() if self._logits is not None else ctx.logits(-1)

    def _has_logits(self) -> bool:
        if self._logits_dropped:  # rewind() dropped the tokens llama.cpp's last logits belong to
            return False
        return bool(self._tokens) and (self._logits is not None or self._ctx.n_outputs > 0)

    @property
    def stats(self) -> SessionStats:
        ctx = self._context()
        mem = ctx.memory()
        return SessionStats(
            n_ctx=ctx.n_ctx,
            n_tokens=len(self._tokens),
            n_cached=len(self._policy.hot),
            **dataclasses.asdict(self._counters),  # every counter is a field of the stats
            kv_bytes=mem["kv"],
            checkpoint_bytes=self._policy.checkpoint_bytes(),
            draft_head_bytes=self._policy.draft_head.nbytes if self._policy.draft_head is not None else 0,
            compute_bytes=mem["compute"],
            model_bytes=mem["model"],
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
                f"{len(self._tokens)} are used"
            )
        # A policy that takes a prompt in one pass recomputes what it evicted once, not once per batch.
        n_batch = len(ids) if self._policy.prompt_in_one_pass else min(ctx.n_batch, self._policy.max_new_tokens())
        # h^(n_layer) exists only for tokens that produce outputs.
        every_output = self._capture is not None and self.model.info.n_layer in self._capture.layers
        start = time.perf_counter()
        for i in range(0, len(ids), n_batch):
            chunk = ids[i : i + n_batch]
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
        logits = self._policy.arrive(ctx, np.asarray(chunk, dtype=np.int32), pos, outputs)
        self._logits = None if logits is None else logits[-1]
        self._logits_dropped = False
        self._policy.observe(ctx, pos, len(chunk))
        if self._capture is not None:
            self._capture._add(ctx, pos, chunk)
        self._tokens.extend(int(t) for t in chunk)

    def _max_positions(self) -> int:
        """How long the sequence may grow: the cells, or for a bounded session the trained context."""
        return self.model.info.n_ctx_train if self._policy.bounded else self._ctx.n_ctx


def _check_sizes(**sizes) -> None:
    """Each given size (None: derived later) as a positive int32; threads at most MAX_THREADS."""
    for name, value in sizes.items():
        if value is None:
            continue
        top = MAX_THREADS if name == "n_threads" else INT32_MAX
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
            raise ArgumentError(f"{name} must be an integer in [1, {top}], not {value!r}")


def common_prefix(held: Sequence[int] | np.ndarray, prompt: Sequence[int] | np.ndarray) -> int:
    """How many leading tokens the two sequences share."""
    n = min(len(held), len(prompt))
    if n == 0:
        return 0
    differ = np.flatnonzero(np.asarray(held[:n], dtype=np.int64) != np.asarray(prompt[:n], dtype=np.int64))
    return int(differ[0]) if len(differ) else n


def _checked_index(value, name: str, last: int = INT32_MAX) -> int:
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
