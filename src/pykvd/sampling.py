"""Sampler settings, validated before they reach llama.cpp's sampler chain."""

from __future__ import annotations

import math
import numbers
import secrets
from dataclasses import dataclass

from .errors import SamplingError
from .integers import INT32_MAX, is_integer

_MAX_SEED = 2**32 - 2  # 0xFFFFFFFF means "random" to llama.cpp, so it is not a valid fixed seed
# llama.cpp divides the float32 logits by the temperature: below this, logits overflow to infinity
# (or the temperature itself rounds to a float32 denormal or zero) and the draw stops being a
# sample. Such temperatures sample the argmax anyway, so they are greedy.
GREEDY_BELOW = 1e-30
# The largest temperature or repeat penalty (and, for the penalty, its inverse is the smallest) whose
# scaled float32 logits stay finite.
_MAX_SCALE = 1e30


@dataclass(frozen=True)
class SamplingParams:
    """llama.cpp's sampler chain: repeat penalty -> top-k -> top-p -> min-p -> temperature -> draw.

    temperature 0 means greedy decoding (the other values are then unused); so does any
    temperature below 1e-30 (GREEDY_BELOW), whose sampling would be greedy in all but name.
    seed None draws a fresh random seed for each generation; a fixed seed makes
    seeded sampling reproducible.
    """

    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None

    def __post_init__(self) -> None:
        _check(
            _finite(self.temperature) and 0 <= self.temperature <= _MAX_SCALE,
            f"temperature must be a number in [0, {_MAX_SCALE:g}]",
        )
        _check(
            is_integer(self.top_k) and 0 <= self.top_k <= INT32_MAX,
            "top_k must be an integer >= 0 (0 disables it) below 2**31",
        )
        _check(_finite(self.top_p) and 0 < self.top_p <= 1, "top_p must be in (0, 1]")
        _check(_finite(self.min_p) and 0 <= self.min_p <= 1, "min_p must be in [0, 1]")
        _check(
            _finite(self.repeat_penalty) and 1 / _MAX_SCALE <= self.repeat_penalty <= _MAX_SCALE,
            f"repeat_penalty must be a number in [{1 / _MAX_SCALE:g}, {_MAX_SCALE:g}]",
        )
        _check(
            is_integer(self.repeat_last_n) and 0 <= self.repeat_last_n <= INT32_MAX,
            "repeat_last_n must be an integer >= 0 below 2**31",
        )
        _check(
            self.seed is None or (is_integer(self.seed) and 0 <= self.seed <= _MAX_SEED),
            f"seed must be an integer in [0, {_MAX_SEED}] or None",
        )

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    def resolved_seed(self) -> int:
        return self.seed if self.seed is not None else secrets.randbelow(_MAX_SEED + 1)


def _finite(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise SamplingError(message)
