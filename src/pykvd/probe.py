"""Try a model file in a child process before this process loads it.

llama.cpp aborts (GGML_ASSERT), segfaults or spins forever on some malformed
files, and no Python code can catch that. So before an unknown file is loaded
in-process, a child (``python -m pykvd.probe``) loads it with the same
parameters, creates a small context, tokenizes a short text and decodes a few
tokens in one batch plus one single-token step. A child that dies of a signal,
hangs past the timeout or raises makes the parent refuse the file with
InvalidModelError; only a child that finishes lets the parent load it.

Verdicts are cached (see VerdictCache), keyed by the file's identity and the
pykvd build, so a known file loads at full speed the next time and a known bad
one is refused at once.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import ArgumentError, InvalidModelError, PykvdError, UnsupportedArchitectureError

try:
    import fcntl
except ImportError:  # Not POSIX: concurrent writers of the verdict cache are not serialised there.
    fcntl = None  # type: ignore[assignment]

PROBE_ENV = "PYKVD_PROBE"
TIMEOUT_ENV = "PYKVD_PROBE_TIMEOUT"
# Generous: a 2-core CI machine loading a few hundred MB and decoding is slow, and a timeout refuses the file.
DEFAULT_TIMEOUT_S = 120.0
PROBE_TEXT = "Hello world, the cat is"
PROBE_N_CTX = 64
PROBE_BATCH_TOKENS = 4
VERDICTS_FILE = "probe-verdicts.json"
MAX_VERDICTS = 2000
_HASH_BLOCK = 1 << 20
_STAGE_PREFIX = "stage "
_RESULT_PREFIX = "result "


@dataclass(frozen=True)
class LoadParams:
    """What the parent will pass to native.Model and native.Context, so the child loads the file the same way."""

    n_gpu_layers: int = 0
    use_mmap: bool = True
    use_extra_bufts: bool = False
    flash_attn: int = 0
    batch_invariant: bool = True


@dataclass(frozen=True)
class Verdict:
    ok: bool
    kind: str  # "ok", "error" (the child raised), "signal" or "timeout"
    message: str = ""
    error_class: str = "InvalidModelError"
    timeout_s: float = 0.0

    def raise_if_bad(self) -> None:
        if self.ok:
            return
        if self.error_class == UnsupportedArchitectureError.__name__:
            raise UnsupportedArchitectureError(self.message)
        raise InvalidModelError(self.message)


# -- settings ----------------------------------------------------------------


def probe_enabled() -> bool:
    """False when $PYKVD_PROBE is 0/false/no/off: the user trusts every file this process loads."""
    return os.environ.get(PROBE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def probe_timeout() -> float:
    """Seconds the child may take: $PYKVD_PROBE_TIMEOUT, else DEFAULT_TIMEOUT_S."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise ArgumentError(f"{TIMEOUT_ENV} must be a positive number of seconds, not {raw!r}")
    return value


# -- the parent's side -------------------------------------------------------


def ensure_loadable(
    path: Path,
    data_offset: int,
    params: LoadParams,
    *,
    timeout_s: float | None = None,
    cache: VerdictCache | None = None,
) -> Verdict:
    """Raise InvalidModelError unless a child process loads and runs path; cached verdicts are reused."""
    timeout_s = probe_timeout() if timeout_s is None else timeout_s
    cache = VerdictCache.default() if cache is None else cache
    key = verdict_key(path, data_offset, params)
    verdict = cache.get(key)
    # A timeout under a shorter limit than today's says nothing about today's.
    if verdict is None or (verdict.kind == "timeout" and verdict.timeout_s < timeout_s):
        verdict = run_probe(path, params, timeout_s=timeout_s)
        cache.put(key, verdict, path)
    verdict.raise_if_bad()
    return verdict


def run_probe(path: Path, params: LoadParams, *, timeout_s: float) -> Verdict:
    """Load and run path in a child process (no cache); the child's fate as a Verdict."""
    env = dict(os.environ)
    # ggml's abort handler would otherwise attach gdb to print a backtrace: slow, and noise here.
    env["GGML_NO_BACKTRACE"] = "1"
    command = [
        sys.executable,
        "-m",
        "pykvd.probe",
        str(path),
        "--n-gpu-layers",
        str(params.n_gpu_layers),
        "--use-mmap",
        str(int(params.use_mmap)),
        "--use-extra-bufts",
        str(int(params.use_extra_bufts)),
        "--flash-attn",
        str(params.flash_attn),
        "--batch-invariant",
        str(int(params.batch_invariant)),
    ]
    try:
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout_s,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        stage = _last_stage(_text(expired.stdout))
        return Verdict(
            False,
            "timeout",
            timeout_s=timeout_s,
            message=(
                f"{path}: llama.cpp did not finish {stage} within {timeout_s:g} s in a probe process "
                f"(the file may make it loop forever); raise {TIMEOUT_ENV} for a slow machine, "
                "or pass probe=False for a trusted file"
            ),
        )
    return _verdict_of(path, done, timeout_s)


def _verdict_of(path: Path, done: subprocess.CompletedProcess, timeout_s: float) -> Verdict:
    stage = _last_stage(done.stdout)
    if done.returncode < 0:
        name = _signal_name(-done.returncode)
        detail = _native_complaint(done.stderr)
        return Verdict(
            False,
            "signal",
            timeout_s=timeout_s,
            message=(
                f"{path}: llama.cpp crashed ({name}) while {stage} in a probe process"
                + (f": {detail}" if detail else "")
            ),
        )
    result = _last_result(done.stdout)
    if done.returncode == 0 and result is not None and result.get("ok"):
        return Verdict(True, "ok", timeout_s=timeout_s)
    if result is not None and not result.get("ok"):
        return Verdict(
            False,
            "error",
            message=str(result.get("message", "")),
            timeout_s=timeout_s,
            error_class=str(result.get("error_class", InvalidModelError.__name__)),
        )
    detail = _native_complaint(done.stderr) or "no result"
    return Verdict(
        False,
        "error",
        timeout_s=timeout_s,
        message=(f"{path}: the probe process exited with status {done.returncode} while {stage}: {detail}"),
    )


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode("utf-8", errors="replace")
    return output or ""


def _last_stage(stdout: str) -> str:
    stages = [line[len(_STAGE_PREFIX) :] for line in stdout.splitlines() if line.startswith(_STAGE_PREFIX)]
    return stages[-1] if stages else "starting"


def _last_result(stdout: str) -> dict | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(_RESULT_PREFIX):
            try:
                return json.loads(line[len(_RESULT_PREFIX) :])
            except ValueError:
                return None
    return None


def _native_complaint(stderr: str) -> str:
    """The line in which ggml or llama.cpp said why it gave up (an assert), if it said so."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if "GGML_ASSERT" in line or "GGML_ABORT" in line or "error" in line.lower():
            return line[-300:]
    return lines[-1][-300:] if lines else ""


# -- the verdict cache -------------------------------------------------------


def verdict_key(path: Path, data_offset: int, params: LoadParams) -> str:
    """Who the file is (path, size, mtime, header bytes), which build judged it and with which parameters."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    identity = {
        "path": str(resolved),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "header_sha256": _header_sha256(resolved, data_offset),
        "build": _build_id(),
        "params": asdict(params),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _header_sha256(path: Path, data_offset: int) -> str:
    digest = hashlib.sha256()
    left = data_offset
    with open(path, "rb") as source:
        while left > 0 and (block := source.read(min(left, _HASH_BLOCK))):
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def _build_id() -> str:
    """pykvd's version and the compiled binding's identity: an upgrade or a rebuild judges files again."""
    from . import __version__
    from ._llama import native

    stat = os.stat(native.__file__)
    return f"{__version__}/{native.version()}/{stat.st_size}/{stat.st_mtime_ns}"


class VerdictCache:
    """A small JSON file of verdicts, shared by concurrent processes.

    Writers hold an flock on a lock file beside it and replace the file atomically, so readers never see a
    half-written one. A cache that cannot be read or written is treated as empty: probing just repeats.
    """

    def __init__(self, path: Path, *, max_entries: int = MAX_VERDICTS):
        self.path = Path(path)
        self.max_entries = max_entries

    @classmethod
    def default(cls) -> VerdictCache:
        from .models import cache_dir

        return cls(cache_dir() / VERDICTS_FILE)

    def get(self, key: str) -> Verdict | None:
        entry = self._read().get(key)
        try:
            return Verdict(**entry["verdict"]) if entry else None
        except (TypeError, KeyError):
            return None

    def put(self, key: str, verdict: Verdict, model_path: Path) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._locked():
                entries = self._read()
                entries[key] = {"time": time.time(), "path": str(model_path), "verdict": asdict(verdict)}
                self._write(self._newest(entries))
        except OSError:
            pass  # The verdict only spares the next probe; a read-only cache still works without it.

    def _newest(self, entries: dict) -> dict:
        ordered = sorted(entries.items(), key=lambda item: _entry_time(item[1]), reverse=True)
        return dict(ordered[: self.max_entries])

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        entries = data.get("entries") if isinstance(data, dict) else None
        return {k: v for k, v in entries.items() if isinstance(v, dict)} if isinstance(entries, dict) else {}

    def _write(self, entries: dict) -> None:
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump({"format": 1, "entries": entries}, out)
            os.replace(temporary, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if fcntl is None:
            yield
            return
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            yield  # Closing the file releases the lock.


def _entry_time(entry: dict) -> float:
    value = entry.get("time")
    return float(value) if isinstance(value, (int, float)) else 0.0


# -- the child's side --------------------------------------------------------


def _stage(name: str) -> None:
    # Flushed at once: if the next native call kills the process, the parent still learns how far it got.
    print(f"{_STAGE_PREFIX}{name}", flush=True)


def _exercise(path: str, params: LoadParams) -> None:
    """Everything the parent's first session will do to the weights, in miniature."""
    from ._llama import native

    _stage("loading the model")
    model = native.Model(
        path, n_gpu_layers=params.n_gpu_layers, use_mmap=params.use_mmap, use_extra_bufts=params.use_extra_bufts
    )
    _stage("creating a context")
    # One thread: ggml's spinning thread barriers crawl on a loaded machine, and nothing probed depends on it.
    context = native.Context(
        model,
        n_ctx=PROBE_N_CTX,
        n_batch=PROBE_N_CTX,
        n_ubatch=PROBE_N_CTX,
        n_threads=1,
        n_threads_batch=1,
        flash_attn=params.flash_attn,
        batch_invariant=params.batch_invariant,
    )
    _stage("tokenizing")
    tokens = list(model.tokenize(PROBE_TEXT, True, False))[:PROBE_BATCH_TOKENS]
    if not tokens:
        raise InvalidModelError(f"{path}: the tokenizer turns {PROBE_TEXT!r} into no tokens")
    model.detokenize(tokens, False, False)
    _stage("decoding a batch")
    context.decode(tokens, 0)
    _stage("decoding one token")
    context.decode_token(int(context.logits().argmax()), len(tokens))
    context.logits()
    context.close()
    model.close()


def _one_line(message: str) -> str:
    """The first line of message, plus the log line that gives the reason when llama.cpp appended its log."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    reasons = [line for line in lines[1:] if "error" in line.lower()]
    return f"{lines[0]}: {reasons[-1] if reasons else lines[-1]}"


def _child_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pykvd.probe", description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--n-gpu-layers", type=int, default=0)
    parser.add_argument("--use-mmap", type=int, default=1)
    parser.add_argument("--use-extra-bufts", type=int, default=0)
    parser.add_argument("--flash-attn", type=int, default=0)
    parser.add_argument("--batch-invariant", type=int, default=1)
    args = parser.parse_args(argv)
    params = LoadParams(
        args.n_gpu_layers, bool(args.use_mmap), bool(args.use_extra_bufts), args.flash_attn, bool(args.batch_invariant)
    )
    try:
        _exercise(args.path, params)
    except Exception as exc:  # noqa: BLE001 - every Python-level failure is a verdict to report, not a crash
        message = _one_line(str(exc)) or type(exc).__name__
        error_class = type(exc).__name__ if isinstance(exc, PykvdError) else InvalidModelError.__name__
        print(_RESULT_PREFIX + json.dumps({"ok": False, "error_class": error_class, "message": message}), flush=True)
        return 1
    print(_RESULT_PREFIX + json.dumps({"ok": True}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
