"""Random-weight llama models of a realistic size, in one ggml weight type.

The tiny models of synthetic.py have 64-wide layers: right for testing every
architecture, far too small to say anything about kernel speed. This module
writes a llama-architecture model of about 100M parameters (12 layers, 768
wide, GQA 12/4 heads, SwiGLU 3072) whose every matrix is stored in one ggml
type (F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K, ...), so a benchmark measures the
kernels of exactly that type. Quantization is ggml's own
(``ggml_quantize_chunk`` of the bundled libggml-base), so the blocks are what
llama-quantize would write. Norms stay F32, as in real files.

Usage::

    write_sized_gguf("q4_k", "llama-100m-q4_k.gguf")
    python models/sized.py q4_k llama-100m-q4_k.gguf
"""

from __future__ import annotations

import argparse
import ctypes
import pathlib
from collections.abc import Iterator
from dataclasses import dataclass

import gguf
import numpy as np

import synthetic
from pykvd import paths


@dataclass(frozen=True)
class Dims:
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_head_kv: int = 4
    n_ff: int = 3072
    context_length: int = 4096

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


WEIGHT_STD = 0.02
# GGUF's file-type field for a file whose matrices are all of one type.
FILE_TYPES = {
    "F16": gguf.LlamaFileType.MOSTLY_F16,
    "BF16": gguf.LlamaFileType.MOSTLY_BF16,
    "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
    "Q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
    "Q5_0": gguf.LlamaFileType.MOSTLY_Q5_0,
    "Q4_K": gguf.LlamaFileType.MOSTLY_Q4_K_M,
    "Q5_K": gguf.LlamaFileType.MOSTLY_Q5_K_M,
    "Q6_K": gguf.LlamaFileType.MOSTLY_Q6_K,
}
WEIGHT_TYPES = tuple(FILE_TYPES)


def _ggml() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(paths.lib_dir() / "libggml-base.so"))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
    ]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    return lib


def quantize(lib: ctypes.CDLL, weights: np.ndarray, type_name: str) -> np.ndarray:
    """``weights`` (rows, cols) float32 as ggml stores them in ``type_name``: (rows, row bytes) uint8."""
    if type_name == "F16":
        return weights.astype(np.float16)
    qtype = int(gguf.GGMLQuantizationType[type_name])
    rows, cols = weights.shape
    src = np.ascontiguousarray(weights, dtype=np.float32)
    out = np.empty((rows, lib.ggml_row_size(qtype, cols)), dtype=np.uint8)
    lib.ggml_quantize_chunk(qtype, src.ctypes.data, out.ctypes.data, 0, rows, cols, None)
    return out


def _matrices(dims: Dims, n_vocab: int, rng: np.random.Generator) -> Iterator[tuple[str, tuple[int, int]]]:
    n_kv = dims.n_head_kv * dims.head_dim
    yield "token_embd.weight", (n_vocab, dims.n_embd)
    for il in range(dims.n_layer):
        for name, shape in (
            ("attn_q", (dims.n_embd, dims.n_embd)),
            ("attn_k", (n_kv, dims.n_embd)),
            ("attn_v", (n_kv, dims.n_embd)),
            ("attn_output", (dims.n_embd, dims.n_embd)),
            ("ffn_gate", (dims.n_ff, dims.n_embd)),
            ("ffn_up", (dims.n_ff, dims.n_embd)),
            ("ffn_down", (dims.n_embd, dims.n_ff)),
        ):
            yield f"blk.{il}.{name}.weight", shape
    yield "output.weight", (n_vocab, dims.n_embd)


def _add_hparams(writer: gguf.GGUFWriter, dims: Dims, type_name: str) -> None:
    writer.add_name(f"llama-{type_name.lower()}-sized")
    writer.add_file_type(FILE_TYPES[type_name])
    writer.add_context_length(dims.context_length)
    writer.add_embedding_length(dims.n_embd)
    writer.add_block_count(dims.n_layer)
    writer.add_feed_forward_length(dims.n_ff)
    writer.add_head_count(dims.n_head)
    writer.add_head_count_kv(dims.n_head_kv)
    writer.add_rope_dimension_count(dims.head_dim)
    writer.add_rope_freq_base(500000.0)
    writer.add_layer_norm_rms_eps(1e-5)


def write_sized_gguf(type_name: str, path: str | pathlib.Path, *, seed: int = 0, dims: Dims = Dims()) -> pathlib.Path:
    """Write a random llama model whose matrices are all ``type_name``; returns ``path``."""
    type_name = type_name.upper()
    if type_name not in FILE_TYPES:
        raise ValueError(f"unknown weight type {type_name!r}; expected one of {WEIGHT_TYPES}")
    path = pathlib.Path(path)
    chat = synthetic.LLAMA3_CHAT
    vocab = synthetic.build_vocab(chat)
    rng = np.random.default_rng(seed)
    lib = _ggml()

    writer = gguf.GGUFWriter(path, "llama")
    _add_hparams(writer, dims, type_name)
    synthetic._add_tokenizer(writer, vocab, chat)
    for name, (rows, cols) in _matrices(dims, len(vocab.tokens), rng):
        weights = rng.standard_normal((rows, cols), dtype=np.float32) * WEIGHT_STD
        data = quantize(lib, weights, type_name)
        raw_dtype = None if type_name == "F16" else gguf.GGMLQuantizationType[type_name]
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    for il in range(dims.n_layer):
        writer.add_tensor(f"blk.{il}.attn_norm.weight", np.ones(dims.n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{il}.ffn_norm.weight", np.ones(dims.n_embd, dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(dims.n_embd, dtype=np.float32))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a ~100M-parameter random llama model in one weight type.")
    parser.add_argument("type", type=str.upper, choices=WEIGHT_TYPES)
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    written = write_sized_gguf(args.type, args.out, seed=args.seed)
    print(f"{written} ({written.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
