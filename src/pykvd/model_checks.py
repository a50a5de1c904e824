"""Cheap checks of a GGUF header for what makes llama.cpp abort, crash or hang.

llama.cpp trusts much of a file's metadata: a value out of range trips a
GGML_ASSERT (the process aborts), a tensor of a type its CPU kernels lack
segfaults at the first decode, and a rotary dimension of 0 spins forever. Each
check below mirrors one such rule of the pinned llama.cpp (load_hparams in
src/llama-model.cpp, src/llama-vocab.cpp, the asserts of ggml's CPU ops) and
raises InvalidModelError naming the key or tensor at fault. They read only the
header, so they cost milliseconds; pykvd.probe covers what they do not know.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import overload

from ._llama import native
from .errors import InvalidModelError, UnsupportedArchitectureError
from .gguf_file import GGUFHeader, LongArray, TensorInfo
from .integers import INT32_MAX

LLAMA_MAX_LAYERS = 512  # llama.cpp aborts (GGML_ASSERT) on a block count outside [1, LLAMA_MAX_LAYERS]
LLAMA_MAX_EXPERTS = 1024
MAX_CONTEXT_LENGTH = INT32_MAX  # llama.cpp keeps it as uint32 but hands it out as int32
TENSOR_ALIGNMENT = 32  # ggml's CPU buffers assert that every mmapped tensor starts on this boundary
ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")
NO_VOCAB_TOKENIZERS = ("none", "no_vocab")
BYTE_FALLBACK_TOKENIZERS = ("llama",)  # SPM: llama.cpp looks up a <0xXX> token for any byte it cannot match

# ggml types that the CPU backend can multiply by (they have a vec_dot in ggml-cpu.c) and dequantize for
# get_rows; I8..I64, F64, Q8_1 and Q8_K have neither, and a weight stored so segfaults at the first decode.
WEIGHT_TYPES = frozenset(
    {0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18, 19, 20, 21, 22, 23, 29, 30, 34, 35, 39, 40, 41, 42}
)
F32 = 0
STRING_TYPE = 8  # GGUF metadata value type of a single string
# Architectures whose tensor layout these checks know (the ones models/synthetic.py writes, and their kin).
KNOWN_LAYOUTS = ("llama", "qwen2", "qwen3", "gemma3", "phi3")
# Architectures whose graph asserts that the rotary dimension is the whole head.
FULL_HEAD_ROPE = ("llama", "qwen2", "qwen3")


@dataclass(frozen=True)
class _Model:
    """The header and the metadata lookups the checks share."""

    header: GGUFHeader

    @property
    def arch(self) -> str:
        return self.header.architecture

    def fail(self, what: str) -> InvalidModelError:
        return InvalidModelError(f"{self.header.path}: {what}")

    def has(self, key: str) -> bool:
        return self._full(key) in self.header.metadata

    def value(self, key: str):
        """A metadata value; a long array comes back whole (a tuple) where the reader kept it."""
        key = self._full(key)
        found = self.header.arrays.get(key)
        if isinstance(found, LongArray):
            return found.values
        return self.header.metadata.get(key)

    @overload
    def uint(self, key: str) -> int | None: ...

    @overload
    def uint(self, key: str, default: int) -> int: ...

    def uint(self, key: str, default: int | None = None) -> int | None:
        value = self.value(key)
        if value is None:
            return default
        if not _is_int(value) or value < 0:
            raise self.fail(f"{self._full(key)} must be a non-negative integer, not {value!r}")
        return value

    def per_layer(self, key: str, default: int | Sequence[int] | None) -> tuple[int, ...] | None:
        """A value llama.cpp reads with get_key_or_arr: one integer for every layer, or an array of them."""
        value = self.value(key)
        n_layer = self.n_layer
        if value is None:
            if default is None:
                return None
            return tuple(default) if isinstance(default, Sequence) else (default,) * n_layer
        if _is_int(value) and value >= 0:
            return (value,) * n_layer
        if isinstance(value, (list, tuple)) and all(_is_int(v) and v >= 0 for v in value) and len(value) == n_layer:
            return tuple(value)
        raise self.fail(
            f"{self._full(key)} must be a non-negative integer or one per layer ({n_layer}), not {_short(value)}"
        )

    @property
    def n_layer(self) -> int:
        return self.uint("block_count", 0) or 0

    def _full(self, key: str) -> str:
        return key if key.startswith(("general.", "tokenizer.")) else f"{self.arch}.{key}"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- architecture and hyperparameters -----------------------------------------


def check_architecture(m: _Model) -> None:
    if not m.arch:
        raise m.fail("GGUF has no general.architecture")
    if not native.arch_known(m.arch):
        raise UnsupportedArchitectureError(f"{m.header.path}: llama.cpp cannot run architecture {m.arch!r}")


def check_block_count(m: _Model) -> None:
    n_layer = m.uint("block_count")
    if n_layer is None:
        # llama.cpp requires the key; every per-layer check below depends on it.
        raise m.fail(f"{m.arch}.block_count is missing")
    if not 1 <= n_layer <= LLAMA_MAX_LAYERS:
        raise m.fail(f"implausible {m.arch}.block_count {n_layer} (llama.cpp allows 1 to {LLAMA_MAX_LAYERS})")


def check_context_length(m: _Model) -> None:
    n_ctx = m.uint("context_length")
    if n_ctx is not None and not 1 <= n_ctx <= MAX_CONTEXT_LENGTH:
        raise m.fail(f"{m.arch}.context_length {n_ctx} is outside [1, {MAX_CONTEXT_LENGTH}]")


def check_nextn_layers(m: _Model) -> None:
    n_nextn = m.uint("nextn_predict_layers", 0)
    if n_nextn > m.n_layer:
        raise m.fail(f"{m.arch}.nextn_predict_layers {n_nextn} exceeds {m.arch}.block_count {m.n_layer}")


def check_experts(m: _Model) -> None:
    """load_hparams' asserts on the mixture-of-experts counts, which abort rather than report."""
    n_expert = m.uint("expert_count", 0)
    used = max(m.per_layer("expert_used_count", 0) or (0,))
    groups, group_used = m.uint("expert_group_count", 0), m.uint("expert_group_used_count", 0)
    if n_expert > LLAMA_MAX_EXPERTS:
        raise m.fail(f"{m.arch}.expert_count {n_expert} exceeds llama.cpp's limit of {LLAMA_MAX_EXPERTS}")
    if n_expert == 0:
        if used or groups:
            raise m.fail(
                f"{m.arch}.expert_used_count {used} / expert_group_count {groups} on a model with "
                "no experts (expert_count 0)"
            )
        return
    if not any(".ffn_gate_inp." in tensor.name for tensor in m.header.tensors):
        raise m.fail(
            f"{m.arch}.expert_count {n_expert} on a dense model (it has no expert router tensors blk.N.ffn_gate_inp)"
        )
    if not 0 < used <= n_expert:
        raise m.fail(f"{m.arch}.expert_used_count {used} must be between 1 and expert_count {n_expert}")
    if groups >= n_expert or (groups > 1 and (n_expert % groups or not 0 < group_used < groups)):
        raise m.fail(
            f"{m.arch}.expert_group_count {groups} / expert_group_used_count {group_used} do not "
            f"divide expert_count {n_expert}"
        )


def check_rope_scaling(m: _Model) -> None:
    kind = m.value("rope.scaling.type")
    if kind is not None and kind not in ROPE_SCALING_TYPES:
        raise m.fail(f"{m.arch}.rope.scaling.type {kind!r} is not one of {', '.join(ROPE_SCALING_TYPES)}")


def check_norm_epsilon(m: _Model) -> None:
    for key in ("attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon"):
        eps = m.value(key)
        if eps is None:
            continue
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not math.isfinite(eps) or eps < 0:
            raise m.fail(f"{m.arch}.{key} must be a finite number >= 0, not {eps!r} (ggml asserts eps >= 0)")


@dataclass(frozen=True)
class _Heads:
    n_head: tuple[int, ...]
    n_head_kv: tuple[int, ...]
    head_k: int
    head_v: int


def _heads(m: _Model) -> _Heads | None:
    n_head = m.per_layer("attention.head_count", None)
    if n_head is None or max(n_head) == 0:
        return None
    n_head_kv = m.per_layer("attention.head_count_kv", n_head) or n_head
    n_embd = m.uint("embedding_length", 0)
    head_k = m.uint("attention.key_length", n_embd // max(n_head))
    head_v = m.uint("attention.value_length", n_embd // max(n_head))
    return _Heads(n_head, n_head_kv, head_k, head_v)


def check_head_counts(m: _Model) -> None:
    heads = _heads(m)
    if heads is None:
        return
    for il, (n_head, n_kv) in enumerate(zip(heads.n_head, heads.n_head_kv)):
        if n_kv == 0 and m.arch in KNOWN_LAYOUTS:
            raise m.fail(f"{m.arch}.attention.head_count_kv is 0 for layer {il}: every {m.arch} layer attends")
        if n_kv and n_head % n_kv:
            raise m.fail(
                f"{m.arch}.attention.head_count {n_head} is not a multiple of head_count_kv {n_kv} (layer {il})"
            )


def check_head_dims(m: _Model) -> None:
    heads = _heads(m)
    if heads is not None and (heads.head_k == 0 or heads.head_v == 0):
        raise m.fail(
            f"{m.arch} attention heads of size {heads.head_k} (key) / {heads.head_v} (value): "
            "key_length and value_length must be positive"
        )


def check_rope_dims(m: _Model) -> None:
    heads = _heads(m)
    if heads is None:
        return
    for key in ("rope.dimension_count", "rope.dimension_count_swa"):
        n_rot = m.uint(key)
        if n_rot is None:
            continue
        if n_rot % 2 or n_rot > heads.head_k or (n_rot == 0 and m.arch in KNOWN_LAYOUTS):
            raise m.fail(f"{m.arch}.{key} {n_rot} must be even and between 2 and the head size {heads.head_k}")
        if m.arch in FULL_HEAD_ROPE and n_rot != heads.head_k:
            raise m.fail(f"{m.arch}.{key} {n_rot} must equal the head size {heads.head_k} for {m.arch}")


def check_swa_pattern(m: _Model) -> None:
    # llama.cpp marks layer il sliding-window when il % pattern < pattern - 1: a pattern of 1 marks none, yet a
    # model with a sliding window builds a cache that asserts it has some.
    pattern = m.uint("attention.sliding_window_pattern")
    if pattern == 1 and m.arch == "gemma3":
        raise m.fail(
            f"{m.arch}.attention.sliding_window_pattern 1 leaves no sliding-window layer, which {m.arch} requires"
        )


# -- tokenizer --------------------------------------------------------------------


def _tokens(m: _Model) -> Sequence[str] | None:
    tokens = m.value("tokenizer.ggml.tokens")
    return tokens if isinstance(tokens, (list, tuple)) else None


def check_tokenizer_model(m: _Model) -> None:
    kind = m.value("tokenizer.ggml.model")
    if kind in NO_VOCAB_TOKENIZERS:
        raise m.fail(f"tokenizer.ggml.model is {kind!r}: the file has no tokenizer, and pykvd needs one")


def check_text_values(m: _Model) -> None:
    # The binding hands string values (the chat template, names) to Python as str, which must be UTF-8;
    # token lists are exempt: llama.cpp keeps their bytes as they are.
    bad = [key for key in m.header.not_utf8 if m.header.types.get(key) == STRING_TYPE]
    if bad:
        raise m.fail(f"metadata value {bad[0]} is not valid UTF-8 text")


def check_token_strings(m: _Model) -> None:
    tokens = _tokens(m)
    if not tokens:
        return
    # llama.cpp renames empty tokens, then asserts that no two share a string.
    seen: dict[str, int] = {}
    for index, token in enumerate(tokens):
        text = token if token else f"[EMPTY_{index}]"
        if text in seen:
            raise m.fail(
                f"tokens {seen[text]} and {index} of tokenizer.ggml.tokens are both {text!r}; "
                "llama.cpp needs every token string to be unique"
            )
        seen[text] = index


def check_byte_fallback(m: _Model) -> None:
    kind, tokens = m.value("tokenizer.ggml.model"), _tokens(m)
    if kind not in BYTE_FALLBACK_TOKENIZERS or not tokens:
        return
    known = set(tokens)
    missing = [b for b in range(256) if f"<0x{b:02X}>" not in known and chr(b) not in known]
    if missing:
        raise m.fail(
            f"tokenizer.ggml.model {kind!r} (SentencePiece) needs a byte token such as "
            f"<0x{missing[0]:02X}> for every byte, and {len(missing)} are missing: is it a BPE "
            "vocabulary (tokenizer.ggml.model 'gpt2')?"
        )


# -- tensors ----------------------------------------------------------------------


def _role(tensor: TensorInfo) -> str:
    name = tensor.name
    if name.endswith("norm.weight") or name.endswith(".bias"):
        return "vector"
    return "weight"


def check_tensor_alignment(m: _Model) -> None:
    for tensor in m.header.tensors:
        start = m.header.data_offset + tensor.offset
        if start % TENSOR_ALIGNMENT:
            raise m.fail(
                f"tensor {tensor.name!r} starts at byte {start}, not on a {TENSOR_ALIGNMENT}-byte "
                f"boundary (general.alignment {m.header.metadata.get('general.alignment')})"
            )


def check_tensor_types(m: _Model) -> None:
    for tensor in m.header.tensors:
        if _role(tensor) == "vector" and tensor.ggml_type != F32:
            raise m.fail(
                f"tensor {tensor.name!r} is {tensor.type_name}; norm weights and biases must be F32 "
                "(ggml adds and multiplies them with F32 activations only)"
            )
        if tensor.ggml_type not in WEIGHT_TYPES:
            raise m.fail(
                f"tensor {tensor.name!r} is {tensor.type_name}, a type ggml's CPU backend cannot "
                "multiply by or look rows up in"
            )


def check_tensor_shapes(m: _Model) -> None:
    if m.arch not in KNOWN_LAYOUTS:
        return
    expected = _expected_shapes(m)
    for tensor in m.header.tensors:
        shape = expected(tensor.name)
        if shape is not None and tuple(tensor.shape) != shape:
            raise m.fail(
                f"tensor {tensor.name!r} has shape {list(tensor.shape)}, but the hyperparameters "
                f"({m.arch}.embedding_length, head counts and sizes, feed_forward_length, vocabulary) "
                f"make it {list(shape)}"
            )


def _expected_shapes(m: _Model) -> Callable[[str], tuple[int, ...] | None]:
    """ggml shape (ne0, ne1, ...) of each tensor of the known layouts, from the hyperparameters."""
    heads = _heads(m)
    n_embd, tokens = m.uint("embedding_length", 0), _tokens(m)
    n_ff = m.per_layer("feed_forward_length", 0)
    if heads is None or not n_embd or n_ff is None:
        return lambda name: None
    n_vocab = len(tokens) if tokens else None
    model_wide: dict[str, tuple[int, ...]] = {"output_norm.weight": (n_embd,)}
    if n_vocab:
        model_wide |= {"token_embd.weight": (n_embd, n_vocab), "output.weight": (n_embd, n_vocab)}

    def layer_shape(il: int, role: str) -> tuple[int, ...] | None:
        q, kv_k, kv_v = (
            heads.n_head[il] * heads.head_k,
            heads.n_head_kv[il] * heads.head_k,
            heads.n_head_kv[il] * heads.head_v,
        )
        up = 2 * n_ff[il] if m.arch == "phi3" else n_ff[il]
        return {
            "attn_q.weight": (n_embd, q),
            "attn_k.weight": (n_embd, kv_k),
            "attn_v.weight": (n_embd, kv_v),
            "attn_qkv.weight": (n_embd, q + kv_k + kv_v),
            "attn_output.weight": (heads.n_head[il] * heads.head_v, n_embd),
            "attn_q.bias": (q,),
            "attn_k.bias": (kv_k,),
            "attn_v.bias": (kv_v,),
            "attn_q_norm.weight": (heads.head_k,),
            "attn_k_norm.weight": (heads.head_k,),
            "ffn_gate.weight": (n_embd, n_ff[il]),
            "ffn_up.weight": (n_embd, up),
            "ffn_down.weight": (n_ff[il], n_embd),
        }.get(role, (n_embd,) if role.endswith("norm.weight") else None)

    def expected(name: str) -> tuple[int, ...] | None:
        parts = name.split(".", 2)
        if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and int(parts[1]) < m.n_layer:
            return layer_shape(int(parts[1]), parts[2])
        return model_wide.get(name)

    return expected


CHECKS: tuple[Callable[[_Model], None], ...] = (
    check_architecture,
    check_block_count,
    check_context_length,
    check_nextn_layers,
    check_experts,
    check_rope_scaling,
    check_norm_epsilon,
    check_head_counts,
    check_head_dims,
    check_rope_dims,
    check_swa_pattern,
    check_tokenizer_model,
    check_text_values,
    check_token_strings,
    check_byte_fallback,
    check_tensor_alignment,
    check_tensor_types,
    check_tensor_shapes,
)


def check_header(header: GGUFHeader) -> None:
    """Raise InvalidModelError (or UnsupportedArchitectureError) if llama.cpp would abort on this file."""
    model = _Model(header)
    for check in CHECKS:
        check(model)
