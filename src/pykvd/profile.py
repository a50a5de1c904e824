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

from dataclasses import dataclass, replace

from .gguf_file import GGML_TYPE_NAMES

FLASH_ATTN_AUTO, FLASH_ATTN_OFF, FLASH_ATTN_ON = -1, 0, 1

# ggml types whose repacked gemv and gemm sum alike, so repacking costs a single row nothing in
# batch-invariant mode (Q4_0, IQ4_NL, MXFP4). Repacked K-quants pad a single row to a group of
# four instead, which is slower than the tiled kernel's row dots, so exact models of those keep
# ggml's own layout.
REPACK_ALIKE_TYPES = frozenset(t for t, name in GGML_TYPE_NAMES.items() if name in ("Q4_0", "IQ4_NL", "MXFP4"))


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
        """The profile for a model whose weights hold ``weight_types`` (ggml type -> elements)."""
        main_type = max(weight_types, key=weight_types.__getitem__) if weight_types else -1
        return cls.of(exact, repack=main_type in REPACK_ALIKE_TYPES)

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
