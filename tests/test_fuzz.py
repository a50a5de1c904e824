"""Seeded GGUF mutants (models/mutants.py) run through pykvd by bench/fuzz.py: a fixed sample of them must
never crash pykvd, hang it, or end in anything but pykvd's own error."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import gguf
import pytest

import mutants  # models/mutants.py, put on sys.path by conftest.py
import synthetic

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import fuzz  # bench/fuzz.py: the runner and its outcome rules, shared with the benchmark

# Seeds 0-299: 270 mutants of the tiny models (54 per architecture) and 30 of SmolLM2.
CI_SEEDS = range(300)
CI_BUDGET_S = 180.0
API_SEEDS = range(300, 360)


def _run_sample(seeds, mode: str, workdir):
    start = time.perf_counter()
    results = fuzz.run_seeds(list(seeds), fuzz.RunSettings(mode=mode), workers=2, workdir=workdir)
    wall = time.perf_counter() - start
    summary = fuzz.summarize(results)
    report = (
        f"{len(results)} mutants ({mode}) in {wall:.0f} s: "
        + ", ".join(f"{n} {o}" for o, n in summary["totals"].items())
        + "\n"
        + fuzz.failure_lines(summary)
    )
    return summary, wall, report


@pytest.mark.slow
@pytest.mark.real_model  # a tenth of the mutants come from SmolLM2
def test_no_mutant_crashes_hangs_or_escapes_the_cli(tmp_path):
    summary, wall, report = _run_sample(CI_SEEDS, "cli", tmp_path)
    assert summary["mutants"] == len(CI_SEEDS)
    failures = {o: summary["totals"][o] for o in fuzz.FAILURES}
    assert failures == {"crash": 0, "hang": 0, "bad": 0}, report
    # The sample must keep exercising both sides: files refused and damaged files that still load.
    assert summary["totals"]["refused"] > 0 and summary["totals"]["ok"] > 0, report
    assert wall < CI_BUDGET_S, report


@pytest.mark.slow
@pytest.mark.real_model
def test_no_mutant_escapes_the_api_as_anything_but_a_pykvd_error(tmp_path):
    summary, _, report = _run_sample(API_SEEDS, "api", tmp_path)
    failures = {o: summary["totals"][o] for o in fuzz.FAILURES}
    assert failures == {"crash": 0, "hang": 0, "bad": 0}, report


# -- the mutation engine itself ---------------------------------------------------


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-sources")
    return {
        arch: synthetic.write_tiny_gguf(arch, folder / f"tiny-{arch}.gguf", seed=0) for arch in synthetic.ARCHITECTURES
    }


def test_sample_covers_every_source_and_class():
    assert {fuzz.source_of(s) for s in CI_SEEDS} == set(fuzz.SOURCES)
    assert sum(fuzz.source_of(s) == fuzz.SMOLLM2 for s in CI_SEEDS) == 30
    assert {mutants.class_of(s) for s in CI_SEEDS} == set(mutants.CLASS_NAMES)


@pytest.mark.parametrize("arch", synthetic.ARCHITECTURES)
def test_an_unmutated_file_is_written_back_byte_for_byte(tmp_path, sources, arch):
    doc = mutants.parse(sources[arch])
    mutants.emit(doc.copy(), tmp_path / "same.gguf")
    assert (tmp_path / "same.gguf").read_bytes() == sources[arch].read_bytes()


@pytest.mark.parametrize("cls", mutants.CLASS_NAMES)
def test_every_class_changes_the_file_the_same_way_for_the_same_seed(tmp_path, sources, cls):
    for seed in range(5):
        source = sources[synthetic.ARCHITECTURES[seed]]
        first = mutants.write_mutant(source, seed, tmp_path / "a.gguf", classes=(cls,))
        again = mutants.write_mutant(source, seed, tmp_path / "b.gguf", classes=(cls,))
        assert first == again and first.cls == cls
        assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()
        assert (tmp_path / "a.gguf").read_bytes() != source.read_bytes(), str(first)


def test_mutants_carry_what_gguf_writers_refuse(tmp_path, sources):
    source = sources["llama"]
    doc = mutants.parse(source).copy()
    doc.set(b"llama.\xff\xfeblock_count", mutants.U32, 4)
    doc.set("llama.attention.head_count", mutants.STR, b"four")
    doc.set("llama.rope.dimension_count", mutants.ARR, mutants.Array(mutants.ARR, [mutants.Array(mutants.U32, [1])]))
    mutants.emit(doc, tmp_path / "odd.gguf")
    back = mutants.parse(tmp_path / "odd.gguf")
    assert back.get(b"llama.\xff\xfeblock_count") == 4
    assert back.get("llama.attention.head_count") == b"four"
    assert back.get("llama.rope.dimension_count") == mutants.Array(mutants.ARR, [mutants.Array(mutants.U32, [1])])
    # gguf's own reader refuses such a file; the tensors and their data were written back intact.
    with pytest.raises(UnicodeDecodeError):
        gguf.GGUFReader(tmp_path / "odd.gguf")
    assert [(t.name, t.offset) for t in back.tensors] == [(t.name, t.offset) for t in doc.tensors]
    data = (tmp_path / "odd.gguf").read_bytes()[back.data_start :]
    assert data == source.read_bytes()[doc.data_start :]


def test_a_relaid_dtype_swap_keeps_every_extent_consistent(tmp_path, sources):
    doc = mutants.parse(sources["qwen2"]).copy()
    norm = next(t for t in doc.tensors if t.name == b"output_norm.weight")
    norm.ggml_type = int(gguf.GGMLQuantizationType.F16)
    norm.data = bytes(mutants.tensor_nbytes(norm.shape, norm.ggml_type))
    mutants.relay(doc)
    mutants.emit(doc, tmp_path / "f16-norm.gguf")
    reader = gguf.GGUFReader(tmp_path / "f16-norm.gguf")
    written = {t.name: t for t in reader.tensors}
    assert written["output_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert written["output_norm.weight"].n_bytes == 2 * 64
    size = (tmp_path / "f16-norm.gguf").stat().st_size
    assert all(t.data_offset + t.n_bytes <= size for t in reader.tensors)
    # Every other tensor kept its bytes, only moved.
    original = {t.name: t for t in gguf.GGUFReader(sources["qwen2"]).tensors}
    assert all(bytes(written[n].data) == bytes(original[n].data) for n in original if n != "output_norm.weight")


@pytest.mark.parametrize(
    "returncode, stderr, outcome",
    [
        (0, "", "ok"),
        (0, "some warning\n", "ok"),
        (2, "pykvd: error: bad file\n", "refused"),
        (2, "pykvd: loading\npykvd: error: bad file\n", "bad"),
        (2, "Traceback (most recent call last):\n  ...\nValueError: x\n", "bad"),
        (1, "pykvd: error: bad file\n", "bad"),
        (-6, "GGML_ASSERT failed\n", "crash"),
        (None, "", "hang"),
    ],
)
def test_outcomes(returncode, stderr, outcome):
    assert fuzz.classify(returncode, stderr) == outcome
