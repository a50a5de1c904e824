"""pykvd's C API (llama-kvd.h) from cffi in ABI mode: no compiler, only the installed headers and libllama.

cffi's cdef takes no preprocessor lines, so the declarations are cut out of the installed headers' own text:
llama-kvd.h whole (without its preprocessor lines and LLAMA_API), and from llama.h and the ggml headers the
typedefs, enums, structs and functions the calls need, by name. Structs passed by value must match the ABI
exactly: their sizes and offsets are compared with the C compiler's (when there is one) and the default
params must come back with llama.cpp's defaults. Then SmolLM2 runs a capture (P1), a refill (P2) and an
ephemeral decode (P4) through the C API, compared bit for bit with plain llama_decode.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pykvd import paths

cffi = pytest.importorskip("cffi")

# Only used through pointers: a forward declaration is all cffi needs.
OPAQUE_STRUCTS = [
    "ggml_tensor",
    "ggml_backend_device",
    "llama_vocab",
    "llama_model",
    "llama_context",
    "llama_sampler",
    "llama_memory_i",
    "llama_model_kv_override",
    "llama_model_tensor_buft_override",
    "llama_sampler_seq_config",
]
# Cut from the headers by name, in dependency order.
GGML_TYPES = {
    "ggml.h": ["ggml_type", "ggml_abort_callback"],
    "ggml-backend.h": ["ggml_backend_dev_t", "ggml_backend_sched_eval_callback"],
}
LLAMA_TYPES = [
    "llama_memory_t",
    "llama_pos",
    "llama_token",
    "llama_seq_id",
    "llama_progress_callback",
    "llama_split_mode",
    "llama_load_mode",
    "llama_lazy_mode",
    "llama_context_type",
    "llama_rope_scaling_type",
    "llama_pooling_type",
    "llama_attention_type",
    "llama_flash_attn_type",
    "llama_batch",
    "llama_model_params",
    "llama_context_params",
]
LLAMA_FUNCTIONS = [
    "llama_backend_init",
    "llama_backend_free",
    "llama_model_default_params",
    "llama_context_default_params",
    "llama_model_load_from_file",
    "llama_model_free",
    "llama_init_from_model",
    "llama_free",
    "llama_model_get_vocab",
    "llama_model_n_layer",
    "llama_model_n_embd",
    "llama_vocab_n_tokens",
    "llama_n_ctx",
    "llama_tokenize",
    "llama_decode",
    "llama_get_logits_ith",
    "llama_get_memory",
    "llama_memory_seq_rm",
]
# Passed or returned by value: their layout must be the compiler's, field by field.
BY_VALUE_STRUCTS = [
    "llama_batch",
    "llama_model_params",
    "llama_context_params",
    "llama_kvd_layer_info",
    "llama_kvd_memory",
    "llama_kvd_ephemeral_params",
]

PROMPT = b"The quick brown fox jumps over the lazy dog, and the quick brown fox runs away."
EVICTED = [2, 3, 4, 5]  # positions evicted and brought back
N_CTX = 256  # llama.cpp allocates contexts in steps of 256 cells, so this one is exact


# -- declarations from the installed headers ---------------------------------------------------------


def header(name: str) -> str:
    """A header's text without comments and preprocessor lines (and the C++ extern block they open)."""
    text = (paths.include_dir() / name).read_text()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"#ifdef __cplusplus.*?#endif", "", text, flags=re.S)
    return re.sub(r"^\s*#[^\n]*$", "", text, flags=re.M)


def cut_type(text: str, name: str) -> str:
    """The definition of a struct, enum or typedef called ``name``."""
    block = re.search(rf"(?:typedef\s+)?(?:struct|enum)\s+{name}\s*\{{", text)
    if block:
        close = closing_brace(text, block.end() - 1)
        return text[block.start() : text.index(";", close) + 1]  # through "} typedef_name;" if there is one
    typedef = re.search(rf"typedef[^;{{}}]*\b{name}\b[^;{{}}]*;", text)
    if typedef is None:
        raise LookupError(f"no definition of {name} in the installed headers")
    return typedef.group(0)


def closing_brace(text: str, opening: int) -> int:
    depth = 0
    for i in range(opening, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return i
    raise ValueError("unbalanced braces")


def cut_function(text: str, name: str) -> str:
    """The prototype of an LLAMA_API function (deprecated ones, wrapped in a macro, never match)."""
    found = re.search(rf"LLAMA_API\s+([^;{{}}]*?\b{name}\s*\([^;]*?\)\s*;)", text)
    if found is None:
        raise LookupError(f"no declaration of {name} in llama.h")
    return found.group(1)


def kvd_cdef() -> str:
    parts = [f"struct {name};" for name in OPAQUE_STRUCTS]
    for file, names in GGML_TYPES.items():
        parts += [cut_type(header(file), name) for name in names]
    llama = header("llama.h")
    parts += [cut_type(llama, name) for name in LLAMA_TYPES]
    parts += [cut_function(llama, name) for name in LLAMA_FUNCTIONS]
    parts.append(header("llama-kvd.h").replace("LLAMA_API", ""))
    return "\n".join(parts)


def libllama():
    """The bundled libllama (libllama.so, .dylib or llama.dll)."""
    found = sorted(p for p in paths.lib_dir().iterdir() if re.fullmatch(r"(lib)?llama\.(so|dylib|dll)", p.name))
    assert found, f"no libllama in {paths.lib_dir()}"
    return found[0]


@pytest.fixture(scope="module")
def ffi():
    ffi = cffi.FFI()
    ffi.cdef(kvd_cdef())
    return ffi


@pytest.fixture(scope="module")
def lib(ffi):
    lib = ffi.dlopen(str(libllama()))
    lib.llama_backend_init()
    yield lib
    lib.llama_backend_free()


# -- the ABI ---------------------------------------------------------------------------------------


def test_the_whole_kvd_header_is_declared(ffi, lib):
    kvd = header("llama-kvd.h")
    for name in re.findall(r"LLAMA_API[^;(]*?\b(llama_kvd_\w+)\s*\(", kvd):
        assert callable(getattr(lib, name)), name
    assert lib.LLAMA_KVD_NO_ROOM == -2 and lib.LLAMA_KVD_NOT_HELD == -7


def test_structs_passed_by_value_have_the_compilers_layout(ffi, tmp_path):
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to compare with")
    lines = []
    for struct in BY_VALUE_STRUCTS:
        lines.append(f'printf("{struct} %zu\\n", sizeof(struct {struct}));')
        for field, _ in ffi.typeof(f"struct {struct}").fields:
            lines.append(f'printf("{struct}.{field} %zu\\n", offsetof(struct {struct}, {field}));')
    source = tmp_path / "layout.c"
    includes = '#include <stddef.h>\n#include <stdio.h>\n#include "llama-kvd.h"\n'
    source.write_text(includes + "int main(void) {\n" + "\n".join(lines) + "\nreturn 0;\n}\n")
    binary = tmp_path / "layout"
    command = [compiler, "-std=c11", str(source), "-I", str(paths.include_dir()), "-o", str(binary)]
    subprocess.run(command, check=True, capture_output=True)
    printed = subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout
    compiled = dict(line.split() for line in printed.splitlines())
    ours = {}
    for struct in BY_VALUE_STRUCTS:
        ours[struct] = str(ffi.sizeof(f"struct {struct}"))
        for field, _ in ffi.typeof(f"struct {struct}").fields:
            ours[f"{struct}.{field}"] = str(ffi.offsetof(f"struct {struct}", field))
    assert ours == compiled
    assert len(compiled) == len(ours) > 60  # six sizes and every field offset


def test_default_params_come_back_by_value_with_llama_cpps_defaults(ffi, lib):
    context = lib.llama_context_default_params()
    # The first fields, and the last ones: a wrong size or offset anywhere shows here.
    assert (context.n_ctx, context.n_batch, context.n_ubatch, context.n_seq_max) == (512, 2048, 512, 1)
    assert context.flash_attn_type == lib.LLAMA_FLASH_ATTN_TYPE_AUTO and context.yarn_ext_factor == -1.0
    assert (context.type_k, context.type_v) == (lib.GGML_TYPE_F16, lib.GGML_TYPE_F16)
    assert (context.offload_kqv, context.op_offload, context.swa_full, context.kv_unified) == (True, True, True, False)
    assert context.samplers == ffi.NULL and context.n_samplers == 0 and context.ctx_other == ffi.NULL
    model = lib.llama_model_default_params()
    assert (model.n_gpu_layers, model.split_mode, model.main_gpu) == (-1, lib.LLAMA_SPLIT_MODE_LAYER, 0)
    assert (model.vocab_only, model.use_extra_bufts, model.no_alloc, model.load_mtp) == (False, True, False, False)
    ephemeral = lib.llama_kvd_ephemeral_default_params()
    assert ephemeral.size == ffi.sizeof("struct llama_kvd_ephemeral_params") and ephemeral.n_eph_h == -1


def test_architecture_queries(ffi, lib):
    names = []
    table = lib.llama_kvd_architectures()
    while table[len(names)] != ffi.NULL:
        names.append(ffi.string(table[len(names)]).decode())
    assert {"llama", "gemma3"} <= set(names)
    assert lib.llama_kvd_arch_unsupported_reason(b"llama") == ffi.NULL
    assert lib.llama_kvd_arch_known(b"mamba") and lib.llama_kvd_arch_unsupported_reason(b"mamba") != ffi.NULL
    assert not lib.llama_kvd_arch_known(b"no-such-architecture")


# -- SmolLM2 through the C API ---------------------------------------------------------------------------


class Llm:
    """SmolLM2 loaded through cffi, with the helpers the tests share; arrays passed to C are kept alive here."""

    def __init__(self, ffi, lib, path):
        self.ffi, self.lib = ffi, lib
        params = lib.llama_model_default_params()
        params.n_gpu_layers = 0
        params.use_extra_bufts = False  # no repacked weights, as the exact profile loads SmolLM2
        self.model = lib.llama_model_load_from_file(str(path).encode(), params)
        assert self.model != ffi.NULL
        self.vocab = lib.llama_model_get_vocab(self.model)
        self.n_layer = lib.llama_model_n_layer(self.model)
        self.n_embd = lib.llama_model_n_embd(self.model)
        self.n_vocab = lib.llama_vocab_n_tokens(self.vocab)
        self.prompt = self.tokenize(PROMPT)

    def close(self) -> None:
        self.lib.llama_model_free(self.model)

    def tokenize(self, text: bytes) -> list[int]:
        out = self.ffi.new("llama_token[]", len(text) + 8)
        n = self.lib.llama_tokenize(self.vocab, text, len(text), out, len(out), True, False)
        assert n > 0
        return list(out[0:n])

    def context(self):
        params = self.lib.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = N_CTX
        params.n_threads = params.n_threads_batch = 2
        params.flash_attn_type = self.lib.LLAMA_FLASH_ATTN_TYPE_ENABLED  # as the exact profile
        ctx = self.lib.llama_init_from_model(self.model, params)
        assert ctx != self.ffi.NULL
        # the exact profile: batching must not change results
        assert self.lib.llama_kvd_set_batch_invariant(ctx, True) == self.lib.LLAMA_KVD_OK
        return ctx

    def decode(self, ctx, tokens: list[int], pos0: int, every_output: bool = False) -> None:
        """llama_decode of tokens at pos0.. in sequence 0; logits for the last (or every) token."""
        ffi, n = self.ffi, len(tokens)
        seq = ffi.new("llama_seq_id[1]", [0])
        arrays = {
            "token": ffi.new("llama_token[]", tokens),
            "pos": ffi.new("llama_pos[]", list(range(pos0, pos0 + n))),
            "n_seq_id": ffi.new("int32_t[]", [1] * n),
            "seq_id": ffi.new("llama_seq_id *[]", [seq] * n),
            "logits": ffi.new("int8_t[]", [1 if every_output or i == n - 1 else 0 for i in range(n)]),
        }
        batch = ffi.new("struct llama_batch *", {"n_tokens": n, "embd": ffi.NULL, **arrays})
        assert self.lib.llama_decode(ctx, batch[0]) == 0

    def last_logits(self, ctx) -> np.ndarray:
        return self.floats(self.lib.llama_get_logits_ith(ctx, -1), self.n_vocab)

    def floats(self, pointer, n: int) -> np.ndarray:
        assert pointer != self.ffi.NULL
        return np.frombuffer(self.ffi.buffer(pointer, 4 * n), dtype=np.float32).copy()

    def read_kv(self, ctx, layer: int, pos: int) -> tuple[int, np.ndarray]:
        """(status, K and V rows of the layer at pos, joined)."""
        info = self.layer_info(layer)
        k = self.ffi.new("float[]", info.n_embd_k_gqa)
        v = self.ffi.new("float[]", info.n_embd_v_gqa)
        status = self.lib.llama_kvd_read_kv(ctx, layer, 0, pos, k, v)
        rows = np.concatenate([self.floats(k, info.n_embd_k_gqa), self.floats(v, info.n_embd_v_gqa)])
        return status, rows

    def layer_info(self, layer: int):
        info = self.ffi.new("struct llama_kvd_layer_info *")
        assert self.lib.llama_kvd_model_layer_info(self.model, layer, info) == self.lib.LLAMA_KVD_OK
        return info

    def prefill_capturing(self, ctx, layers) -> dict[int, np.ndarray]:
        """Decode the prompt with residual capture on: {layer: [n_tokens, n_embd] float32}."""
        for layer in layers:
            assert self.lib.llama_kvd_capture_layer(ctx, layer, True) == self.lib.LLAMA_KVD_OK
        self.decode(ctx, self.prompt, 0, every_output=True)  # h^(n_layer) exists only for output rows
        n = len(self.prompt)
        captured = {
            layer: self.floats(self.lib.llama_kvd_captured(ctx, layer), n * self.n_embd).reshape(n, self.n_embd)
            for layer in layers
        }
        for layer in layers:
            self.lib.llama_kvd_capture_layer(ctx, layer, False)
        return captured

    def evict(self, ctx, positions: list[int]) -> None:
        memory = self.lib.llama_get_memory(ctx)
        assert self.lib.llama_memory_seq_rm(memory, 0, positions[0], positions[-1] + 1)


@pytest.fixture(scope="module")
def llm(ffi, lib, smollm2_path):
    llm = Llm(ffi, lib, smollm2_path)
    yield llm
    llm.close()


@pytest.fixture
def ctx(llm):
    ctx = llm.context()
    yield ctx
    llm.lib.llama_free(ctx)


@pytest.fixture(scope="module")
def next_logits(llm):
    """The logits after the prompt and one more token, from plain llama_decode over a full cache."""
    ctx = llm.context()
    try:
        llm.decode(ctx, llm.prompt, 0)
        llm.decode(ctx, [llm.prompt[0]], len(llm.prompt))
        return llm.last_logits(ctx)
    finally:
        llm.lib.llama_free(ctx)


def test_memory_and_layer_info(llm, ctx):
    memory = llm.ffi.new("struct llama_kvd_memory *")
    assert llm.lib.llama_kvd_context_memory(ctx, memory) == llm.lib.LLAMA_KVD_OK
    # F16 K and V rows of every layer, for every cell.
    per_cell = sum(2 * (llm.layer_info(i).n_embd_k_gqa + llm.layer_info(i).n_embd_v_gqa) for i in range(llm.n_layer))
    assert memory.context == N_CTX * per_cell == N_CTX * 23040
    assert memory.model > 50_000_000 and memory.compute > 0
    info = llm.layer_info(0)
    assert (info.n_head, info.n_head_kv, info.n_embd_head_k, info.is_swa, info.has_kv) == (9, 3, 64, False, True)
    assert llm.lib.llama_kvd_model_layer_info(llm.model, llm.n_layer, info) == llm.lib.LLAMA_KVD_BAD_ARGUMENT


def test_capture_gives_finite_residual_rows_and_leaves_the_output_alone(llm, ctx, next_logits):
    layers = list(range(llm.n_layer + 1))
    captured = llm.prefill_capturing(ctx, layers)
    n = len(llm.prompt)
    for layer in layers:
        assert captured[layer].shape == (n, llm.n_embd) and np.isfinite(captured[layer]).all()
    # h^(0) is the token embedding: one row per id, wherever it stands; deeper rows depend on the context.
    first, again = next((i, j) for j in range(n) for i in range(j) if llm.prompt[i] == llm.prompt[j])
    assert np.array_equal(captured[0][first], captured[0][again])
    assert not np.array_equal(captured[1][first], captured[1][again])
    llm.decode(ctx, [llm.prompt[0]], n)  # capture is off now: the same logits as a plain context
    assert np.array_equal(llm.last_logits(ctx), next_logits)


def test_refill_rebuilds_evicted_kv_bit_for_bit(llm, ctx, next_logits):
    layers = list(range(llm.n_layer))
    captured = llm.prefill_capturing(ctx, layers)
    original = {(layer, pos): llm.read_kv(ctx, layer, pos)[1] for layer in layers for pos in EVICTED}
    llm.evict(ctx, EVICTED)
    assert llm.read_kv(ctx, 0, EVICTED[0])[0] == llm.lib.LLAMA_KVD_NOT_HELD
    # One block per layer of [positions, n_embd] rows, block l holding h^(l).
    h = np.ascontiguousarray(np.stack([captured[layer][EVICTED] for layer in layers]), dtype=np.float32)
    pos = llm.ffi.new("llama_pos[]", EVICTED)
    rows = llm.ffi.cast("const float *", llm.ffi.from_buffer(h))
    status = llm.lib.llama_kvd_refill(ctx, 0, pos, len(EVICTED), 0, llm.n_layer, rows)
    assert status == llm.lib.LLAMA_KVD_OK
    for (layer, position), kv in original.items():
        status, refilled = llm.read_kv(ctx, layer, position)
        assert status == llm.lib.LLAMA_KVD_OK and np.array_equal(refilled, kv), (layer, position)
    llm.decode(ctx, [llm.prompt[0]], len(llm.prompt))  # and the model reads them as before
    assert np.array_equal(llm.last_logits(ctx), next_logits)


def ephemeral_decode(llm, ctx, residuals: np.ndarray | None, evicted: list[int] = EVICTED) -> tuple[int, np.ndarray]:
    """P4: (status, logits of) the next token after the prompt while the evicted positions join attention
    without cells, re-run from their ids, or entering from their residuals h^(0..n_layer-1) if given."""
    ffi, n = llm.ffi, len(llm.prompt)
    params = ffi.new("struct llama_kvd_ephemeral_params *")
    params[0] = llm.lib.llama_kvd_ephemeral_default_params()  # sets size, and n_eph_h to "all or none"
    keep = {
        "tokens": ffi.new("llama_token[]", [llm.prompt[0]]),
        "pos": ffi.new("llama_pos[]", [n]),
        "eph_pos": ffi.new("llama_pos[]", evicted),
        "eph_tokens": ffi.new("llama_token[]", [llm.prompt[p] for p in evicted]),
        "logits_out": ffi.new("float[]", llm.n_vocab),
    }
    params.tokens, params.pos, params.n_tokens = keep["tokens"], keep["pos"], 1
    params.eph_pos, params.eph_tokens, params.n_eph = keep["eph_pos"], keep["eph_tokens"], len(evicted)
    params.logits_out = keep["logits_out"]
    if residuals is not None:
        params.eph_h = ffi.cast("const float *", ffi.from_buffer(residuals))
        params.n_eph_h = len(evicted)
    status = llm.lib.llama_kvd_decode_ephemeral(ctx, params)
    if status == llm.lib.LLAMA_KVD_OK:
        llm.evict(ctx, [n])  # the new token took a cell; free it for the next decode at this position
    return status, llm.floats(keep["logits_out"], llm.n_vocab)


def test_ephemeral_decode_equals_a_full_cache_decode_bit_for_bit(llm, ctx, next_logits):
    layers = list(range(llm.n_layer))
    captured = llm.prefill_capturing(ctx, layers)
    own_logits = llm.last_logits(ctx)
    llm.evict(ctx, EVICTED)
    # Every evicted position must take part: leaving one out is refused, not silently attended without.
    assert ephemeral_decode(llm, ctx, None, EVICTED[:-1])[0] == llm.lib.LLAMA_KVD_MISSING_POSITION
    status, from_ids = ephemeral_decode(llm, ctx, None)
    assert status == llm.lib.LLAMA_KVD_OK and np.array_equal(from_ids, next_logits)
    residuals = np.ascontiguousarray(np.stack([captured[layer][EVICTED] for layer in layers]), dtype=np.float32)
    status, from_residuals = ephemeral_decode(llm, ctx, residuals)
    assert status == llm.lib.LLAMA_KVD_OK and np.array_equal(from_residuals, next_logits)
    assert np.array_equal(llm.last_logits(ctx), own_logits)  # the context's own logits are untouched
    assert llm.read_kv(ctx, 0, EVICTED[0])[0] == llm.lib.LLAMA_KVD_NOT_HELD  # and no cell was taken


def test_bad_arguments_are_statuses_not_crashes(llm, ctx):
    pos = llm.ffi.new("llama_pos[]", [0])
    h = llm.ffi.new("float[]", llm.n_embd)
    assert llm.lib.llama_kvd_refill(llm.ffi.NULL, 0, pos, 1, 0, 1, h) == llm.lib.LLAMA_KVD_BAD_ARGUMENT
    assert llm.lib.llama_kvd_refill(ctx, 0, pos, 1, 0, llm.n_layer + 1, h) == llm.lib.LLAMA_KVD_BAD_ARGUMENT
    assert llm.lib.llama_kvd_capture_layer(ctx, llm.n_layer + 1, True) == llm.lib.LLAMA_KVD_BAD_ARGUMENT
    assert llm.read_kv(ctx, 0, 0)[0] == llm.lib.LLAMA_KVD_NOT_HELD  # nothing decoded yet


# Run in a child: if it aborts, only the child dies.
UNCAPTURED_LAYER = """
import sys
sys.path.insert(0, {tests!r})
import cffi
import test_cffi as t
ffi = cffi.FFI()
ffi.cdef(t.kvd_cdef())
lib = ffi.dlopen(str(t.libllama()))
lib.llama_backend_init()
llm = t.Llm(ffi, lib, {path!r})
print(lib.llama_kvd_captured(llm.context(), 0) == ffi.NULL)
"""


def test_captured_is_null_for_a_layer_that_was_not_captured(smollm2_path):
    script = UNCAPTURED_LAYER.format(tests=str(Path(__file__).resolve().parent), path=str(smollm2_path))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert (result.returncode, result.stdout.strip()) == (0, "True"), result.stderr[-1000:]
