"""Cache policies, one module each over policies/base.py: what stays in llama.cpp's cells
when a session's KV budget is reached."""

from __future__ import annotations

from ..errors import BudgetError, PolicyError
from ..integers import is_integer
from .base import CachePolicy
from .full import FullCache
from .h2o import HeavyHitters
from .kvdirect import CHECKPOINTS, KVDirect
from .snapkv import SnapKV
from .streaming import StreamingSinks
from .tova import TokenOmission
from .window import RecentWindow

POLICIES: dict[str, type[CachePolicy]] = {
    cls.name: cls for cls in (FullCache, RecentWindow, StreamingSinks, HeavyHitters, TokenOmission, SnapKV, KVDirect)
}


def checked_n_sink(n_sink) -> int:
    if not is_integer(n_sink) or n_sink < 0:
        raise PolicyError(f"n_sink must be an integer >= 0, not {n_sink!r}")
    return int(n_sink)


def make_policy(
    name: str,
    budget: int | None,
    *,
    n_sink: int = 4,
    checkpoint: str | None = None,
    n_layer: int = 0,
    n_embd: int = 0,
    n_positions: int = 0,
) -> CachePolicy:
    """The policy called name. checkpoint ("tokens" or "residuals") applies to kvdirect only;
    n_layer, n_embd and n_positions (the most positions a session reaches) size its residual checkpoint."""
    n_sink = checked_n_sink(n_sink)
    if budget is not None and (not is_integer(budget) or budget < 1):
        raise BudgetError(f"a policy's budget must be a positive number of tokens, not {budget!r}")
    if not isinstance(name, str) or name not in POLICIES:
        raise PolicyError(f"unknown policy {name!r} (choose from {', '.join(POLICIES)})")
    cls = POLICIES[name]
    if not cls.takes_budget and budget is not None:
        raise PolicyError(f"policy {name!r} keeps every token: it takes no kv_budget")
    if cls.takes_budget and budget is None:
        raise PolicyError(f"policy {name!r} needs a kv_budget")
    if cls.checkpoints:
        # A policy that declares checkpoint kinds takes one, with the model's geometry to size it.
        policy = cls(  # type: ignore[call-arg]
            budget,
            n_sink=n_sink,
            checkpoint=cls.checkpoints[0] if checkpoint is None else checkpoint,
            n_layer=n_layer,
            n_embd=n_embd,
            n_positions=n_positions,
        )
    elif checkpoint is not None:
        keepers = [n for n, c in POLICIES.items() if c.checkpoints]
        raise PolicyError(f"policy {name!r} keeps no checkpoint (checkpoint kinds apply to {', '.join(keepers)})")
    else:
        policy = cls(budget, n_sink=n_sink)
    policy.check_budget()
    return policy


__all__ = ["CHECKPOINTS", "CachePolicy", "POLICIES", "PolicyError", "checked_n_sink", "make_policy"]
