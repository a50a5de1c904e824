"""Model files that make llama.cpp abort, crash or hang: each is refused with a pykvd exception.

Every mutant is a synthetic model (models/synthetic.py) with one change, made by rewriting it with
gguf.GGUFWriter or by editing it in place. The cheap header checks (pykvd.model_checks) must name the
fault; the child-process probe (pykvd.probe) must survive what the checks let through, and its verdict
cache must spare a second probe.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import struct
import time

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT

import pykvd
from pykvd import InvalidModelError, PykvdError
from pykvd import probe as probe_module
from pykvd.errors import ArgumentError
from pykvd.gguf_file import read_header
from pykvd.probe import LoadParams, Verdict, VerdictCache, ensure_loadable, run_probe

PROMPT = "Hello world, the cat is sitting on the mat."
U32, F32, STR, ARR = VT.UINT32, VT.FLOAT32, VT.STRING, VT.ARRAY


# -- making mutants ----------------------------------------------------------------


def rewrite(src, dst, *, kv=None, drop=(), dtypes=None):
    """A copy of GGUF src with metadata kv (key -> (value, type[, item type])) set, the keys in drop removed
    and the tensors in dtypes (name -> ggml type) stored as that type (values converted, or zero bytes)."""
    kv, dtypes = kv or {}, dtypes or {}
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(dst, reader.fields["general.architecture"].contents())
    writer.kv_data[0].clear()
    for name, field in reader.fields.items():
        if not name.startswith("GGUF.") and name not in drop and name not in kv:
            item_type = field.types[1] if field.types[0] == ARR else None
            writer.add_key_value(name, field.contents(), field.types[0], item_type)
    for name, spec in kv.items():
        writer.add_key_value(name, *spec)
    for tensor in reader.tensors:
        shape = [int(n) for n in reversed(tensor.shape)]  # numpy order
        qtype = dtypes.get(tensor.name, tensor.tensor_type)
        data = np.array(tensor.data) if qtype == tensor.tensor_type else _converted(tensor, qtype, shape)
        writer.add_tensor(tensor.name, data, raw_shape=shape, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def _converted(tensor, qtype, shape):
    numeric = {
        QT.F32: np.float32,
        QT.F16: np.float16,
        QT.F64: np.float64,
        QT.I8: np.int8,
        QT.I16: np.int16,
        QT.I32: np.int32,
        QT.I64: np.int64,
    }
    values = gguf.dequantize(tensor.data, tensor.tensor_type).reshape(shape)
    return values.astype(numeric[qtype])


def retype_in_place(src, dst, tensor_name: str, ggml_type: int):
    """A copy of src whose tensor's type id is overwritten (its data left as is: it must not grow)."""
    shutil.copy(src, dst)
    reader = gguf.GGUFReader(dst, "r+")
    tensor = next(t for t in reader.tensors if t.name == tensor_name)
    tensor.field.parts[4][...] = ggml_type
    reader.data.flush()
    del reader
    return dst


def tiny(tiny_dir, arch: str):
    return tiny_dir / f"tiny-{arch}.gguf"


def assert_refused(path, fragment: str, exception=InvalidModelError):
    """Model(path) raises `exception` naming `fragment`, before any child process or native load."""
    with pytest.raises(exception) as error:
        pykvd.Model(path)
    assert fragment in str(error.value)
    assert str(path) in str(error.value)
    return error.value


@pytest.fixture
def counted_probes(monkeypatch, tmp_path):
    """A private verdict cache, and a list that grows by one path per child process the probe starts."""
    monkeypatch.setenv("PYKVD_CACHE_DIR", str(tmp_path / "cache"))
    started = []
    real = probe_module.run_probe

    def counting(path, params, **kwargs):
        started.append(path)
        return real(path, params, **kwargs)

    monkeypatch.setattr(probe_module, "run_probe", counting)
    return started


# -- hyperparameters ---------------------------------------------------------------


@pytest.mark.parametrize(
    "arch, key, spec, fragment",
    [
        ("llama", "expert_count", (8, U32), "expert_count 8 on a dense model"),
        ("gemma3", "expert_count", (8, U32), "expert_count 8 on a dense model"),
        ("qwen2", "expert_used_count", (2, U32), "on a model with no experts"),
        ("qwen3", "expert_group_count", (2, U32), "on a model with no experts"),
        ("llama", "expert_count", (5000, U32), "exceeds llama.cpp's limit"),
        ("llama", "nextn_predict_layers", (9, U32), "nextn_predict_layers 9 exceeds"),
        ("llama", "rope.scaling.type", ("bogus", STR), "rope.scaling.type 'bogus'"),
        ("gemma3", "rope.scaling.type", ("", STR), "rope.scaling.type ''"),
        ("llama", "attention.layer_norm_rms_epsilon", (-1e-5, F32), "layer_norm_rms_epsilon must be a finite"),
        ("phi3", "attention.layer_norm_rms_epsilon", (math.nan, F32), "layer_norm_rms_epsilon must be a finite"),
        ("llama", "attention.head_count_kv", (3, U32), "head_count 4 is not a multiple of head_count_kv 3"),
        ("qwen3", "attention.head_count_kv", ([2, 0, 2, 2], ARR, U32), "head_count_kv is 0 for layer 1"),
        ("gemma3", "rope.dimension_count", (0, U32), "rope.dimension_count 0 must be even"),
        ("phi3", "rope.dimension_count", (0, U32), "rope.dimension_count 0 must be even"),
        ("gemma3", "rope.dimension_count", (1, U32), "rope.dimension_count 1 must be even"),
        ("phi3", "rope.dimension_count", (6, U32), None),  # legal: a partial rotary dimension
        ("gemma3", "rope.dimension_count", (15, U32), "rope.dimension_count 15 must be even"),
        ("gemma3", "rope.dimension_count", (32, U32), "between 2 and the head size 16"),
        ("qwen2", "rope.dimension_count", (8, U32), "must equal the head size 16"),
        ("gemma3", "attention.sliding_window_pattern", (1, U32), "sliding_window_pattern 1 leaves no"),
        ("llama", "context_length", (2**32 - 1, U32), "context_length 4294967295 is outside"),
        ("qwen2", "context_length", (2**31, U32), "context_length 2147483648 is outside"),
        ("llama", "block_count", ("four", STR), "block_count must be a non-negative integer"),
    ],
)
def test_bad_hyperparameters(tmp_path, tiny_dir, arch, key, spec, fragment):
    path = rewrite(tiny(tiny_dir, arch), tmp_path / "odd.gguf", kv={f"{arch}.{key}": spec})
    if fragment is None:
        with pykvd.Model(path) as model, model.session(n_ctx=64, n_threads=1) as s:
            assert len(s.generate(PROMPT, max_tokens=2, stop_at_eog=False).tokens) == 2
    else:
        assert_refused(path, fragment)


def test_key_length_inconsistent_with_the_fused_qkv(tmp_path, tiny_dir):
    # phi3 sizes attn_qkv by n_embd, so llama.cpp's own shape check passes and its graph asserts instead.
    path = rewrite(
        tiny(tiny_dir, "phi3"),
        tmp_path / "phi3.gguf",
        kv={"phi3.attention.key_length": (32, U32), "phi3.rope.dimension_count": (32, U32)},
    )
    assert_refused(path, "tensor 'blk.0.attn_qkv.weight' has shape [64, 128]")


def test_feed_forward_length_inconsistent_with_the_tensors(tmp_path, tiny_dir):
    path = rewrite(tiny(tiny_dir, "qwen3"), tmp_path / "ffn.gguf", kv={"qwen3.feed_forward_length": (96, U32)})
    assert_refused(path, "tensor 'blk.0.ffn_gate.weight' has shape [64, 128]")


# -- the container -------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ((1, U32), "not on a 32-byte boundary"),
        ((48, U32), "not a power of two"),
        (([32, 32], ARR, U32), "general.alignment must be a uint32"),
        ((math.inf, F32), "general.alignment must be a uint32"),
        ((math.nan, F32), "general.alignment must be a uint32"),
        (("32", STR), "general.alignment must be a uint32"),
    ],
)
def test_bad_alignment(tmp_path, tiny_llama_path, spec, fragment):
    path = rewrite(tiny_llama_path, tmp_path / "aligned.gguf", kv={"general.alignment": spec})
    assert_refused(path, fragment)


def test_a_legal_larger_alignment_loads(tmp_path, tiny_llama_path):
    path = rewrite(tiny_llama_path, tmp_path / "aligned.gguf", kv={"general.alignment": (64, U32)})
    with pykvd.Model(path) as model:
        assert model.info.n_layer == 4


def _with_extra_kv(src, dst, raw_kv: bytes):
    """A copy of src with one more metadata pair, given as its raw bytes, spliced in after the counts."""
    data = bytearray(src.read_bytes())
    n_kv = struct.unpack_from("<Q", data, 16)[0]
    struct.pack_into("<Q", data, 16, n_kv + 1)
    # The tensor data must stay aligned: pad the new pair with a string of the right length.
    dst.write_bytes(bytes(data[:24]) + raw_kv + bytes(data[24:]))
    return dst


def _gguf_string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def test_arrays_nested_thousands_deep(tmp_path, tiny_llama_path):
    depth = 5000
    nested = b"".join(struct.pack("<IQ", 9, 1) for _ in range(depth)) + struct.pack("<IQ", 4, 1) + b"\0" * 4
    path = _with_extra_kv(
        tiny_llama_path, tmp_path / "deep.gguf", _gguf_string(b"deep") + struct.pack("<I", 9) + nested
    )
    assert_refused(path, "holds an array of arrays")


def test_key_name_of_invalid_utf8(tmp_path, tiny_llama_path):
    raw = _gguf_string(b"general.\xff\xfename") + struct.pack("<I", 4) + struct.pack("<I", 7)
    path = _with_extra_kv(tiny_llama_path, tmp_path / "utf8.gguf", raw)
    assert_refused(path, "a metadata key name is not valid UTF-8")


def test_q8_1_blocks_are_36_bytes(tmp_path, tiny_llama_path):
    # A whole file whose last tensor is Q8_1: 4 blocks of 36 bytes, which a 40-byte table calls truncated.
    writer = gguf.GGUFWriter(tmp_path / "q8_1.gguf", "llama")
    writer.add_tensor("extra.weight", np.zeros(36, dtype=np.float32))  # 144 bytes, later retyped
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    path = tmp_path / "q8_1.gguf"
    reader = gguf.GGUFReader(path, "r+")
    field = reader.tensors[0].field
    field.parts[3][...] = 128  # elements: 4 blocks of 32
    field.parts[4][...] = int(QT.Q8_1)
    reader.data.flush()
    del reader
    header = read_header(path)
    assert header.tensors[0].nbytes == 144
    assert header.data_offset + 144 <= header.file_size


# -- tensors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch, tensor, qtype",
    [
        ("llama", "blk.0.attn_norm.weight", QT.F16),
        ("gemma3", "output_norm.weight", QT.F16),
        ("qwen2", "blk.1.attn_q.bias", QT.F16),
        ("llama", "token_embd.weight", QT.I8),
        ("qwen3", "token_embd.weight", QT.I32),
        ("llama", "blk.0.ffn_up.weight", QT.I8),
        ("gemma3", "blk.2.attn_q.weight", QT.I16),
        ("phi3", "blk.0.attn_qkv.weight", QT.I32),
        ("qwen2", "blk.0.ffn_down.weight", QT.I64),
        ("llama", "output.weight", QT.F64),
    ],
)
def test_tensor_of_a_type_ggml_cannot_use(tmp_path, tiny_dir, arch, tensor, qtype):
    path = rewrite(tiny(tiny_dir, arch), tmp_path / "typed.gguf", dtypes={tensor: qtype})
    assert_refused(path, f"tensor {tensor!r} is {qtype.name}")


@pytest.mark.parametrize("qtype", [QT.Q8_1, QT.Q8_K])
def test_matmul_weight_of_an_activation_only_quant_type(tmp_path, tiny_dir, qtype):
    # ffn_down has rows of 128 values: whole Q8_1 blocks (32); Q8_K needs 256, so the reader refuses it first.
    path = retype_in_place(tiny(tiny_dir, "llama"), tmp_path / "q8.gguf", "blk.0.ffn_down.weight", int(qtype))
    fragment = "is Q8_1" if qtype == QT.Q8_1 else "not a whole number of Q8_K blocks"
    assert_refused(path, fragment)


# -- tokenizer ----------------------------------------------------------------------------


def test_every_token_string_identical(tmp_path, tiny_llama_path):
    n_vocab = read_header(tiny_llama_path).arrays["tokenizer.ggml.tokens"].count
    path = rewrite(
        tiny_llama_path,
        tmp_path / "same.gguf",
        kv={"tokenizer.ggml.tokens": (["a"] * n_vocab, ARR, STR)},
        drop=("tokenizer.ggml.merges",),
    )
    assert_refused(path, "tokens 0 and 1 of tokenizer.ggml.tokens are both 'a'")


@pytest.mark.parametrize("kind", ["none", "no_vocab"])
def test_no_tokenizer(tmp_path, tiny_llama_path, kind):
    path = rewrite(tiny_llama_path, tmp_path / "none.gguf", kv={"tokenizer.ggml.model": (kind, STR)})
    assert_refused(path, f"tokenizer.ggml.model is {kind!r}")


def test_sentencepiece_tokenizer_on_a_bpe_vocabulary(tmp_path, tiny_dir):
    path = rewrite(tiny(tiny_dir, "gemma3"), tmp_path / "spm.gguf", kv={"tokenizer.ggml.model": ("llama", STR)})
    assert_refused(path, "needs a byte token such as <0x00> for every byte")


def test_chat_template_of_invalid_utf8(tmp_path, tiny_llama_path):
    path = rewrite(
        tiny_llama_path, tmp_path / "template.gguf", kv={"tokenizer.chat_template": (b"\xff\xfe{{ messages }}", STR)}
    )
    assert_refused(path, "metadata value tokenizer.chat_template is not valid UTF-8")


def test_real_models_pass_the_checks(smollm2_path, gemma3_path, tiny_dir):
    from pykvd.model_checks import check_header

    for path in (smollm2_path, gemma3_path, *sorted(tiny_dir.glob("*.gguf"))):
        check_header(read_header(path))


# -- the probe: what the checks let through ------------------------------------------------


def test_probe_survives_a_hang(tmp_path, tiny_dir):
    # rope.dimension_count 0 on gemma3 spins inside ggml_graph_compute forever (the GIL released).
    path = rewrite(tiny(tiny_dir, "gemma3"), tmp_path / "spin.gguf", kv={"gemma3.rope.dimension_count": (0, U32)})
    started = time.monotonic()
    verdict = run_probe(path, LoadParams(), timeout_s=8)
    assert time.monotonic() - started < 60
    assert verdict.kind == "timeout" and not verdict.ok
    assert "did not finish decoding a batch within 8 s" in verdict.message
    with pytest.raises(InvalidModelError, match="did not finish"):
        verdict.raise_if_bad()


@pytest.mark.parametrize(
    "kv, dtypes, signal_name, detail",
    [
        ({"llama.attention.layer_norm_rms_epsilon": (-1e-5, F32)}, None, "SIGABRT", "GGML_ASSERT(eps >= 0.0f)"),
        (None, {"blk.0.ffn_up.weight": QT.I32}, "SIGSEGV", ""),
    ],
)
def test_probe_survives_a_crash(tmp_path, tiny_llama_path, kv, dtypes, signal_name, detail):
    path = rewrite(tiny_llama_path, tmp_path / "crash.gguf", kv=kv, dtypes=dtypes)
    verdict = run_probe(path, LoadParams(), timeout_s=120)
    assert verdict.kind == "signal"
    assert f"llama.cpp crashed ({signal_name}) while decoding a batch" in verdict.message
    assert detail in verdict.message


def test_probe_passes_a_python_error_on(tmp_path):
    from gguf_files import write_gguf

    path = write_gguf(tmp_path / "hollow.gguf", "llama", tensors=False)
    verdict = run_probe(path, LoadParams(), timeout_s=120)
    assert verdict.kind == "error"
    assert "llama.cpp could not load" in verdict.message and "key not found" in verdict.message
    assert "\n" not in verdict.message


def test_probe_accepts_every_synthetic_architecture(tiny_dir):
    for path in sorted(tiny_dir.glob("*.gguf")):
        assert run_probe(path, LoadParams(), timeout_s=120).ok, path


# -- the verdict cache ------------------------------------------------------------------


def test_second_load_of_a_good_file_starts_no_child(counted_probes, tmp_path, tiny_llama_path):
    path = shutil.copy(tiny_llama_path, tmp_path / "good.gguf")
    pykvd.Model(path).close()
    assert len(counted_probes) == 1
    entries = json.loads((tmp_path / "cache" / "probe-verdicts.json").read_text())["entries"]
    assert [e["verdict"]["ok"] for e in entries.values()] == [True]
    pykvd.Model(path).close()
    assert len(counted_probes) == 1
    # Other load parameters are another verdict: the child must have loaded the file the same way.
    pykvd.Model(path, use_mmap=False).close()
    assert len(counted_probes) == 2


def test_a_changed_file_is_probed_again(counted_probes, tmp_path, tiny_llama_path):
    path = shutil.copy(tiny_llama_path, tmp_path / "good.gguf")
    pykvd.Model(path).close()
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched
    pykvd.Model(path).close()
    assert len(counted_probes) == 2
    # Same size and mtime, other header bytes (a float's low bits): still a new key.
    reader = gguf.GGUFReader(path, "r+")
    field = reader.fields["llama.rope.freq_base"]
    field.parts[field.data[0]][...] = 500001.0
    reader.data.flush()
    del reader
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    pykvd.Model(path).close()
    assert len(counted_probes) == 3


def test_a_known_bad_file_is_refused_from_the_cache(counted_probes, tmp_path, tiny_llama_path):
    # The cheap checks would catch this file; ensure_loadable on its own shows what the probe adds.
    path = rewrite(tiny_llama_path, tmp_path / "eps.gguf", kv={"llama.attention.layer_norm_rms_epsilon": (-1.0, F32)})
    data_offset = read_header(path).data_offset
    for _ in range(2):
        with pytest.raises(InvalidModelError, match=r"crashed \(SIGABRT\)"):
            ensure_loadable(path, data_offset, LoadParams())
    assert len(counted_probes) == 1


def test_a_timeout_under_a_shorter_limit_is_not_final(tmp_path, tiny_llama_path):
    cache = VerdictCache(tmp_path / "verdicts.json")
    key = probe_module.verdict_key(tiny_llama_path, read_header(tiny_llama_path).data_offset, LoadParams())
    cache.put(key, Verdict(False, "timeout", "slow", timeout_s=0.5), tiny_llama_path)
    with pytest.raises(InvalidModelError, match="slow"):
        ensure_loadable(
            tiny_llama_path, read_header(tiny_llama_path).data_offset, LoadParams(), timeout_s=0.5, cache=cache
        )
    assert ensure_loadable(
        tiny_llama_path, read_header(tiny_llama_path).data_offset, LoadParams(), timeout_s=120, cache=cache
    ).ok
    assert cache.get(key).ok


def test_the_cache_keeps_the_newest_entries(tmp_path):
    cache = VerdictCache(tmp_path / "verdicts.json", max_entries=3)
    for n in range(5):
        cache.put(f"key{n}", Verdict(True, "ok"), tmp_path / f"m{n}.gguf")
    assert [cache.get(f"key{n}") is not None for n in range(5)] == [False, False, True, True, True]


def _put_many(path: str, worker: int) -> None:
    cache = VerdictCache(path)
    for n in range(15):
        cache.put(f"w{worker}-{n}", Verdict(True, "ok"), path)


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "verdicts.json"
    workers = [multiprocessing.get_context("spawn").Process(target=_put_many, args=(str(path), w)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    entries = json.loads(path.read_text())["entries"]
    assert len(entries) == 60
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_an_unreadable_cache_is_treated_as_empty(tmp_path, tiny_llama_path):
    path = tmp_path / "verdicts.json"
    path.write_text("{not json")
    cache = VerdictCache(path)
    assert cache.get("anything") is None
    cache.put("k", Verdict(True, "ok"), tiny_llama_path)
    assert cache.get("k").ok


# -- switches ---------------------------------------------------------------------------


def test_probe_can_be_switched_off(counted_probes, monkeypatch, tmp_path, tiny_llama_path):
    path = shutil.copy(tiny_llama_path, tmp_path / "trusted.gguf")
    pykvd.Model(path, probe=False).close()
    monkeypatch.setenv("PYKVD_PROBE", "0")
    pykvd.Model(path).close()
    assert counted_probes == []
    pykvd.Model(path, probe=True).close()  # an explicit True wins over the environment
    assert len(counted_probes) == 1


@pytest.mark.parametrize("value", ["abc", "0", "-5", "inf", "nan"])
def test_bad_probe_timeout_setting(monkeypatch, value):
    monkeypatch.setenv("PYKVD_PROBE_TIMEOUT", value)
    with pytest.raises(ArgumentError, match="PYKVD_PROBE_TIMEOUT"):
        probe_module.probe_timeout()


def test_probe_timeout_setting(monkeypatch):
    monkeypatch.setenv("PYKVD_PROBE_TIMEOUT", "7.5")
    assert probe_module.probe_timeout() == 7.5
    monkeypatch.delenv("PYKVD_PROBE_TIMEOUT")
    assert probe_module.probe_timeout() == probe_module.DEFAULT_TIMEOUT_S


def test_refusals_leave_the_process_usable(counted_probes, tmp_path, tiny_dir, tiny_llama_path):
    spin = rewrite(tiny(tiny_dir, "gemma3"), tmp_path / "spin.gguf", kv={"gemma3.rope.dimension_count": (0, U32)})
    crash = rewrite(tiny_llama_path, tmp_path / "crash.gguf", dtypes={"blk.0.ffn_up.weight": QT.I32})
    for bad in (spin, crash):
        with pytest.raises(PykvdError):
            pykvd.Model(bad)
    with pytest.raises(InvalidModelError):
        ensure_loadable(crash, read_header(crash).data_offset, LoadParams())
    with pykvd.Model(tiny_llama_path) as model, model.session(n_ctx=64, n_threads=1) as s:
        assert len(s.generate(PROMPT, max_tokens=4, stop_at_eog=False).tokens) == 4


@pytest.mark.parametrize("arch", ["llama", "gemma3", "phi3"])
def test_a_one_token_trained_context_generates_or_refuses_cleanly(tmp_path, tiny_dir, arch):
    # llama.cpp pads a 1-cell context to 256 cells; a bounded session cannot exceed the trained context.
    path = rewrite(tiny(tiny_dir, arch), tmp_path / "ctx1.gguf", kv={f"{arch}.context_length": (1, U32)})
    with pykvd.Model(path) as model:
        with model.session(n_threads=1) as session:
            assert len(session.generate(PROMPT, max_tokens=4, stop_at_eog=False).tokens) == 4
        with pytest.raises(pykvd.BudgetError, match="trained context"):
            model.session(kv_budget=8, policy="kvdirect", n_threads=1)
