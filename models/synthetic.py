"""Tiny random-weight GGUF models, one per supported llama.cpp architecture.

Tests need real GGUF files for every architecture pykvd supports, but real
checkpoints are gigabytes and cannot be downloaded in CI.  This module writes
files of a few hundred kilobytes instead: random weights (so the text they
generate is gibberish), yet complete metadata, a small working byte-level BPE
tokenizer and a chat template, so llama.cpp loads them, tokenizes and
detokenizes text exactly, applies the chat template and decodes in
milliseconds.

Every file follows what the pinned llama.cpp expects for its architecture
(its src/models/<arch>.cpp loader):

* ``llama``, ``smollm3``, ``mistral3`` - separate q/k/v, SwiGLU FFN (smollm3
  skips RoPE in every fourth layer), llama-3 or ChatML template.
* ``qwen2``  - like llama plus q/k/v biases, ChatML template.
* ``qwen3``  - per-head RMS q_norm/k_norm, ChatML template.
* ``qwen3moe`` - qwen3's attention, a mixture-of-experts FFN.
* ``gemma2``, ``gemma3`` - post-attention and post-FFN norms, embeddings
  scaled by sqrt(n_embd) inside llama.cpp, and interleaved sliding-window
  (local) and global attention layers; gemma3 adds q_norm/k_norm, gemma2
  soft-caps attention and final logits; gemma chat template.
* ``phi3``   - fused ``attn_qkv`` and fused gate+up ``ffn_up``, phi-3 template.
  As for real Phi-3 files, llama.cpp strips whitespace after special tokens
  when tokenizing, so a formatted chat does not round-trip byte for byte.
* ``granite`` - llama's layout with logit and residual scales.
* ``olmo2``  - no pre-norms: q/k norms over the whole projection, post norms.
* ``glm4``   - post norms and a fused gate+up ``ffn_up``.
* ``gpt-oss`` (llama.cpp's openai-moe) - sliding-window and full layers in
  turn, attention sinks, biased projections and a biased expert FFN.

One architecture without attention is written too, so tests can check that
pykvd refuses its layer hooks yet still runs it:

* ``mamba``  - selective state-space layers (llama.cpp's LLM_ARCH_MAMBA):
  recurrent state instead of a KV cache, no attention heads.

All files share one tokenizer: the 256 GPT-2 byte tokens, a few merges and
the chat's special tokens (about 300 tokens).

Usage::

    write_tiny_gguf("qwen3", "tiny-qwen3.gguf", seed=1)

    python models/synthetic.py qwen3 tiny-qwen3.gguf --seed 1
    python models/synthetic.py --all OUTDIR   # OUTDIR/tiny-<arch>.gguf
"""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Iterator
from dataclasses import dataclass

import gguf
import numpy as np

from pykvd._llama import native

# Shared dimensions.  n_head * HEAD_DIM == N_EMBD because qwen2 and phi3 size
# their attention projections by n_embd; N_HEAD_KV < N_HEAD keeps GQA.
N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 2
HEAD_DIM = 16
N_FF = 128
CONTEXT_LENGTH = 2048
DEFAULT_N_LAYER = 4

# llama.cpp marks gemma3 layer il as sliding-window unless il % pattern ==
# pattern - 1, so six layers give five local layers and one global layer.
GEMMA3_N_LAYER = 6
GEMMA3_SWA_PATTERN = 6
GEMMA3_SLIDING_WINDOW = 32

# Small enough to keep activations finite through a few layers, large enough
# that logits of different tokens differ visibly.
WEIGHT_STD = 0.05
NORM_STD = 0.05

# "qwen2" pre-tokenization is the one that also disables llama.cpp's
# "clean spaces" detokenizer pass, so any ASCII text round-trips exactly.
TOKENIZER_PRE = "qwen2"

# A handful of BPE merges so tokenization exercises merging, not only raw
# bytes.  Each side is a byte token or the result of an earlier merge;
# "\u0120" is how GPT-2 byte-level BPE spells a space.
_SP = "\u0120"
MERGES: tuple[tuple[str, str], ...] = (
    (_SP, "t"),
    ("h", "e"),
    ("i", "n"),
    ("e", "r"),
    ("a", "n"),
    ("o", "n"),
    ("r", "e"),
    (_SP, "a"),
    (_SP + "t", "he"),
    (_SP, "s"),
    (_SP, "w"),
    ("o", "r"),
    ("e", "n"),
    ("l", "l"),
    ("i", "s"),
    ("a", "t"),
    ("e", "s"),
    ("i", "t"),
    ("in", "g"),
    ("o", "u"),
    ("n", "d"),
    (_SP + "a", "nd"),
    (_SP, "o"),
    (_SP + "o", "f"),
    (_SP + "t", "o"),
    (_SP, "i"),
    (_SP + "i", "s"),
    (_SP, "c"),
    (_SP, "h"),
    ("H", "e"),
    ("He", "ll"),
    ("Hell", "o"),
    (_SP + "w", "or"),
    ("l", "d"),
    (_SP + "wor", "ld"),
    (_SP, _SP),
)


@dataclass(frozen=True)
class ChatFormat:
    """Chat template plus the special tokens it and llama.cpp rely on."""

    template: str
    bos: str
    eos: str
    end_of_turn: str
    # Other control tokens the template emits, so they tokenize as one token.
    extra: tuple[str, ...]
    add_bos: bool


@dataclass(frozen=True)
class ArchSpec:
    """What differs between architectures: hyperparameters and which tensors each layer has."""

    chat: ChatFormat
    rms_eps: float
    rope_freq_base: float
    # Whether lm_head reuses token_embd; covers both of llama.cpp's code paths.
    tied_output: bool
    default_n_layer: int = DEFAULT_N_LAYER
    qkv: str = "split"  # "split": attn_q/k/v; "fused": one attn_qkv
    qkv_bias: bool = False
    qk_norm: str = ""  # "": none; "head": one vector per head dim (applied per head); "full": whole projection
    pre_norms: bool = True  # attn_norm and ffn_norm before each block (olmo2 has none)
    post_norms: bool = False  # post_attention_norm and post_ffw_norm after each block
    ffn: str = "swiglu"  # "swiglu": gate/up/down; "fused": gate+up in ffn_up; "moe": experts; "moe-oai": biased experts
    attn_out_bias: bool = False
    attn_sinks: bool = False
    # Interleaved sliding-window layers: llama.cpp makes layer il sliding unless il % pattern == pattern - 1.
    sliding_window: int = 0
    swa_pattern: int = 0
    extra_hparams: tuple[tuple[str, float | int], ...] = ()  # "<arch>.<key>": value (float32 or uint32)

    def swa_layers(self, n_layer: int) -> tuple[int, ...]:
        p = self.swa_pattern
        return tuple(il for il in range(n_layer) if p and il % p < p - 1) if self.sliding_window else ()


# Templates are valid Jinja (for Jinja-based consumers) and contain the markers
# llama.cpp's built-in template detection keys on.
LLAMA3_CHAT = ChatFormat(
    template=(
        "{{ bos_token }}{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
        " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    bos="<|begin_of_text|>",
    eos="<|end_of_text|>",
    end_of_turn="<|eot_id|>",
    extra=("<|start_header_id|>", "<|end_header_id|>"),
    add_bos=True,
)

CHATML_CHAT = ChatFormat(
    template=(
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
        " + '<|im_end|>' + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    # Qwen uses <|endoftext|> as BOS but never prepends it.
    bos="<|endoftext|>",
    eos="<|im_end|>",
    end_of_turn="<|im_end|>",
    extra=("<|im_start|>",),
    add_bos=False,
)

GEMMA_CHAT = ChatFormat(
    template=(
        "{{ bos_token }}{% for message in messages %}"
        "{% set role = 'model' if message['role'] == 'assistant'"
        " else message['role'] %}"
        "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim"
        " + '<end_of_turn>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    ),
    bos="<bos>",
    eos="<eos>",
    end_of_turn="<end_of_turn>",
    extra=("<start_of_turn>",),
    add_bos=True,
)

PHI3_CHAT = ChatFormat(
    template=(
        "{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    ),
    bos="<s>",
    eos="<|endoftext|>",
    end_of_turn="<|end|>",
    # llama.cpp special-cases models whose name contains "phi3" (as ours
    # does) and fails to load unless "<unk>" and "</s>" exist; it then also
    # right-strips whitespace after special tokens, like real Phi-3 files.
    extra=("<|system|>", "<|user|>", "<|assistant|>", "<unk>", "</s>"),
    add_bos=False,
)

# Experts of the mixture-of-experts FFNs: few and small.
N_EXPERT = 4
N_EXPERT_USED = 2
N_FF_EXPERT = 32

ARCH_SPECS: dict[str, ArchSpec] = {
    "llama": ArchSpec(LLAMA3_CHAT, rms_eps=1e-5, rope_freq_base=500000.0, tied_output=False),
    "qwen2": ArchSpec(CHATML_CHAT, rms_eps=1e-6, rope_freq_base=1000000.0, tied_output=True, qkv_bias=True),
    "qwen3": ArchSpec(CHATML_CHAT, rms_eps=1e-6, rope_freq_base=1000000.0, tied_output=True, qk_norm="head"),
    "gemma3": ArchSpec(
        GEMMA_CHAT,
        rms_eps=1e-6,
        rope_freq_base=1000000.0,
        tied_output=True,
        default_n_layer=GEMMA3_N_LAYER,
        qk_norm="head",
        post_norms=True,
        sliding_window=GEMMA3_SLIDING_WINDOW,
        swa_pattern=GEMMA3_SWA_PATTERN,
        # Gemma 3 rotates local layers with a smaller base than global ones.
        extra_hparams=(("rope.freq_base_swa", 10000.0),),
    ),
    "phi3": ArchSpec(PHI3_CHAT, rms_eps=1e-5, rope_freq_base=10000.0, tied_output=False, qkv="fused", ffn="fused"),
    "gemma2": ArchSpec(
        GEMMA_CHAT,
        rms_eps=1e-6,
        rope_freq_base=10000.0,
        tied_output=True,
        post_norms=True,
        sliding_window=GEMMA3_SLIDING_WINDOW,
        swa_pattern=2,
        extra_hparams=(("attn_logit_softcapping", 50.0), ("final_logit_softcapping", 30.0)),
    ),
    "qwen3moe": ArchSpec(
        CHATML_CHAT,
        rms_eps=1e-6,
        rope_freq_base=1000000.0,
        tied_output=False,
        qk_norm="head",
        ffn="moe",
    ),
    "granite": ArchSpec(
        CHATML_CHAT,
        rms_eps=1e-5,
        rope_freq_base=10000.0,
        tied_output=True,
        extra_hparams=(
            ("logit_scale", 8.0),
            ("residual_scale", 0.22),
            ("embedding_scale", 12.0),
            ("attention.scale", 0.0625),
        ),
    ),
    "olmo2": ArchSpec(
        CHATML_CHAT,
        rms_eps=1e-6,
        rope_freq_base=500000.0,
        tied_output=False,
        qk_norm="full",
        pre_norms=False,
        post_norms=True,
    ),
    "smollm3": ArchSpec(CHATML_CHAT, rms_eps=1e-6, rope_freq_base=2000000.0, tied_output=True),
    "mistral3": ArchSpec(LLAMA3_CHAT, rms_eps=1e-5, rope_freq_base=1000000.0, tied_output=False),
    "gpt-oss": ArchSpec(
        CHATML_CHAT,
        rms_eps=1e-5,
        rope_freq_base=150000.0,
        tied_output=False,
        qkv_bias=True,
        ffn="moe-oai",
        attn_out_bias=True,
        attn_sinks=True,
        sliding_window=GEMMA3_SLIDING_WINDOW,
        swa_pattern=2,
    ),
    "glm4": ArchSpec(
        CHATML_CHAT,
        rms_eps=1e-5,
        rope_freq_base=10000.0,
        tied_output=False,
        qkv_bias=True,
        post_norms=True,
        ffn="fused",
    ),
}

# Architectures whose K/V pykvd can recompute: the list llama-kvd exports (patches/), which the
# generator must cover.
ARCHITECTURES: tuple[str, ...] = tuple(native.kvd_architectures())
_MISSING = set(ARCHITECTURES) - set(ARCH_SPECS)
if _MISSING:
    raise RuntimeError(f"models/synthetic.py has no spec for {sorted(_MISSING)}, which llama-kvd supports")

# Architectures with recurrent state and no layer hooks, written so tests can check that pykvd refuses
# capture, re-injection and kvdirect on them while they still generate.
RECURRENT_ARCHITECTURES: tuple[str, ...] = ("mamba",)

# Mamba's dimensions.  llama.cpp supports only an expansion factor of 2 (d_inner == 2 * n_embd).
MAMBA_CHAT = CHATML_CHAT
MAMBA_RMS_EPS = 1e-5
MAMBA_D_INNER = 2 * N_EMBD
MAMBA_D_CONV = 4
MAMBA_D_STATE = 16
MAMBA_DT_RANK = 4


@dataclass(frozen=True)
class Vocab:
    """A GPT-2 style byte-level BPE vocabulary as GGUF stores it."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]

    def id_of(self, token: str) -> int:
        return self.tokens.index(token)


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters.

    Printable Latin-1 bytes map to themselves; the rest are shifted past 255
    in order.  llama.cpp applies the inverse when detokenizing.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\u00a1"), ord("\u00ac") + 1),
        *range(ord("\u00ae"), ord("\u00ff") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping


def build_vocab(chat: ChatFormat) -> Vocab:
    """All 256 byte tokens, then merge results, then the chat's special tokens."""
    byte_map = _byte_to_unicode()
    tokens = [byte_map[b] for b in range(256)]
    tokens += [left + right for left, right in MERGES]
    token_types = [int(gguf.TokenType.NORMAL)] * len(tokens)

    # dict.fromkeys drops duplicates (ChatML's EOS is also its end of turn).
    specials = list(dict.fromkeys((chat.bos, chat.eos, chat.end_of_turn, *chat.extra)))
    tokens += specials
    token_types += [int(gguf.TokenType.CONTROL)] * len(specials)

    merges = [f"{left} {right}" for left, right in MERGES]
    return Vocab(tokens=tokens, token_types=token_types, merges=merges)


def _matrix(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    # numpy shape (rows, cols) is ggml's {cols, rows}: cols is the input dim.
    return (rng.standard_normal((rows, cols)) * WEIGHT_STD).astype(np.float16)


def _norm(rng: np.random.Generator, size: int) -> np.ndarray:
    # llama.cpp multiplies by the stored weight as is (gemma's converter has
    # already folded in gemma's "1 + w"), so values near 1 suit every arch.
    return (1.0 + rng.standard_normal(size) * NORM_STD).astype(np.float32)


def _bias(rng: np.random.Generator, size: int) -> np.ndarray:
    return (rng.standard_normal(size) * WEIGHT_STD).astype(np.float32)


def _attention_tensors(spec: ArchSpec, rng: np.random.Generator) -> Iterator[tuple[str, np.ndarray]]:
    n_q = N_HEAD * HEAD_DIM
    n_kv = N_HEAD_KV * HEAD_DIM
    if spec.pre_norms:
        yield "attn_norm.weight", _norm(rng, N_EMBD)
    if spec.qkv == "fused":
        # Phi-3 stores q, k and v stacked in one projection.
        yield "attn_qkv.weight", _matrix(rng, n_q + 2 * n_kv, N_EMBD)
    else:
        yield "attn_q.weight", _matrix(rng, n_q, N_EMBD)
        yield "attn_k.weight", _matrix(rng, n_kv, N_EMBD)
        yield "attn_v.weight", _matrix(rng, n_kv, N_EMBD)
    if spec.qkv_bias:
        yield "attn_q.bias", _bias(rng, n_q)
        yield "attn_k.bias", _bias(rng, n_kv)
        yield "attn_v.bias", _bias(rng, n_kv)
    if spec.qk_norm == "head":
        # One weight vector shared by all heads, applied per head.
        yield "attn_q_norm.weight", _norm(rng, HEAD_DIM)
        yield "attn_k_norm.weight", _norm(rng, HEAD_DIM)
    elif spec.qk_norm == "full":
        yield "attn_q_norm.weight", _norm(rng, n_q)
        yield "attn_k_norm.weight", _norm(rng, n_kv)
    yield "attn_output.weight", _matrix(rng, N_EMBD, n_q)
    if spec.attn_out_bias:
        yield "attn_output.bias", _bias(rng, N_EMBD)
    if spec.attn_sinks:
        yield "attn_sinks.weight", _bias(rng, N_HEAD)
    if spec.post_norms or spec.ffn == "moe-oai":
        # gpt-oss names its FFN pre-norm post_attention_norm.
        yield "post_attention_norm.weight", _norm(rng, N_EMBD)


def _ffn_tensors(spec: ArchSpec, rng: np.random.Generator) -> Iterator[tuple[str, np.ndarray]]:
    if spec.pre_norms and spec.ffn != "moe-oai":
        yield "ffn_norm.weight", _norm(rng, N_EMBD)
    if spec.ffn == "fused":
        # Gate and up stacked in one projection, split by llama.cpp's SwiGLU.
        yield "ffn_up.weight", _matrix(rng, 2 * N_FF, N_EMBD)
        yield "ffn_down.weight", _matrix(rng, N_EMBD, N_FF)
    elif spec.ffn == "swiglu":
        yield "ffn_gate.weight", _matrix(rng, N_FF, N_EMBD)
        yield "ffn_up.weight", _matrix(rng, N_FF, N_EMBD)
        yield "ffn_down.weight", _matrix(rng, N_EMBD, N_FF)
    else:
        yield from _expert_tensors(spec, rng)
    if spec.post_norms:
        yield "post_ffw_norm.weight", _norm(rng, N_EMBD)


def _expert_tensors(spec: ArchSpec, rng: np.random.Generator) -> Iterator[tuple[str, np.ndarray]]:
    # numpy (n_expert, rows, cols) is ggml's {cols, rows, n_expert}.
    yield "ffn_gate_inp.weight", _matrix(rng, N_EXPERT, N_EMBD)
    for name, rows, cols in (("gate", N_FF_EXPERT, N_EMBD), ("up", N_FF_EXPERT, N_EMBD), ("down", N_EMBD, N_FF_EXPERT)):
        yield f"ffn_{name}_exps.weight", np.stack([_matrix(rng, rows, cols) for _ in range(N_EXPERT)])
    if spec.ffn == "moe-oai":
        yield "ffn_gate_inp.bias", _bias(rng, N_EXPERT)
        for name, rows in (("gate", N_FF_EXPERT), ("up", N_FF_EXPERT), ("down", N_EMBD)):
            yield f"ffn_{name}_exps.bias", np.stack([_bias(rng, rows) for _ in range(N_EXPERT)])


def _tensors(arch: str, n_layer: int, n_vocab: int, rng: np.random.Generator) -> Iterator[tuple[str, np.ndarray]]:
    spec = ARCH_SPECS[arch]
    yield "token_embd.weight", _matrix(rng, n_vocab, N_EMBD)
    for il in range(n_layer):
        for name, data in _attention_tensors(spec, rng):
            yield f"blk.{il}.{name}", data
        for name, data in _ffn_tensors(spec, rng):
            yield f"blk.{il}.{name}", data
    yield "output_norm.weight", _norm(rng, N_EMBD)
    if not spec.tied_output:
        yield "output.weight", _matrix(rng, n_vocab, N_EMBD)


def _add_hparams(writer: gguf.GGUFWriter, arch: str, n_layer: int) -> None:
    spec = ARCH_SPECS[arch]
    writer.add_name(f"tiny-{arch}")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_key_length(HEAD_DIM)
    writer.add_value_length(HEAD_DIM)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_rope_freq_base(spec.rope_freq_base)
    writer.add_layer_norm_rms_eps(spec.rms_eps)
    if spec.sliding_window:
        writer.add_sliding_window(spec.sliding_window)
        # Raw key: gguf releases before 0.17 have no helper for it.
        writer.add_uint32(f"{arch}.attention.sliding_window_pattern", spec.swa_pattern)
    if spec.ffn.startswith("moe"):
        writer.add_expert_count(N_EXPERT)
        writer.add_expert_used_count(N_EXPERT_USED)
        writer.add_expert_feed_forward_length(N_FF_EXPERT)
    for key, value in spec.extra_hparams:
        if isinstance(value, float):
            writer.add_float32(f"{arch}.{key}", value)
        else:
            writer.add_uint32(f"{arch}.{key}", value)


def _mamba_layer_tensors(rng: np.random.Generator) -> Iterator[tuple[str, np.ndarray]]:
    """One Mamba block, shaped as llama_model_mamba::load_arch_tensors creates it."""
    d_inner, d_state = MAMBA_D_INNER, MAMBA_D_STATE
    yield "attn_norm.weight", _norm(rng, N_EMBD)
    yield "ssm_in.weight", _matrix(rng, 2 * d_inner, N_EMBD)
    # ggml's ssm_conv and ssm_scan read the conv kernel, A and D as F32 only.
    yield "ssm_conv1d.weight", _matrix(rng, d_inner, MAMBA_D_CONV).astype(np.float32)
    yield "ssm_conv1d.bias", _bias(rng, d_inner)
    yield "ssm_x.weight", _matrix(rng, MAMBA_DT_RANK + 2 * d_state, d_inner)
    yield "ssm_dt.weight", _matrix(rng, d_inner, MAMBA_DT_RANK)
    yield "ssm_dt.bias", _bias(rng, d_inner)
    # Converters store A = -exp(A_log): negative, so the state decays instead of blowing up.
    yield "ssm_a", -np.tile(np.arange(1, d_state + 1, dtype=np.float32), (d_inner, 1))
    yield "ssm_d", _norm(rng, d_inner)
    yield "ssm_out.weight", _matrix(rng, N_EMBD, d_inner)


def _mamba_tensors(n_layer: int, n_vocab: int, rng: np.random.Generator) -> Iterator[tuple[str, np.ndarray]]:
    yield "token_embd.weight", _matrix(rng, n_vocab, N_EMBD)
    for il in range(n_layer):
        for name, data in _mamba_layer_tensors(rng):
            yield f"blk.{il}.{name}", data
    yield "output_norm.weight", _norm(rng, N_EMBD)


def _add_mamba_hparams(writer: gguf.GGUFWriter, n_layer: int) -> None:
    writer.add_name("tiny-mamba")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(n_layer)
    # As real Mamba files do: no FFN and no attention heads.
    writer.add_feed_forward_length(0)
    writer.add_head_count(0)
    writer.add_layer_norm_rms_eps(MAMBA_RMS_EPS)
    writer.add_uint32("mamba.ssm.conv_kernel", MAMBA_D_CONV)
    writer.add_uint32("mamba.ssm.inner_size", MAMBA_D_INNER)
    writer.add_uint32("mamba.ssm.state_size", MAMBA_D_STATE)
    writer.add_uint32("mamba.ssm.time_step_rank", MAMBA_DT_RANK)


def _add_tokenizer(writer: gguf.GGUFWriter, vocab: Vocab, chat: ChatFormat) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(TOKENIZER_PRE)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    writer.add_bos_token_id(vocab.id_of(chat.bos))
    writer.add_eos_token_id(vocab.id_of(chat.eos))
    writer.add_eot_token_id(vocab.id_of(chat.end_of_turn))
    writer.add_add_bos_token(chat.add_bos)
    writer.add_add_eos_token(False)
    writer.add_chat_template(chat.template)


def write_tiny_gguf(
    arch: str,
    path: str | pathlib.Path,
    *,
    seed: int = 0,
    n_layer: int | None = None,
) -> pathlib.Path:
    """Write a tiny random-weight GGUF model of ``arch`` to ``path``.

    The same ``arch``, ``seed`` and ``n_layer`` always produce the same bytes.
    ``n_layer`` defaults to 4 (6 for gemma3, giving five sliding-window layers
    and one global layer; gemma3 makes every sixth layer global, so fewer
    than six layers are all sliding-window; gemma2 and gpt-oss alternate).
    ``arch`` may also be one of RECURRENT_ARCHITECTURES.  Returns ``path`` as a
    ``pathlib.Path``.
    """
    if arch not in ARCH_SPECS and arch not in RECURRENT_ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHITECTURES + RECURRENT_ARCHITECTURES}")
    recurrent = arch in RECURRENT_ARCHITECTURES
    n_layer = (DEFAULT_N_LAYER if recurrent else ARCH_SPECS[arch].default_n_layer) if n_layer is None else n_layer
    if n_layer < 1:
        raise ValueError(f"n_layer must be at least 1, got {n_layer}")

    path = pathlib.Path(path)
    chat = MAMBA_CHAT if recurrent else ARCH_SPECS[arch].chat
    vocab = build_vocab(chat)
    rng = np.random.default_rng(seed)

    writer = gguf.GGUFWriter(path, arch)
    if recurrent:
        _add_mamba_hparams(writer, n_layer)
        tensors = _mamba_tensors(n_layer, len(vocab.tokens), rng)
    else:
        _add_hparams(writer, arch, n_layer)
        tensors = _tensors(arch, n_layer, len(vocab.tokens), rng)
    _add_tokenizer(writer, vocab, chat)
    for name, data in tensors:
        writer.add_tensor(name, data)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Write tiny random-weight GGUF models for tests.")
    parser.add_argument(
        "arch", nargs="?", choices=ARCHITECTURES + RECURRENT_ARCHITECTURES, help="architecture to write"
    )
    parser.add_argument("out", nargs="?", type=pathlib.Path, help="output .gguf path")
    parser.add_argument(
        "--all", metavar="OUTDIR", type=pathlib.Path, help="write OUTDIR/tiny-<arch>.gguf for every architecture"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-layer", type=int, default=None)
    args = parser.parse_args(argv)
    single = args.arch is not None and args.out is not None
    if args.all is None and not single:
        parser.error("give ARCH OUT.gguf, or --all OUTDIR")
    if args.all is not None and args.arch is not None:
        parser.error("--all takes no ARCH or OUT.gguf")
    return args


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    if args.all is not None:
        args.all.mkdir(parents=True, exist_ok=True)
        jobs = [(arch, args.all / f"tiny-{arch}.gguf") for arch in ARCHITECTURES]
    else:
        jobs = [(args.arch, args.out)]
    for arch, out in jobs:
        written = write_tiny_gguf(arch, out, seed=args.seed, n_layer=args.n_layer)
        print(f"{written} ({written.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
