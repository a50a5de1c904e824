"""Fuzz pykvd with seeded GGUF mutants: no file may crash it, hang it or get past it with anything but its error.

Seed s gives one mutant (models/mutants.py) of one source model: the real SmolLM2 for one seed in ten, else the
tiny synthetic model of an architecture from models/synthetic.py, in turn. Each mutant runs in its own process,

  cli: python -m pykvd run MUTANT -p Hello -n 2 -t 1
  api: a script that loads MUTANT with pykvd.Model and generates 2 tokens, turning a PykvdError into the CLI's
       one error line and exit code 2 (any other exception escapes as a traceback)

under a timeout, with $PYKVD_PROBE_TIMEOUT set below it (so a file that makes llama.cpp loop forever is
caught by pykvd's probe and refused) and a fresh verdict cache. Outcomes:

  ok       exit 0
  refused  exit 2 and stderr exactly one line, starting "pykvd: error:"
  crash    killed by a signal
  hang     still running at the timeout
  bad      anything else: a traceback, more lines, another exit status

The JSON report has the totals, counts per class and outcome and per source and outcome, the slowest mutants
and every failing seed (crash, hang, bad) with its mutation; rebuild and rerun one with --only SEED, which keeps
the mutant file and prints the command.

Usage: python bench/fuzz.py [--n 5000] [--seed 0] [--workers 2] [--mode cli|api] [--only SEED ...]
                            [--classes CLASS ...]
                            [--timeout 60] [--probe-timeout 20] [--out bench/results/fuzz.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The mutation engine and the tiny-model writer live in models/, beside pykvd rather than in it.
sys.path.insert(0, str(REPO / "models"))
import mutants
import synthetic
from common import RESULTS

SMOLLM2 = "smollm2"
SOURCES: tuple[str, ...] = (*synthetic.ARCHITECTURES, SMOLLM2)
OUTCOMES = ("ok", "refused", "crash", "hang", "bad")
FAILURES = ("crash", "hang", "bad")
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_PROBE_TIMEOUT_S = 20.0
ERROR_PREFIX = "pykvd: error:"
_DETAIL_CHARS = 600

_API_SCRIPT = textwrap.dedent("""
    import sys
    import pykvd
    try:
        with pykvd.Model(sys.argv[1]) as model, model.session(n_ctx=64, n_threads=1) as session:
            session.generate("Hello", max_tokens=2)
    except pykvd.PykvdError as exc:
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"pykvd: error: {type(exc).__name__}: {line}", file=sys.stderr)
        sys.exit(2)
""")


def source_of(seed: int) -> str:
    """SmolLM2 for seeds ending in 9, else the synthetic architectures in turn."""
    if seed % 10 == 9:
        return SMOLLM2
    counted = seed - (seed + 1) // 10  # how many non-SmolLM2 seeds come before this one
    return synthetic.ARCHITECTURES[counted % len(synthetic.ARCHITECTURES)]


def prepare_sources(folder: Path, needed: set[str]) -> dict[str, Path]:
    """The source files the seeds need: tiny models written into folder, SmolLM2 from pykvd's cache."""
    paths = {}
    for name in sorted(needed):
        if name == SMOLLM2:
            from pykvd import models

            paths[name] = models.fetch(SMOLLM2)
        else:
            paths[name] = synthetic.write_tiny_gguf(name, folder / f"tiny-{name}.gguf", seed=0)
    return paths


@dataclass(frozen=True)
class Result:
    seed: int
    source: str
    cls: str
    target: str
    value: str
    outcome: str
    returncode: int | None
    seconds: float
    detail: str  # the error line of a refusal, the end of stderr otherwise


def classify(returncode: int | None, stderr: str) -> str:
    if returncode is None:
        return "hang"
    if returncode < 0:
        return "crash"
    if returncode == 0:
        return "ok"
    lines = [line for line in stderr.splitlines() if line.strip()]
    if returncode == 2 and len(lines) == 1 and lines[0].startswith(ERROR_PREFIX):
        return "refused"
    return "bad"


@dataclass(frozen=True)
class RunSettings:
    mode: str = "cli"
    classes: tuple[str, ...] | None = None  # the mutation classes seeds pick from (default: all)
    timeout_s: float = DEFAULT_TIMEOUT_S
    probe_timeout_s: float = DEFAULT_PROBE_TIMEOUT_S


def _command(mode: str, mutant: Path) -> list[str]:
    if mode == "api":
        return [sys.executable, "-c", _API_SCRIPT, str(mutant)]
    return [sys.executable, "-m", "pykvd", "run", str(mutant), "-p", "Hello", "-n", "2", "-t", "1"]


def _environment(settings: RunSettings, cache_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYKVD_PROBE_TIMEOUT"] = f"{settings.probe_timeout_s:g}"
    # A fresh verdict cache: verdicts from earlier runs would skip the very code under test.
    env["PYKVD_CACHE_DIR"] = str(cache_dir)
    # ggml's abort handler would otherwise attach gdb to print a backtrace.
    env["GGML_NO_BACKTRACE"] = "1"
    return env


def _run(command: list[str], env: dict[str, str], timeout_s: float, cwd: Path) -> tuple[int | None, str]:
    """Exit status (None on timeout) and stderr; the whole process group is killed at the timeout."""
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        _, stderr = process.communicate(timeout=timeout_s)
        return process.returncode, stderr.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
        return None, stderr.decode("utf-8", "replace")
    finally:
        # Whatever the mutant's process left behind (a probe child) goes with it.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_mutant(
    seed: int, sources: dict[str, Path], workdir: Path, settings: RunSettings, *, keep: bool = False
) -> Result:
    source = source_of(seed)
    mutant = workdir / f"mutant-{seed}.gguf"
    mutation = mutants.write_mutant(sources[source], seed, mutant, classes=settings.classes)
    start = time.perf_counter()
    try:
        returncode, stderr = _run(
            _command(settings.mode, mutant), _environment(settings, workdir / "cache"), settings.timeout_s, workdir
        )
    finally:
        if not keep:
            mutant.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    outcome = classify(returncode, stderr)
    detail = stderr.strip()[:300] if outcome == "refused" else stderr.strip()[-_DETAIL_CHARS:]
    return Result(
        seed, source, mutation.cls, mutation.target, mutation.value, outcome, returncode, round(seconds, 3), detail
    )


def run_seeds(
    seeds: list[int],
    settings: RunSettings,
    *,
    workers: int = 2,
    workdir: Path | None = None,
    keep: bool = False,
    progress=None,
) -> list[Result]:
    """Every seed's mutant run under settings, workers at a time; results in seed order."""
    owned = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="pykvd-fuzz-")) if owned else workdir
    try:
        sources = prepare_sources(workdir, {source_of(s) for s in seeds})
        results = []
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for result in pool.map(lambda s: run_mutant(s, sources, workdir, settings, keep=keep), seeds):
                results.append(result)
                if progress is not None:
                    progress(len(results), result)
        return results
    finally:
        if owned and not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def summarize(results: list[Result], *, slowest: int = 10) -> dict:
    per_class: dict[str, Counter] = defaultdict(Counter)
    per_source: dict[str, Counter] = defaultdict(Counter)
    for r in results:
        per_class[r.cls][r.outcome] += 1
        per_source[r.source][r.outcome] += 1
    return {
        "mutants": len(results),
        "totals": {o: sum(r.outcome == o for r in results) for o in OUTCOMES},
        "per_class": {c: {o: per_class[c][o] for o in OUTCOMES} for c in sorted(per_class)},
        "per_source": {s: {o: per_source[s][o] for o in OUTCOMES} for s in SOURCES if s in per_source},
        "slowest": [_brief(r) for r in sorted(results, key=lambda r: -r.seconds)[:slowest]],
        "failures": [asdict(r) for r in results if r.outcome in FAILURES],
    }


def _brief(r: Result) -> dict:
    return {
        "seed": r.seed,
        "source": r.source,
        "cls": r.cls,
        "target": r.target,
        "value": r.value,
        "outcome": r.outcome,
        "seconds": r.seconds,
    }


def failure_lines(summary: dict, limit: int = 40) -> str:
    """One line per failing seed, for a report or an assertion message."""
    lines = [
        f"{f['outcome']:<6} seed {f['seed']} ({f['source']}) {f['cls']}: {f['target']} = {f['value']}"
        for f in summary["failures"][:limit]
    ]
    extra = len(summary["failures"]) - limit
    return "\n".join(lines + ([f"... and {extra} more"] if extra > 0 else []))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=300, help="how many seeds (default 300)")
    p.add_argument("--seed", type=int, default=0, help="the first seed (default 0)")
    p.add_argument("--only", type=int, nargs="+", metavar="SEED", help="run just these seeds, keep their files")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--mode", choices=("cli", "api"), default="cli")
    p.add_argument(
        "--classes",
        nargs="+",
        choices=mutants.CLASS_NAMES,
        default=None,
        metavar="CLASS",
        help="pick each seed's mutation class from these only (then give them with --only too)",
    )
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per mutant (default 60)")
    p.add_argument(
        "--probe-timeout",
        type=float,
        default=DEFAULT_PROBE_TIMEOUT_S,
        help="$PYKVD_PROBE_TIMEOUT for each mutant (default 20)",
    )
    p.add_argument("--out", type=Path, default=None, help="JSON report (default bench/results/fuzz.json)")
    return p


def _print_progress(total: int):
    def progress(done: int, result: Result) -> None:
        if result.outcome in FAILURES:
            print(
                f"  {result.outcome}: seed {result.seed} ({result.source}) {result.cls}: {result.target} = "
                f"{result.value}",
                file=sys.stderr,
                flush=True,
            )
        if done % 100 == 0 or done == total:
            print(f"{done}/{total} mutants", file=sys.stderr, flush=True)

    return progress


def _run_only(args, settings: RunSettings) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="pykvd-fuzz-only-"))
    results = run_seeds(args.only, settings, workers=args.workers, workdir=workdir, keep=True)
    script = workdir / "api_check.py"
    script.write_text(_API_SCRIPT)
    for r in results:
        mutant = workdir / f"mutant-{r.seed}.gguf"
        command = _command(settings.mode, mutant)
        if settings.mode == "api":
            command = [sys.executable, str(script), str(mutant)]
        print(f"seed {r.seed} ({r.source}) {r.cls}: {r.target} = {r.value}")
        print(f"  outcome {r.outcome}, exit status {r.returncode}, {r.seconds:.2f} s")
        print(f"  mutant: {mutant}")
        print(
            f"  rerun:  PYKVD_PROBE_TIMEOUT={settings.probe_timeout_s:g} PYKVD_CACHE_DIR={workdir / 'cache'} "
            + " ".join(command)
        )
        if r.detail:
            print(textwrap.indent(r.detail, "  | "))
    return 0 if all(r.outcome not in FAILURES for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = RunSettings(args.mode, tuple(args.classes) if args.classes else None, args.timeout, args.probe_timeout)
    if args.only:
        return _run_only(args, settings)
    seeds = list(range(args.seed, args.seed + args.n))
    start = time.perf_counter()
    results = run_seeds(seeds, settings, workers=args.workers, progress=_print_progress(len(seeds)))
    wall = time.perf_counter() - start
    report = {
        "n": args.n,
        "first_seed": args.seed,
        "workers": args.workers,
        "mode": args.mode,
        "classes_only": args.classes,
        "timeout_s": args.timeout,
        "probe_timeout_s": args.probe_timeout,
        "wall_s": round(wall, 1),
        "classes": list(mutants.CLASS_NAMES),
        **summarize(results),
    }
    out = args.out or RESULTS / "fuzz.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"{len(results)} mutants in {wall:.0f} s: " + ", ".join(f"{n} {o}" for o, n in report["totals"].items()),
        file=sys.stderr,
    )
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
