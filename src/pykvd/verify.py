"""The exactness experiments behind `pykvd verify`: K/V recomputed from the residual
stream against the cache, decoding without a cache, restoring an evicted sequence, and
kvdirect under a budget smaller than the prompt (one-pass prompt, drafted decoding).

Every comparison is bitwise: a check passes only when the largest absolute
difference is exactly 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import ArgumentError
from .model import LoadedModel
from .policies import CHECKPOINTS
from .sampling import SamplingParams
from .session import Session

PROMPT = (
    "The residual stream carries everything a transformer knows about a token: "
    "keys and values are only projections of it, so a cache can be rebuilt exactly."
)


@dataclass
class LayerCheck:
    layer: int
    kind: str  # "global" or "sliding"
    max_dk: float
    max_dv: float


@dataclass
class StepsCheck:
    name: str
    n_steps: int
    tokens_identical: bool
    max_dlogit: float

    @property
    def ok(self) -> bool:
        return self.tokens_identical and self.max_dlogit == 0.0


@dataclass
class VerifyReport:
    model: str
    architecture: str
    n_tokens: int
    recoverability: list[LayerCheck] = field(default_factory=list)
    cacheless: StepsCheck | None = None
    restore: list[StepsCheck] = field(default_factory=list)
    bounded: list[StepsCheck] = field(default_factory=list)

    @property
    def steps(self) -> list[StepsCheck]:
        return ([self.cacheless] if self.cacheless else []) + self.restore + self.bounded

    @property
    def ok(self) -> bool:
        kv_ok = all(c.max_dk == 0.0 and c.max_dv == 0.0 for c in self.recoverability)
        return kv_ok and all(s.ok for s in self.steps)

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def _session(model: LoadedModel, n_tokens: int) -> Session:
    return Session(model, n_ctx=max(256, n_tokens + 8))


def greedy_steps(session: Session, n_steps: int) -> tuple[list[int], list[np.ndarray]]:
    """n_steps greedy steps from the session's current logits, each decoding one token; returns the
    tokens and the logits each was chosen from."""
    tokens, logits = [], []
    for _ in range(n_steps):
        row = session.logits().copy()
        token = int(np.argmax(row))
        tokens.append(token)
        logits.append(row)
        session.feed([token])
    return tokens, logits


def _compare(name: str, ref: tuple[list[int], list[np.ndarray]], got: tuple[list[int], list[np.ndarray]]):
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(ref[1], got[1]))
    return StepsCheck(name, len(ref[0]), ref[0] == got[0], diff)


def recoverability(model: LoadedModel, prompt: str = PROMPT, n_decode: int = 16) -> list[LayerCheck]:
    """Capture h^(l) at every layer during a prefill and n_decode single-token steps, rebuild all
    K/V with P2 in a fresh session, and compare every stored row with the original cache."""
    n_layer = model.info.n_layer
    n_tokens = len(model.tokenize(prompt)) + n_decode
    with _session(model, n_tokens) as original, _session(model, n_tokens) as rebuilt:
        with original.capture(range(n_layer)) as capture:
            original.feed(prompt)
            greedy_steps(original, n_decode)
        rebuilt.refill(capture)
        swa = set(model.info.swa_layers)
        checks = []
        for layer in range(n_layer):
            dk = dv = 0.0
            for pos in capture.positions.tolist():
                k0, v0 = original.read_kv(layer, pos)
                k1, v1 = rebuilt.read_kv(layer, pos)
                dk = max(dk, float(np.max(np.abs(k0 - k1))))
                dv = max(dv, float(np.max(np.abs(v0 - v1))))
            checks.append(LayerCheck(layer, "sliding" if layer in swa else "global", dk, dv))
        return checks


def cacheless(model: LoadedModel, prompt: str = PROMPT, n_steps: int = 64) -> StepsCheck:
    """Greedy decoding with the cache against recomputing every step from the token ids alone
    (a fresh forward over the whole sequence each step)."""
    n_tokens = len(model.tokenize(prompt)) + n_steps
    with _session(model, n_tokens) as cached, _session(model, n_tokens) as fresh:
        cached.feed(prompt)
        ref = greedy_steps(cached, n_steps)
        ids = list(model.tokenize(prompt))
        tokens, logits = [], []
        for _ in range(n_steps):
            fresh.reset()
            fresh.feed(ids)
            row = fresh.logits().copy()
            tokens.append(int(np.argmax(row)))
            logits.append(row)
            ids.append(tokens[-1])
        return _compare("cacheless", ref, (tokens, logits))


def restore(model: LoadedModel, prompt: str = PROMPT, n_steps: int = 32) -> list[StepsCheck]:
    """Evict the prompt's KV cells and restore them by P2 from every layer's residuals, by P2
    below layer c plus P3 from h^(c) above it, and by re-prefill; the next n_steps greedy steps
    must give the never-evicted run's logits."""
    n_layer = model.info.n_layer
    n_tokens = len(model.tokenize(prompt)) + n_steps
    with _session(model, n_tokens) as never_evicted:
        never_evicted.feed(prompt)
        ref = greedy_steps(never_evicted, n_steps)

    def p3_from(c):
        def method(session, capture):
            session.refill(capture, layers=range(0, c))
            session.forward_layers(capture.stack(range(c, c + 1))[0], capture.positions, c, n_layer)

        return method

    def re_prefill(session, capture):
        session.reset()
        session.feed(capture.tokens)

    methods = {"P2 from h^(l), every layer": lambda session, capture: session.refill(capture)}
    for c in sorted({1, n_layer // 2, n_layer - 1}):
        methods[f"P3 from h^({c})"] = p3_from(c)
    methods["re-prefill from token ids"] = re_prefill

    checks = []
    for name, method in methods.items():
        with _session(model, n_tokens) as session:
            with session.capture(range(n_layer)) as capture:
                session.feed(prompt)
            session.evict(capture.positions)
            method(session, capture)
            checks.append(_compare(name, ref, greedy_steps(session, n_steps)))
    return checks


def bounded(model: LoadedModel, prompt: str = PROMPT, n_steps: int = 32) -> list[StepsCheck]:
    """kvdirect with a budget of half the prompt (so the prompt takes its one-pass path) and adaptive
    drafting, for each checkpoint kind: n_steps greedy tokens and the last logits against the full cache."""
    n_prompt = len(model.tokenize(prompt))
    greedy = SamplingParams(temperature=0.0)
    budget = max(8, n_prompt // 2)
    with _session(model, n_prompt + n_steps) as full:
        full.feed(prompt)
        want = full.generate(max_tokens=n_steps, sampling=greedy, stop_at_eog=False).tokens
        want_logits = full.logits()
    checks = []
    for kind in CHECKPOINTS:
        with Session(model, kv_budget=budget, policy="kvdirect", checkpoint=kind, sampling=greedy) as session:
            session.feed(prompt)
            got = session.generate(max_tokens=n_steps, stop_at_eog=False).tokens
            dlogit = float(np.max(np.abs(session.logits() - want_logits)))
            checks.append(StepsCheck(f"kvdirect ({kind}) at budget {budget}, drafted", n_steps, got == want, dlogit))
    return checks


def verify(
    model: LoadedModel, *, cacheless_steps: int = 64, restore_steps: int = 32, prompt: str = PROMPT
) -> VerifyReport:
    n_tokens = len(model.tokenize(prompt))
    _check_steps(model, n_tokens, cacheless_steps=cacheless_steps, restore_steps=restore_steps)
    report = VerifyReport(model=model.path.name, architecture=model.info.architecture, n_tokens=n_tokens)
    report.recoverability = recoverability(model, prompt)
    report.cacheless = cacheless(model, prompt, cacheless_steps)
    report.restore = restore(model, prompt, restore_steps)
    report.bounded = bounded(model, prompt, restore_steps)
    return report


def _check_steps(model: LoadedModel, n_tokens: int, **steps: int) -> None:
    """Each step count positive and, after the prompt, within the trained context (checked before any run)."""
    room = model.info.n_ctx_train - n_tokens
    for name, value in steps.items():
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= room:
            raise ArgumentError(
                f"{name} must be an integer in [1, {room}] (the trained context after the "
                f"{n_tokens}-token prompt), not {value!r}"
            )


def format_report(report: VerifyReport) -> str:
    """The per-layer table and a summary, as `pykvd verify` prints them."""
    lines = [
        f"{report.model} ({report.architecture}), prompt of {report.n_tokens} tokens",
        f"{'layer':>5}  {'kind':<7}  {'max|dK|':>10}  {'max|dV|':>10}",
    ]
    for c in report.recoverability:
        lines.append(f"{c.layer:>5}  {c.kind:<7}  {c.max_dk:>10.3g}  {c.max_dv:>10.3g}")
    for kind in sorted({c.kind for c in report.recoverability}):
        rows = [c for c in report.recoverability if c.kind == kind]
        worst = max(max(c.max_dk, c.max_dv) for c in rows)
        lines.append(
            f"recoverability, {len(rows)} {kind} layers: max |dK|,|dV| = {worst:.3g}"
            f"  {'OK' if worst == 0 else 'MISMATCH'}"
        )
    for check in report.steps:
        lines.append(
            f"{check.name}: {check.n_steps} steps, tokens "
            f"{'identical' if check.tokens_identical else 'DIFFER'}, max |dlogit| = "
            f"{check.max_dlogit:.3g}  {'OK' if check.ok else 'MISMATCH'}"
        )
    lines.append(f"{report.model}: {'all checks exact' if report.ok else 'MISMATCH'}")
    return "\n".join(lines)
