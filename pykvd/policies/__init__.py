"""Cache policies, one module each over policies/base.py: what stays in llama.cpp's cells
when a session's KV budget is reached."""

from __future__ import annotations

from ..errors import PolicyError
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


def make_policy(name: str, budget: int | None, *, n_sink: int = 4, checkpoint: str | None = None,
                n_layer: int = 0, n_embd: int = 0) -> CachePolicy:
    """The policy called name. checkpoint ("tokens" or "residuals") applies to kvdirect only;
    n_layer and n_embd size its residual checkpoint."""
    if not isinstance(name, str) or name not in POLICIES:
        raise PolicyError(f"unknown policy {name!r} (choose from {', '.join(POLICIES)})")
    if name == "full" and budget is not None:
        raise PolicyError("the full cache keeps every token: it takes no kv_budget")
    if name != "full" and budget is None:
        raise PolicyError(f"policy {name!r} needs a kv_budget")
    if name == "kvdirect":
        return KVDirect(budget, n_sink=n_sink, checkpoint="tokens" if checkpoint is None else checkpoint,
                        n_layer=n_layer, n_embd=n_embd)
    if checkpoint is not None:
        raise PolicyError(f"a checkpoint kind applies to the kvdirect policy only, not {name!r}")
    return POLICIES[name](budget, n_sink=n_sink)


__all__ = ["CHECKPOINTS", "CachePolicy", "POLICIES", "PolicyError", "make_policy"]
