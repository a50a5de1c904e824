"""What each policy implies for a model, a context length and a KV budget: the bytes it holds
and the recomputation each decode step costs. This is arithmetic over the model's real
dimensions (tensor shapes from the GGUF, the KV bytes per cell measured from llama.cpp's
allocator); the benchmarks measure what actually happens.

Per decode step, with E = context - budget evicted tokens:
- lossy policies (window, streaming, h2o, tova, snapkv) forget E tokens: nothing to recompute;
- kvdirect with ``tokens`` checkpoints (4-byte ids, for every token) re-runs the E tokens through every layer:
  2 FLOPs per weight element of each layer per token, plus their attention over the sinks and
  the evicted tokens before them (4 * n_head * head_dim * (n_sink + E/2) per token per layer);
- kvdirect with ``residuals`` checkpoints keeps h^(l) of every layer for every token (float32, as
  pykvd stores them; the hot tokens' too, since they are evicted later) and re-runs only the
  projections of each layer: 2 * n_embd * (Q width + K width + V width) per token per layer
  (llama.cpp's layer code computes Q along with K and V).

With drafting (kvdirect's default), one verification pays that recompute once for k + 1 rows, plus k
draft steps over the hot cells and k more verified rows (2 FLOPs per layer weight element each). With
acceptance rate a it yields (1 - a^(k+1)) / (1 - a) tokens, so the cost per generated token is
(recompute + 4 k W) / that, for the k in [0, 16] that makes it least. a is an assumption (--acceptance,
default 0.85); bench/kvdirect_cost.py measures it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .budget import measured_bytes_per_cell
from .draft_length import ADAPTIVE_MAX, expected_tokens
from .gguf_file import read_header

LOSSY = ("window", "streaming", "h2o", "tova", "snapkv")
ASSUMED_ACCEPTANCE = 0.85
_BLOCK = re.compile(r"blk\.(\d+)\.")


@dataclass(frozen=True)
class PlanRow:
    policy: str
    checkpoint: str  # "-" for policies without checkpoints
    kv_bytes: int  # llama.cpp's KV buffer
    checkpoint_bytes: int  # what the policy keeps besides it
    forgotten_tokens: int  # tokens whose K/V are gone for good
    recompute_gflop_per_step: float
    exact: bool
    gflop_per_token_drafted: float = 0.0  # with drafting: recompute and drafting per generated token
    draft_k: int = 0  # the drafted tokens per verification that minimise it (0: drafting does not pay)


def weights_per_layer(model) -> list[int]:
    """Weight elements of every layer's tensors (blk.<i>.*), read from the GGUF header."""
    counts = [0] * model.info.n_layer
    for tensor in read_header(model.path).tensors:
        match = _BLOCK.match(tensor.name)
        if match and int(match.group(1)) < len(counts):
            elements = 1
            for dim in tensor.shape:
                elements *= dim
            counts[int(match.group(1))] += elements
    return counts


def drafted_cost(recompute_gflop: float, layer_gflop_per_token: float, acceptance: float) -> tuple[float, int]:
    """(GFLOP per generated token, k) with the best draft length for this acceptance rate."""

    def per_token(k: int) -> float:
        return (recompute_gflop + 4 * k * layer_gflop_per_token) / expected_tokens(acceptance, k)

    k = min(range(ADAPTIVE_MAX + 1), key=per_token)
    return per_token(k), k


def plan(model, context: int, budget: int, *, n_sink: int = 4, acceptance: float = ASSUMED_ACCEPTANCE) -> list[PlanRow]:
    """One row per policy (and per checkpoint kind of kvdirect) for this context and budget;
    kvdirect's drafted cost assumes this acceptance rate."""
    if context < 1 or budget < n_sink + 1:
        raise ValueError("the context must be positive and the budget must hold the sinks plus one token")
    if not 0.0 <= acceptance <= 1.0:
        raise ValueError(f"the acceptance rate must be in [0, 1], not {acceptance!r}")
    info = model.info
    per_cell = measured_bytes_per_cell(model)
    hot = min(budget, context)
    evicted = context - hot
    rows = [PlanRow("full", "-", int(context * per_cell), 0, 0, 0.0, True)]
    for name in LOSSY:
        rows.append(PlanRow(name, "-", int(hot * per_cell), 0, evicted, 0.0, False))

    layers = info.layers
    layer_flop = sum(2 * w for w in weights_per_layer(model))  # one token through every layer
    matmul = layer_flop * evicted
    attention = sum(4 * layer.n_head * layer.head_dim_k * (n_sink + evicted / 2) for layer in layers) * evicted

    def kvdirect(kind: str, checkpoint_bytes: int, recompute_flop: float) -> PlanRow:
        drafted, k = drafted_cost(recompute_flop / 1e9, layer_flop / 1e9, acceptance)
        return PlanRow(
            "kvdirect", kind, int(hot * per_cell), checkpoint_bytes, 0, recompute_flop / 1e9, True, drafted, k
        )

    rows.append(kvdirect("tokens", 4 * context, matmul + attention))
    projections = (
        sum(
            2 * info.n_embd * (layer.n_head * layer.head_dim_k + layer.n_embd_k_gqa + layer.n_embd_v_gqa)
            for layer in layers
        )
        * evicted
    )
    residual_bytes = 4 * info.n_embd * info.n_layer * context
    rows.append(kvdirect("residuals", residual_bytes, projections))
    return rows


def format_plan(model, context: int, budget: int, rows: list[PlanRow], acceptance: float = ASSUMED_ACCEPTANCE) -> str:
    from .memory import format_bytes

    lines = [
        f"{model.path.name}: context {context} tokens, KV budget {budget} tokens "
        f"({measured_bytes_per_cell(model):.0f} bytes per cell, measured)",
        f"{'policy':<10} {'checkpoint':<10} {'KV buffer':>12} {'checkpoints':>12} {'total':>12} "
        f"{'forgotten':>9} {'GFLOP/step':>11} {'GFLOP/token drafted':>20}  exact",
    ]
    for r in rows:
        drafted = f"{r.gflop_per_token_drafted:.3f} (k={r.draft_k})" if r.checkpoint != "-" else "-"
        lines.append(
            f"{r.policy:<10} {r.checkpoint:<10} {format_bytes(r.kv_bytes):>12} "
            f"{format_bytes(r.checkpoint_bytes):>12} {format_bytes(r.kv_bytes + r.checkpoint_bytes):>12} "
            f"{r.forgotten_tokens:>9} {r.recompute_gflop_per_step:>11.3f} {drafted:>20}  {'yes' if r.exact else 'no'}"
        )
    lines.append(
        f"drafted: kvdirect drafting k tokens per exact verification, assuming {acceptance:.0%} of drafts are "
        "accepted (--acceptance; bench/kvdirect_cost.py measures it); GFLOP/step is a step without drafting"
    )
    return "\n".join(lines)
