"""What pykvd costs on top of plain llama.cpp: prefill and decode speed, same build, model and prompt.

Measured
--------
* The reference: ``pykvd-llama-reference`` (``pykvd.paths.reference_program()``),
  a plain C greedy loop over the same libllama that pykvd bundles, run as a
  subprocess. It reports the wall time of its prefill and of its decode loop,
  both after the model and context are loaded.
* pykvd: ``Session.generate`` in this process, with the model loaded once
  (outside every timing) and a fresh Session for every run, so each run starts
  from an empty KV cache like the reference does. Timings are the
  ``Generation.prefill_s`` / ``decode_s`` that pykvd measures itself, around
  the same work as the reference's timers (the decode loop includes sampling,
  the per-token text decoding and the generator machinery: pykvd's own cost).
* Optionally ``pykvd run ... --stats`` end to end as a subprocess (Python
  start, import, model load, generation), compared with the reference's wall
  time as a subprocess; only if this installation's CLI has ``--stats``.

Both sides use the same thread count, n_ctx, n_batch (= n_ubatch), kernel
settings (the exact profile: flash attention off, ggml's batch-invariant
kernels; or both fast with ``--fast``) and generate exactly
``--n-predict`` tokens (``--ignore-eos`` / ``stop_at_eog=False``), so they do
the same llama.cpp work; the generated tokens are checked to be equal.

Definitions (identical on both sides): prefill tok/s = prompt tokens / prefill
seconds; decode tok/s = decode steps / decode seconds, where the decode steps
are the single-token llama_decode calls (n_predict - 1: the last sampled token
is never decoded).

Why interleaved
---------------
On a small shared machine the available CPU drifts over seconds to minutes
(other processes, thermal and frequency changes). Running all reference runs
and then all pykvd runs would turn that drift into a fake difference. So the
runs alternate within each repeat, and the order is reversed every other
repeat (reference, pykvd[, cli] | [cli,] pykvd, reference | ...), which
cancels a linear drift and keeps each reference run next to its pykvd run.
Every run is recorded, and the comparison uses medians (robust to the odd run
hit by a burst of load) plus the median of the per-repeat paired
ratios. A warm-up round, not recorded, pages the weights in first.

Other processes
---------------
ggml runs its threads with OpenMP; when other processes want the same cores,
its spinning barriers can make a run tens of times slower, on either side.
Interleaving cannot fix that, so every run also records how much CPU the rest
of the machine used during it ("foreign" CPU, from /proc/stat minus this
process and its children, plus hypervisor steal), as a share of the machine's
capacity. Before each repeat the script waits (up to --quiet-wait seconds)
for the machine to go quiet. A repeat whose reference or pykvd run exceeds
--max-foreign (default 0.05) is marked contended, and the script adds repeats
(up to --extra-repeats more) until it has --repeats uncontended ones. It
reports medians and ratios both over all repeats and over the uncontended ones
("clean"). The headline uses the clean repeats when there are at least 3.
With --aa each repeat also runs the reference a second time; the ratio of the
reference to itself (ideally 1) shows how large a difference this machine can
produce by chance in one benchmark run.

Usage: python bench/overhead.py [--model smollm2|gemma3|PATH] [--repeats 7] [--n-predict 128]
                                [--prompt-tokens 320 | --prompt TEXT | --prompt-file FILE] [--out PATH]
Run it from outside the repository root, so the source folder pykvd/ does not
shadow the installed package.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prompts import build_prompt

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "overhead.json"
TARGET_RATIO = 0.95  # pykvd within 5 % of plain llama.cpp

_CLI_STATS = re.compile(r"prefill (\d+) tok in ([0-9.]+) s .*?decode (\d+) steps in ([0-9.]+) s")


def _rate(n: float, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("nan")


def _median(values):
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else float("nan")


# -- what the rest of the machine did during a run -------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_snapshot() -> dict:
    """CPU seconds: this process and its waited-for children, and the whole machine (busy, steal)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    snap = {"t": time.perf_counter(), "own": me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime}
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        snap["busy"] = (user + nice + system + irq + softirq) / _CLK_TCK
        snap["steal"] = steal / _CLK_TCK
    except (OSError, ValueError):
        pass
    return snap


def _contention(before: dict, after: dict) -> dict:
    wall = after["t"] - before["t"]
    own = after["own"] - before["own"]
    out = {"own_cpu_s": own}
    if "busy" in before and "busy" in after and wall > 0:
        capacity = wall * (os.cpu_count() or 1)
        foreign = max(0.0, after["busy"] - before["busy"] - own)
        steal = max(0.0, after["steal"] - before["steal"])
        out.update(foreign_cpu_s=foreign, steal_s=steal, foreign_share=(foreign + steal) / capacity)
    return out


def wait_for_quiet(max_foreign: float, timeout_s: float, window_s: float = 1.0) -> float:
    """Wait until other processes use at most max_foreign of the CPUs for two windows in a row.

    Returns the seconds waited (at most about timeout_s).
    """
    start = time.perf_counter()
    quiet = 0
    while time.perf_counter() - start < timeout_s:
        before = _cpu_snapshot()
        time.sleep(window_s)
        share = _contention(before, _cpu_snapshot()).get("foreign_share")
        if share is None:
            break  # no /proc/stat: cannot tell
        quiet = quiet + 1 if share <= max_foreign else 0
        if quiet >= 2:
            break
    return time.perf_counter() - start


def measured(fn):
    """Run fn() and add how much CPU it used and how much the rest of the machine used meanwhile."""
    before = _cpu_snapshot()
    result = fn()
    result.update(_contention(before, _cpu_snapshot()))
    return result


# -- the two sides ------------------------------------------------------------


def run_reference(program: str, model_path: str, prompt: str, cfg: dict, env: dict) -> dict:
    cmd = [
        program,
        "-m",
        model_path,
        "-p",
        prompt,
        "-n",
        str(cfg["n_predict"]),
        "-c",
        str(cfg["n_ctx"]),
        "-b",
        str(cfg["n_batch"]),
        "-t",
        str(cfg["threads"]),
        *cfg["reference_flags"],
        "--ignore-eos",
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"reference failed ({proc.returncode}): {proc.stderr.strip()}")
    out = json.loads(proc.stdout)
    n_prompt = len(out["prompt_tokens"])
    return {
        "prompt_tokens": n_prompt,
        "n_generated": len(out["tokens"]),
        "n_decode_steps": out["n_decode_steps"],
        "prefill_s": out["prefill_s"],
        "decode_s": out["decode_s"],
        "wall_s": wall,
        "prefill_tok_s": _rate(n_prompt, out["prefill_s"]),
        "decode_tok_s": _rate(out["n_decode_steps"], out["decode_s"]),
        "_tokens": out["tokens"],
    }


def run_pykvd(model, prompt: str, cfg: dict) -> dict:
    from pykvd.session import Session

    with Session(
        model, n_ctx=cfg["n_ctx"], n_batch=cfg["n_batch"], n_ubatch=cfg["n_batch"], n_threads=cfg["threads"]
    ) as session:
        gen = session.generate(prompt, max_tokens=cfg["n_predict"], stop_at_eog=False)
        steps = session.stats.n_decode_steps
        # llama.cpp's own timers (inside llama_decode only), to tell Python's share from llama.cpp's.
        perf = getattr(getattr(session, "_ctx", None), "perf", None)
        perf = perf() if callable(perf) else None
    result = {
        "prompt_tokens": gen.n_prompt_tokens,
        "n_generated": len(gen.tokens),
        "n_decode_steps": steps,
        "prefill_s": gen.prefill_s,
        "decode_s": gen.decode_s,
        "prefill_tok_s": _rate(gen.n_prompt_tokens, gen.prefill_s),
        "decode_tok_s": _rate(steps, gen.decode_s),
        "_tokens": gen.tokens,
    }
    if perf and perf.get("n_decode") == steps:
        llama_decode_s = perf["decode_ms"] / 1e3
        result.update(
            llama_prefill_s=perf["prefill_ms"] / 1e3,
            llama_decode_s=llama_decode_s,
            # Per decode step: sampling (the reference samples too) plus pykvd's Python loop.
            outside_llama_decode_ms_per_step=(gen.decode_s - llama_decode_s) * 1e3 / steps if steps else None,
        )
    return result


def _cli_command() -> list[str]:
    return [sys.executable, "-m", "pykvd"]


def cli_available(cwd: str) -> bool:
    """True if this installation has `pykvd run` with --stats and --ignore-eos."""
    try:
        proc = subprocess.run(
            _cli_command() + ["run", "--help"], check=False, capture_output=True, text=True, cwd=cwd, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and "--stats" in proc.stdout and "--ignore-eos" in proc.stdout


def run_cli(model_path: str, prompt: str, cfg: dict, cwd: str, env: dict) -> dict:
    prompt_file = Path(cwd) / "prompt.txt"  # -f: the prompt exactly, whatever it starts with
    if not prompt_file.exists():
        prompt_file.write_text(prompt, encoding="utf-8")
    cmd = _cli_command() + [
        "run",
        model_path,
        "-f",
        str(prompt_file),
        "-n",
        str(cfg["n_predict"]),
        "-c",
        str(cfg["n_ctx"]),
        "-b",
        str(cfg["n_batch"]),
        "-t",
        str(cfg["threads"]),
        "--ignore-eos",
        "--stats",
    ]
    if cfg["fast"]:
        cmd.append("--fast")
    start = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=cwd, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"pykvd run failed ({proc.returncode}): {proc.stderr.strip()}")
    result = {"wall_s": wall}
    match = _CLI_STATS.search(proc.stderr)
    if match:
        n_prefill, prefill_s, steps, decode_s = int(match[1]), float(match[2]), int(match[3]), float(match[4])
        result.update(
            prompt_tokens=n_prefill,
            n_decode_steps=steps,
            prefill_s=prefill_s,
            decode_s=decode_s,
            prefill_tok_s=_rate(n_prefill, prefill_s),
            decode_tok_s=_rate(steps, decode_s),
        )
    else:
        result["stats_unparsed"] = proc.stderr.strip()[-500:]
    return result


# -- main ---------------------------------------------------------------------


def _parse_args(argv):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="smollm2", help="smollm2, gemma3 or a GGUF path (default smollm2)")
    p.add_argument(
        "--repeats",
        type=int,
        default=7,
        help="uncontended repeats wanted; each repeat runs every side once (default 7)",
    )
    p.add_argument(
        "--extra-repeats",
        type=int,
        default=None,
        help="repeats allowed on top of --repeats to replace contended ones (default: --repeats)",
    )
    p.add_argument(
        "--max-foreign",
        type=float,
        default=0.05,
        help="a run is contended if other processes used more than this share of the CPUs (default 0.05)",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        help="before each repeat, wait up to this many seconds for other processes to go quiet (default 120)",
    )
    p.add_argument("--warmup", type=int, default=1, help="unrecorded runs of each side first (default 1)")
    p.add_argument("--n-predict", type=int, default=128, help="tokens generated per run (default 128)")
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--prompt-tokens", type=int, default=320, help="build a fixed prompt of at least this many tokens (default 320)"
    )
    src.add_argument("--prompt", help="use this prompt text instead")
    src.add_argument("--prompt-file", help="read the prompt text from this file")
    p.add_argument(
        "--threads", type=int, default=os.cpu_count() or 2, help="threads on both sides (default: the machine's cores)"
    )
    p.add_argument("--n-ctx", type=int, default=None, help="context size (default: enough for prompt + n_predict)")
    p.add_argument("--n-batch", type=int, default=512, help="n_batch = n_ubatch on both sides (default 512)")
    p.add_argument(
        "--fast",
        action="store_true",
        help="both sides with llama.cpp's fast kernels (flash attention auto, repacked weights)",
    )
    p.add_argument(
        "--aa",
        action="store_true",
        help="also run the reference a second time per repeat (reference_aa): an A/A control whose "
        "ratio to the reference shows the noise floor of the comparison",
    )
    p.add_argument(
        "--cli",
        choices=("auto", "on", "off"),
        default="auto",
        help="also time `pykvd run --stats` end to end (auto: if the CLI has --stats)",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    for name in ("repeats", "n_predict", "threads", "n_batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.extra_repeats is None:
        args.extra_repeats = args.repeats
    if args.n_predict < 2:
        p.error("--n-predict must be >= 2 (decode speed needs at least one decode step)")
    return args


def log(message: str) -> None:
    print(f"overhead: {message}", file=sys.stderr, flush=True)


_SUMMARY_KEYS = ("prefill_tok_s", "decode_tok_s", "wall_s", "foreign_share", "outside_llama_decode_ms_per_step")


def _summarize(runs: list[dict], keys=_SUMMARY_KEYS) -> dict:
    return {
        f"median_{k}": _median([r[k] for r in runs if r.get(k) is not None])
        for k in keys
        if any(r.get(k) is not None for r in runs)
    }


def main(argv=None) -> int:
    args = _parse_args(argv)

    from pykvd import Model, models, paths
    from pykvd._llama import native

    model_path = str(models.resolve(args.model))
    program = str(paths.reference_program())
    if not Path(program).is_file():
        print(f"overhead: reference program missing: {program}", file=sys.stderr)
        return 1

    model = Model(model_path, exact=not args.fast)
    if args.prompt is not None:
        prompt = args.prompt
    elif args.prompt_file is not None:
        prompt = Path(args.prompt_file).read_text(encoding="utf-8")
    else:
        prompt = build_prompt(model, args.prompt_tokens)
    n_prompt = len(model.tokenize(prompt))
    n_ctx = args.n_ctx or -(-(n_prompt + args.n_predict + 8) // 256) * 256
    cfg = {
        "n_predict": args.n_predict,
        "n_ctx": n_ctx,
        "n_batch": args.n_batch,
        "threads": args.threads,
        "flash_attn": model.profile.flash_attn,
        "extra_bufts": model.profile.extra_bufts,
        "batch_invariant": model.profile.batch_invariant,
        "reference_flags": model.profile.reference_flags(),
        "fast": args.fast,
    }
    env = dict(os.environ)
    workdir = tempfile.mkdtemp(prefix="pykvd-overhead-")  # never the repo root: pykvd/ would shadow the install
    use_cli = args.cli == "on" or (args.cli == "auto" and cli_available(workdir))
    if args.cli == "on" and not cli_available(workdir):
        print("overhead: `pykvd run --stats` is not available", file=sys.stderr)
        return 1

    sides = {
        "reference": lambda: run_reference(program, model_path, prompt, cfg, env),
        "pykvd": lambda: run_pykvd(model, prompt, cfg),
    }
    if args.aa:
        sides["reference_aa"] = sides["reference"]
    if use_cli:
        sides["pykvd_cli"] = lambda: run_cli(model_path, prompt, cfg, workdir, env)
    names = list(sides)

    log(
        f"{Path(model_path).name}: {n_prompt} prompt tokens, {args.n_predict} generated, {args.threads} threads, "
        f"n_ctx {n_ctx}, n_batch {args.n_batch}, {'fast' if args.fast else 'exact'} profile, sides {names}"
    )
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    started = time.time()

    for _ in range(args.warmup):
        for name in names:
            sides[name]()

    runs: dict[str, list[dict]] = {name: [] for name in names}
    order_log = []
    mismatches = 0
    clean: list[int] = []  # repeats whose reference and pykvd runs were both uncontended
    i = 0
    while len(clean) < args.repeats and i < args.repeats + args.extra_repeats:
        # Reverse the order every other repeat (ABC, CBA, ...): cancels a linear drift, and the
        # reference and pykvd runs stay next to each other.
        order = names if i % 2 == 0 else names[::-1]
        order_log.append(order)
        waited = wait_for_quiet(args.max_foreign, args.quiet_wait) if args.quiet_wait > 0 else 0.0
        for name in order:
            result = measured(sides[name])
            result["repeat"] = i
            result["waited_for_quiet_s"] = waited
            result["contended"] = result.get("foreign_share", 0.0) > args.max_foreign
            runs[name].append(result)
        r, p = runs["reference"][-1], runs["pykvd"][-1]
        tokens = {name: runs[name][-1].pop("_tokens", None) for name in names}
        same = tokens["reference"] == tokens["pykvd"]
        p["tokens_match_reference"] = same
        mismatches += not same
        if not (r["contended"] or p["contended"]):
            clean.append(i)
        log(
            f"repeat {i + 1}: prefill ref {r['prefill_tok_s']:.1f} / pykvd {p['prefill_tok_s']:.1f} tok/s, "
            f"decode ref {r['decode_tok_s']:.2f} / pykvd {p['decode_tok_s']:.2f} tok/s, other processes "
            f"{100 * r.get('foreign_share', 0):.0f}% / {100 * p.get('foreign_share', 0):.0f}% of the CPUs"
            + ("" if i in clean else "  [contended]")
            + ("" if same else "  [TOKENS DIFFER]")
        )
        i += 1

    elapsed = time.time() - started
    all_repeats = list(range(i))
    everything = _compare(runs, all_repeats, use_cli)
    uncontended = _compare(runs, clean, use_cli) if clean else None
    headline_name = "clean" if len(clean) >= 3 else "all"
    headline = uncontended if headline_name == "clean" else everything
    ratios = headline["ratios_pykvd_over_reference"]
    within = ratios["prefill_tok_s"] >= TARGET_RATIO and ratios["decode_tok_s"] >= TARGET_RATIO

    report = {
        "benchmark": "pykvd overhead vs plain llama.cpp (pykvd-llama-reference)",
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": model_path,
        "model_description": model.info.description,
        "profile": "fast" if args.fast else "exact",
        "flash_attn": cfg["flash_attn"],
        "extra_bufts": cfg["extra_bufts"],
        "batch_invariant": cfg["batch_invariant"],
        "threads": args.threads,
        "n_ctx": n_ctx,
        "n_batch": args.n_batch,
        "n_ubatch": args.n_batch,
        "prompt_tokens": n_prompt,
        "n_predict": args.n_predict,
        "n_decode_steps": args.n_predict - 1,
        "repeats_wanted": args.repeats,
        "repeats_run": i,
        "clean_repeats": clean,
        "max_foreign": args.max_foreign,
        "warmup": args.warmup,
        "order": order_log,
        "llama_cpp_version": native.version(),
        "pykvd_version": __import__("pykvd").__version__,
        "reference_program": program,
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "elapsed_s": elapsed,
        "tokens_match": mismatches == 0,
        "runs": runs,
        "all": everything,
        "clean": uncontended,
        "headline": headline_name,
        "summary": headline["summary"],
        "ratios_pykvd_over_reference": ratios,
        "target_ratio": TARGET_RATIO,
        "within_target": within,
    }
    model.close()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    ref_s, py_s = headline["summary"]["reference"], headline["summary"]["pykvd"]
    n_used = len(clean) if headline_name == "clean" else i
    log(f"{i} repeats, {len(clean)} uncontended; headline over {headline_name} repeats ({n_used})")
    log(
        f"reference: prefill {ref_s['median_prefill_tok_s']:.1f} tok/s, "
        f"decode {ref_s['median_decode_tok_s']:.2f} tok/s (medians)"
    )
    log(f"pykvd:     prefill {py_s['median_prefill_tok_s']:.1f} tok/s, decode {py_s['median_decode_tok_s']:.2f} tok/s")
    log(
        f"ratio pykvd/reference: prefill {ratios['prefill_tok_s']:.3f}, decode {ratios['decode_tok_s']:.3f} "
        f"(paired medians {ratios['paired_median_prefill_tok_s']:.3f}, {ratios['paired_median_decode_tok_s']:.3f}); "
        f"target >= {TARGET_RATIO}: {'met' if within else 'NOT met'}"
    )
    if headline_name == "clean":
        a = everything["ratios_pykvd_over_reference"]
        log(f"(over all {i} repeats: prefill {a['prefill_tok_s']:.3f}, decode {a['decode_tok_s']:.3f})")
    if args.aa:
        log(
            f"A/A control (reference vs itself): prefill {ratios['aa_prefill_tok_s']:.3f}, "
            f"decode {ratios['aa_decode_tok_s']:.3f}: differences of this size are noise"
        )
    if use_cli:
        cli_s = headline["summary"]["pykvd_cli"]
        log(
            f"pykvd run end to end: {cli_s['median_wall_s']:.2f} s vs reference {ref_s['median_wall_s']:.2f} s "
            f"(x{ratios['cli_wall_over_reference_wall']:.2f})"
            + (
                f"; in-CLI prefill {cli_s['median_prefill_tok_s']:.1f}, decode {cli_s['median_decode_tok_s']:.2f} tok/s"
                if "median_decode_tok_s" in cli_s
                else ""
            )
        )
    if mismatches:
        log(f"WARNING: generated tokens differed from the reference in {mismatches} repeat(s)")
    log(f"wrote {args.out}")
    return 0 if mismatches == 0 else 1


def _compare(runs: dict[str, list[dict]], repeats: list[int], use_cli: bool) -> dict:
    """Medians per side and pykvd/reference ratios over the given repeats."""
    chosen = {name: [r for r in rs if r["repeat"] in repeats] for name, rs in runs.items()}
    summary = {name: _summarize(rs) for name, rs in chosen.items()}
    ref_s, py_s = summary["reference"], summary["pykvd"]
    pairs = list(zip(chosen["reference"], chosen["pykvd"]))
    ratios = {
        "prefill_tok_s": py_s["median_prefill_tok_s"] / ref_s["median_prefill_tok_s"],
        "decode_tok_s": py_s["median_decode_tok_s"] / ref_s["median_decode_tok_s"],
        "paired_median_prefill_tok_s": _median([p["prefill_tok_s"] / r["prefill_tok_s"] for r, p in pairs]),
        "paired_median_decode_tok_s": _median([p["decode_tok_s"] / r["decode_tok_s"] for r, p in pairs]),
        "best_prefill_tok_s": max(p["prefill_tok_s"] for _, p in pairs) / max(r["prefill_tok_s"] for r, _ in pairs),
        "best_decode_tok_s": max(p["decode_tok_s"] for _, p in pairs) / max(r["decode_tok_s"] for r, _ in pairs),
    }
    if "reference_aa" in chosen:
        aa_s = summary["reference_aa"]
        aa_pairs = list(zip(chosen["reference"], chosen["reference_aa"]))
        ratios["aa_prefill_tok_s"] = aa_s["median_prefill_tok_s"] / ref_s["median_prefill_tok_s"]
        ratios["aa_decode_tok_s"] = aa_s["median_decode_tok_s"] / ref_s["median_decode_tok_s"]
        ratios["aa_paired_median_prefill_tok_s"] = _median(
            [b["prefill_tok_s"] / a["prefill_tok_s"] for a, b in aa_pairs]
        )
        ratios["aa_paired_median_decode_tok_s"] = _median([b["decode_tok_s"] / a["decode_tok_s"] for a, b in aa_pairs])
    if use_cli:
        cli_s = summary["pykvd_cli"]
        ratios["cli_wall_over_reference_wall"] = cli_s["median_wall_s"] / ref_s["median_wall_s"]
        if "median_decode_tok_s" in cli_s:
            ratios["cli_prefill_tok_s"] = cli_s["median_prefill_tok_s"] / ref_s["median_prefill_tok_s"]
            ratios["cli_decode_tok_s"] = cli_s["median_decode_tok_s"] / ref_s["median_decode_tok_s"]
    return {"repeats": repeats, "summary": summary, "ratios_pykvd_over_reference": ratios}


if __name__ == "__main__":
    sys.exit(main())
