"""The runtime side of the exact profile (see the README's "Exactness").

Bit-exact results need kernels whose numbers do not depend on batch shape. The
patched ggml has a batch-invariant mode that keeps its fast kernels (tinyBLAS,
the tiled K-quant matmul, repacked weights, flash attention's tiled kernel) and
makes every batch size take the same kernel and reduction order; pykvd turns it
on for each exact context. Flash attention is on: its tiled kernel sums each
query row on its own, and pykvd's recompute primitives attend through it too.
Policies that read llama.cpp's attention weights turn it off (the weights exist
as tensors only without it); the non-flash path is batch-invariant as well.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, replace

from .gguf_file import GGML_TYPE_NAMES

FLASH_ATTN_AUTO, FLASH_ATTN_OFF, FLASH_ATTN_ON = -1, 0, 1


def _types(*names: str) -> frozenset[int]:
    return frozenset(t for t, name in GGML_TYPE_NAMES.items() if name in names)


# ggml types that the CPU backend repacks on x86 (AVX2 and up; Q2_K with AVX-512).
REPACKED_TYPES = _types("Q4_0", "Q4_K", "Q2_K", "IQ4_NL", "MXFP4")
# Those whose single rows cost in batch-invariant mode what they cost llama.cpp: the repacked gemv
# sums as gemm does (Q4_0, IQ4_NL, MXFP4 as they are; Q4_K through its own gemv, patch 0016). Q2_K
# pads a single row to gemm's group of four instead. Off x86 every repacked type pads (patch 0010),
# so none counts as alike there.
_ON_X86 = platform.machine().lower() in ("x86_64", "amd64")
REPACK_ALIKE_TYPES = _types("Q4_0", "Q4_K", "IQ4_NL", "MXFP4") if _ON_X86 else frozenset()


@dataclass(frozen=True)
class RuntimeProfile:
    """How llama.cpp is asked to run a model.

    ``RuntimeProfile.exact()`` (the default) gives batch-invariant, bit-exact
    results; ``RuntimeProfile.fast()`` lets llama.cpp choose (flash attention
    auto, repacked weights, no batch invariance). ``extra_bufts`` is decided
    when the weights load; a session can switch the rest.
    """

    flash_attn: int = FLASH_ATTN_ON
    extra_bufts: bool = False
    batch_invariant: bool = True

    @classmethod
    def exact(cls, repack: bool = False) -> RuntimeProfile:
        return cls(FLASH_ATTN_ON, repack, True)

    @classmethod
    def fast(cls) -> RuntimeProfile:
        return cls(FLASH_ATTN_AUTO, True, False)

    @classmethod
    def of(cls, exact: bool, repack: bool = False) -> RuntimeProfile:
        return cls.exact(repack) if exact else cls.fast()

    @classmethod
    def for_weights(cls, exact: bool, weight_types: dict[int, int]) -> RuntimeProfile:
        """The profile for a model whose weights hold ``weight_types`` (ggml type -> elements):
        exact models repack when most of what would be repacked sums alike in both layouts."""
        repacked = {t: n for t, n in weight_types.items() if t in REPACKED_TYPES}
        main_repacked = max(repacked, key=repacked.__getitem__) if repacked else -1
        return cls.of(exact, repack=main_repacked in REPACK_ALIKE_TYPES)

    def for_session(self, exact: bool | None) -> RuntimeProfile:
        """This model's profile with a session's own choice; the weights' layout stays."""
        if exact is None:
            return self
        kernels = RuntimeProfile.of(exact)
        return replace(self, flash_attn=kernels.flash_attn, batch_invariant=kernels.batch_invariant)

    def without_flash_attention(self) -> RuntimeProfile:
        """This profile with flash attention off, for reading llama.cpp's attention weights."""
        return replace(self, flash_attn=FLASH_ATTN_OFF)

    def reference_flags(self) -> list[str]:
        """The same kernel settings as flags of pykvd-llama-reference (``pykvd.paths.reference_program()``)."""
        return [
            "--flash-attn",
            str(self.flash_attn),
            "--extra-bufts",
            str(int(self.extra_bufts)),
            "--batch-invariant",
            str(int(self.batch_invariant)),
        ]

    @property
    def is_exact(self) -> bool:
        """True only if every kernel choice of the exact profile holds."""
        return self.flash_attn != FLASH_ATTN_AUTO and self.batch_invariant
