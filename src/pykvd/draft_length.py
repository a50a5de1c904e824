"""How many tokens to draft before each exact verification (self-speculative decoding).

With acceptance rate a (the chance that a drafted token is what the exact logits give, once the ones
before it were accepted) and k drafts, one verification yields (1 - a^(k+1)) / (1 - a) tokens on
average. It costs the verification itself plus k draft steps and k more verified rows. DraftLength
keeps running estimates of a and of those costs and picks the k that gives the most tokens per
second. k = 0 (a plain step) wins when little is evicted, since a verification then costs about as
much as a step.
"""

from __future__ import annotations

from .errors import ArgumentError, ArgumentTypeError
from .integers import is_integer

MAX_DRAFT = 64  # the most drafted tokens a setting may ask for per verification
ADAPTIVE_MAX = 16  # the most the adaptive setting drafts
FIRST_GUESS = 4  # drafted before anything is measured
PRIOR_ACCEPTANCE = 0.75  # assumed until drafts are judged (the eviction table's streaming agreement)
PRIOR_WEIGHT = 4.0  # in judged drafts
DECAY = 0.97  # weight kept by older observations at each new one, so the estimates follow the text
RETRY_AFTER = 16  # plain steps after which drafting is tried again, since costs change as tokens are evicted


def checked_draft(draft) -> int | None:
    """None (adaptive) or a draft length in [0, MAX_DRAFT]; 0 turns drafting off."""
    if draft is None:
        return None
    if not is_integer(draft):
        raise ArgumentTypeError(f"draft must be None (adaptive) or an integer, not {draft!r}")
    if not 0 <= draft <= MAX_DRAFT:
        raise ArgumentError(f"draft must be in [0, {MAX_DRAFT}] tokens per verification (0: off), not {draft}")
    return int(draft)


def expected_tokens(acceptance: float, k: int) -> float:
    """Tokens one verification of k drafts yields on average: the verified token plus accepted drafts."""
    if acceptance >= 1.0:
        return k + 1.0
    return (1.0 - acceptance ** (k + 1)) / (1.0 - acceptance)


def _mean(old: float | None, new: float) -> float:
    return new if old is None else DECAY * old + (1.0 - DECAY) * new


class DraftLength:
    """Chooses k for each verification: ``fixed`` tokens, or adaptively up to ``limit``."""

    def __init__(self, limit: int, fixed: int | None = None):
        self.limit = limit
        self.fixed = fixed
        self._accepted = PRIOR_ACCEPTANCE * PRIOR_WEIGHT
        self._judged = PRIOR_WEIGHT
        self._verify_s: float | None = None  # a verification, less its extra rows
        self._draft_step_s: float | None = None
        self._plain_steps = 0

    @property
    def acceptance(self) -> float:
        return self._accepted / self._judged

    def next(self) -> int:
        if self.fixed is not None:
            return min(self.fixed, self.limit)
        if self._verify_s is None or self._draft_step_s is None:
            return min(FIRST_GUESS, self.limit)
        best = max(range(self.limit + 1), key=self.tokens_per_second)
        if best == 0 and self._plain_steps >= RETRY_AFTER:
            best = min(2, self.limit)
        return best

    def tokens_per_second(self, k: int) -> float:
        """The estimated rate with k drafts per verification (k = 0: plain steps)."""
        assert self._verify_s is not None and self._draft_step_s is not None
        seconds = self._verify_s + k * 2.0 * self._draft_step_s  # a draft step, and its row in the verification
        return expected_tokens(self.acceptance, k) / max(seconds, 1e-9)

    def judged(self, accepted: bool) -> None:
        self._accepted = DECAY * self._accepted + (1.0 if accepted else 0.0)
        self._judged = DECAY * self._judged + 1.0

    def verified(self, k: int, draft_s: float, verify_s: float) -> None:
        self._plain_steps = 0
        self._draft_step_s = _mean(self._draft_step_s, draft_s / k)
        self._verify_s = _mean(self._verify_s, max(verify_s - k * self._draft_step_s, 0.0))

    def stepped(self, seconds: float) -> None:
        """A plain step: what a verification costs without drafts."""
        self._plain_steps += 1
        self._verify_s = _mean(self._verify_s, seconds)
