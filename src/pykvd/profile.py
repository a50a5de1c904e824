"""The runtime side of the exact profile (see the README's "Exactness").

Bit-exact results need kernels whose numbers do not depend on batch shape:
flash attention off, no repacked weights (extra buffer types), and no tiled
K-quant matmul. The first two are chosen per model and context; the tiled
matmul is a process-wide switch that ggml reads once from the environment
variable GGML_CPU_TILED_MM, so pykvd sets it to 0 when it loads llama.cpp
unless the user has set it already.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

TILED_MM_ENV = "GGML_CPU_TILED_MM"

FLASH_ATTN_AUTO, FLASH_ATTN_OFF, FLASH_ATTN_ON = -1, 0, 1


def default_tiled_matmul_off() -> None:
    """Disable ggml's tiled matmul for this process unless the user chose otherwise."""
    os.environ.setdefault(TILED_MM_ENV, "0")


def tiled_matmul_enabled() -> bool:
    value = os.environ.get(TILED_MM_ENV)
    try:
        return value is None or int(value) != 0
    except ValueError:
        return True


@dataclass(frozen=True)
class RuntimeProfile:
    """How llama.cpp is asked to run a model.

    ``RuntimeProfile.exact()`` (the default) gives batch-invariant, bit-exact
    results; ``RuntimeProfile.fast()`` lets llama.cpp choose its fastest
    kernels (flash attention auto, repacked weights).
    """

    flash_attn: int = FLASH_ATTN_OFF
    extra_bufts: bool = False

    @classmethod
    def exact(cls) -> RuntimeProfile:
        return cls(FLASH_ATTN_OFF, False)

    @classmethod
    def fast(cls) -> RuntimeProfile:
        return cls(FLASH_ATTN_AUTO, True)

    @classmethod
    def of(cls, exact: bool) -> RuntimeProfile:
        return cls.exact() if exact else cls.fast()

    @property
    def is_exact(self) -> bool:
        """True only if every kernel choice of the exact profile holds, the process-wide one included."""
        return self.flash_attn == FLASH_ATTN_OFF and not self.extra_bufts and not tiled_matmul_enabled()
