"""What inference state costs per token, from a model's real dimensions.

The rows are the representations KV-Direct trades between: the F16 K/V that
llama.cpp caches, the F32 residual stream (one layer, or every layer), and the
token id alone. The measured row reads the KV buffer llama.cpp actually
allocates, so a formula is never the only evidence.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import ModelInfo

F16_BYTES, F32_BYTES, TOKEN_ID_BYTES = 2, 4, 4


@dataclass(frozen=True)
class StateRow:
    name: str
    bytes_per_token: int


def state_per_token(info: ModelInfo) -> list[StateRow]:
    kv = sum((layer.n_embd_k_gqa + layer.n_embd_v_gqa) * F16_BYTES for layer in info.layers if layer.has_kv)
    residual = info.n_embd * F32_BYTES
    return [
        StateRow("full F16 KV, all layers", kv),
        StateRow("one F32 residual", residual),
        StateRow("F32 residuals at every layer", residual * info.n_layer),
        StateRow("token id", TOKEN_ID_BYTES),
    ]


def format_table(rows: list[StateRow]) -> str:
    kv = rows[0].bytes_per_token
    lines = [f"{'state per token':<30} {'bytes':>9} {'KiB':>9} {'x KV':>7}"]
    for row in rows:
        lines.append(
            f"{row.name:<30} {row.bytes_per_token:>9} {row.bytes_per_token / 1024:>9.2f} "
            f"{row.bytes_per_token / kv:>7.2f}"
        )
    return "\n".join(lines)
