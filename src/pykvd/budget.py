"""KV budgets: how many tokens' K/V a bounded session may keep in llama.cpp's cells.

A budget is a plain integer (tokens) or a byte size ("64MiB", "1.5GiB"). Bytes
become tokens through the bytes one cell costs, read from the allocator of a
probe context of this model (not computed from the model's dimensions).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from fractions import Fraction

from .errors import BudgetError
from .memory import parse_bytes


@dataclass(frozen=True)
class KVBudget:
    tokens: int  # cells the hot set may occupy
    bytes_per_cell: float  # measured
    spec: str  # as the user gave it

    @property
    def bytes(self) -> int:
        return int(self.tokens * self.bytes_per_cell)


def measured_bytes_per_cell(model) -> float:
    """KV buffer bytes per cell of this model, from llama.cpp's allocator (measured once per model)."""
    return model.kv_bytes_per_cell


def resolve_budget(spec, model, *, min_tokens: int) -> KVBudget:
    """spec (int tokens, or a byte-size string; a string of ASCII digits counts tokens, as on the CLI)
    as a KVBudget of min_tokens to n_ctx_train tokens, else BudgetError.

    The spec is checked before the probe context that measures a cell is built."""
    if isinstance(spec, bool) or not isinstance(spec, (numbers.Integral, str)):
        raise BudgetError(f"kv_budget must be a token count or a byte size like '64MiB', not {spec!r}")
    if isinstance(spec, str) and spec.strip().isascii() and spec.strip().isdigit():
        spec = int(spec.strip())
    if isinstance(spec, numbers.Integral):
        tokens = int(spec)
        _check_range(tokens, f"{tokens} tokens", model, min_tokens)
        return KVBudget(tokens=tokens, bytes_per_cell=measured_bytes_per_cell(model), spec=str(spec))
    try:
        n_bytes = parse_bytes(spec)
    except ValueError as exc:
        raise BudgetError(str(exc)) from None
    per_cell = measured_bytes_per_cell(model)
    tokens = int(Fraction(n_bytes) / Fraction(per_cell))  # exact: a float overflows on huge sizes
    _check_range(tokens, f"{spec!r} ({tokens} tokens of {per_cell:.0f} bytes)", model, min_tokens)
    return KVBudget(tokens=tokens, bytes_per_cell=per_cell, spec=spec)


def _check_range(tokens: int, what: str, model, min_tokens: int) -> None:
    if tokens < min_tokens:
        raise BudgetError(f"a KV budget of {what} cannot hold the {min_tokens - 1} sink tokens plus one token")
    # A bounded session's sequence ends at the trained context, so larger budgets could never fill.
    n_ctx_train = model.info.n_ctx_train
    if tokens > n_ctx_train:
        raise BudgetError(
            f"a KV budget of {what} is more than the model's trained context of {n_ctx_train} "
            "tokens, the most a bounded session ever holds"
        )
