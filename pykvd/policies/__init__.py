"""Cache policies, one module each over policies/base.py: what stays in llama.cpp's cells
when a session's KV budget is reached."""

from __future__ import annotations

from ..errors import PolicyError
from .base import CachePolicy
from .full import FullCache
from .h2o import HeavyHitters
from .snapkv import SnapKV
from .streaming import StreamingSinks
from .tova import TokenOmission
from .window import RecentWindow

POLICIES: dict[str, type[CachePolicy]] = {
    cls.name: cls for cls in (FullCache, RecentWindow, StreamingSinks, HeavyHitters, TokenOmission, SnapKV)
}


def make_policy(name: str, budget: int | None, *, n_sink: int = 4) -> CachePolicy:
    if not isinstance(name, str) or name not in POLICIES:
        raise PolicyError(f"unknown policy {name!r} (choose from {', '.join(POLICIES)})")
    if name == "full" and budget is not None:
        raise PolicyError("the full cache keeps every token: it takes no kv_budget")
    if name != "full" and budget is None:
        raise PolicyError(f"policy {name!r} needs a kv_budget")
    return POLICIES[name](budget, n_sink=n_sink)


__all__ = ["CachePolicy", "POLICIES", "PolicyError", "make_policy"]
