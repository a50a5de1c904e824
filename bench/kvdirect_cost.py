"""What kvdirect costs, against the full cache and llama.cpp's own prefill, in one run per model.

Sections (--sections, default all three):

* steps: for E evicted tokens (a context of E + budget tokens, kvdirect holding `budget` of them in
  cells), interleaved, each time the median of --repeats: the kvdirect decode step without drafting
  (one new token; every evicted token recomputed at every layer) for each checkpoint kind, and its
  compute buffer as llama.cpp's allocator reports it; the full cache's step at the same context;
  llama.cpp's prefill of E tokens in a fresh context (the work the tokens checkpoint redoes).
* prompts: a prompt of N tokens (--prompt-lengths, default 512 2048 4096) into an empty session at
  --prompt-budget (128): llama.cpp's own full-cache prefill, kvdirect's single pass for each kind,
  and the budget-sized chunks kvdirect used before (each chunk re-runs everything evicted before
  it; only up to --chunked-max tokens, as it grows as N^2/B). Each in a fresh process, which reports
  its time, peak RSS (VmHWM), compute buffer, KV buffer and checkpoint, and a hash of the last
  logits (the single pass must give the full cache's).
* drafting: the eviction benchmark's contexts (512 tokens of the model's own text, bench/eviction.py)
  at budgets 64, 128 and 256: 50 greedy tokens from kvdirect with adaptive drafting, which must equal
  the full cache's, against kvdirect without drafting, timed over its first --off-steps steps (its
  steps only grow dearer as tokens are evicted, so this flatters the undrafted rate). tokens/s,
  acceptance and tokens per verification, for each checkpoint kind.

Sections not run are kept from the report already at --out, so one section can be measured again.

Usage: python bench/kvdirect_cost.py [--model smollm2 gemma3] [--sections steps prompts drafting]
                                     [--evicted 128 512 1024 2048] [--budget 256] [--repeats 3]
                                     [--prompt-lengths 512 2048 4096] [--prompt-budget 128]
                                     [--contexts 2] [--draft-budgets 64 128 256] [--off-steps 12]
"""

from __future__ import annotations

import hashlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import pykvd
from common import parser, pyplot, save, write_report
from eviction import CONTEXT, GENERATED, SEEDS, natural_context
from prompts import build_prompt

KINDS = ("tokens", "residuals")


def step_seconds(session, repeats: int) -> float:
    """Median time of one greedy decode step (sampling excluded), undone after each repeat."""
    times = []
    for _ in range(repeats):
        token = int(np.argmax(session.logits()))
        start = time.perf_counter()
        session.feed([token])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def prefill_seconds(model, ids: np.ndarray, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        with model.session(n_ctx=len(ids) + 8) as fresh:
            start = time.perf_counter()
            fresh.feed(ids)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(model, n_evicted: int, budget: int, repeats: int) -> dict:
    n = n_evicted + budget - 1  # the first step evicts n_evicted tokens, each repeat one more
    ids = np.asarray(model.tokenize(build_prompt(model, n))[:n], dtype=np.int32)
    row = {"evicted": n_evicted, "budget": budget, "context": len(ids)}
    with model.session(n_ctx=len(ids) + 2 * repeats + 8) as full:
        full.feed(ids)
        row["full_step_s"] = step_seconds(full, repeats)
    row["prefill_evicted_s"] = prefill_seconds(model, ids[:n_evicted], repeats)
    for kind in KINDS:
        with model.session(kv_budget=budget, policy="kvdirect", checkpoint=kind, draft=0) as bounded:
            bounded.feed(ids)
            row[f"{kind}_step_s"] = step_seconds(bounded, repeats)
            stats = bounded.stats
            row[f"{kind}_compute_bytes"] = stats.compute_bytes
            row[f"{kind}_checkpoint_bytes"] = stats.checkpoint_bytes
            row[f"{kind}_kv_bytes"] = stats.kv_bytes
            row[f"{kind}_rss_bytes"] = stats.rss_bytes
        row[f"{kind}_vs_prefill"] = row[f"{kind}_step_s"] / row["prefill_evicted_s"]
        row[f"{kind}_vs_full_step"] = row[f"{kind}_step_s"] / row["full_step_s"]
    return row


def linearity(rows: list[dict], kind: str) -> dict:
    """Compute-buffer growth per evicted token between successive sizes: flat means linear."""
    per_token = []
    for a, b in zip(rows, rows[1:]):
        per_token.append((b[f"{kind}_compute_bytes"] - a[f"{kind}_compute_bytes"]) / (b["evicted"] - a["evicted"]))
    return {"bytes_per_evicted_token_between_sizes": per_token}


# -- prompts: single pass against chunks against the full cache ---------------------------

PROMPT_MODES = ("full", "single_tokens", "single_residuals", "chunked_tokens", "chunked_residuals")


def prompt_ids(model, n: int) -> np.ndarray:
    return np.asarray(model.tokenize(build_prompt(model, n))[:n], dtype=np.int32)


def peak_rss_bytes() -> int:
    """This process's peak RSS (VmHWM: unlike getrusage's maximum, it starts afresh at exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def run_prompt(name: str, mode: str, n: int, budget: int) -> dict:
    """One prompt in this process (run by prompt_row in a fresh one, for a clean peak RSS)."""
    with pykvd.Model(name) as model:
        ids = prompt_ids(model, n)
        if mode == "full":
            session = model.session(n_ctx=n + 8)
        else:
            session = model.session(kv_budget=budget, policy="kvdirect", checkpoint=mode.split("_")[1], draft=0)
        with session:
            start = time.perf_counter()
            if mode.startswith("chunked"):
                step = budget - 4  # the cells beyond the sinks, as before the single pass
                for i in range(0, n, step):
                    session.feed(ids[i : i + step])  # each chunk re-runs what was evicted before it
            else:
                session.feed(ids)
            seconds = time.perf_counter() - start
            stats = session.stats
            return {
                "mode": mode,
                "tokens": n,
                "seconds": seconds,
                "peak_rss_bytes": peak_rss_bytes(),
                "compute_bytes": stats.compute_bytes,
                "kv_bytes": stats.kv_bytes,
                "checkpoint_bytes": stats.checkpoint_bytes,
                "logits_sha256": hashlib.sha256(session.logits().tobytes()).hexdigest(),
            }


def prompt_row(name: str, mode: str, n: int, budget: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--one-prompt", name, mode, str(n), str(budget)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_prompts(name: str, lengths: list[int], budget: int, chunked_max: int) -> list[dict]:
    rows = []
    for n in lengths:
        row = {"tokens": n, "budget": budget}
        for mode in PROMPT_MODES:
            if mode.startswith("chunked") and n > chunked_max:
                continue
            row[mode] = prompt_row(name, mode, n, budget)
        full = row["full"]
        for mode in PROMPT_MODES[1:]:
            if mode in row:
                row[f"{mode}_vs_full"] = row[mode]["seconds"] / full["seconds"]
                row[f"{mode}_logits_equal_full"] = row[mode]["logits_sha256"] == full["logits_sha256"]
        rows.append(row)
        ratios = ", ".join(f"{m} {row[m + '_vs_full']:.2f}x" for m in PROMPT_MODES[1:] if m in row)
        print(f"{name} N={n}: full {full['seconds']:.2f} s; {ratios}", file=sys.stderr, flush=True)
    return rows


# -- drafting: self-speculative decoding on the eviction benchmark's contexts ----------------


def decode_rate(model, ids: np.ndarray, budget: int, kind: str, draft, n_tokens: int) -> tuple[list[int], object]:
    with model.session(kv_budget=budget, policy="kvdirect", checkpoint=kind, draft=draft) as session:
        session.feed(ids)
        tokens = session.generate(max_tokens=n_tokens, stop_at_eog=False).tokens
        return tokens, session.stats


def measure_drafting(model, n_contexts: int, budgets: list[int], off_steps: int) -> list[dict]:
    rows = []
    for i in range(n_contexts):
        ids = natural_context(model, SEEDS[i % len(SEEDS)], seed=i)
        with model.session(n_ctx=CONTEXT + GENERATED + 8) as full:
            full.feed(ids)
            reference = full.generate(max_tokens=GENERATED, stop_at_eog=False).tokens
        for kind in KINDS:
            for budget in budgets:
                off_tokens, off = decode_rate(model, ids, budget, kind, 0, off_steps + 1)
                drafted_tokens, on = decode_rate(model, ids, budget, kind, None, GENERATED)
                row = {
                    "context": i,
                    "checkpoint": kind,
                    "budget": budget,
                    "undrafted_tokens_per_s": off.decode_tokens_per_s,
                    "drafted_tokens_per_s": on.decode_tokens_per_s,
                    "speedup": on.decode_tokens_per_s / off.decode_tokens_per_s,
                    "acceptance": on.acceptance,
                    "tokens_per_verify": on.tokens_per_verify,
                    "verifies": on.n_verifies,
                    "drafted": on.n_drafted,
                    "drafted_equals_full": drafted_tokens == reference,
                    "undrafted_equals_full": off_tokens == reference[: len(off_tokens)],
                }
                rows.append(row)
                print(
                    f"{model.path.name} context {i} {kind:>9} B={budget:<3}: {row['undrafted_tokens_per_s']:.2f} -> "
                    f"{row['drafted_tokens_per_s']:.2f} tok/s ({row['speedup']:.1f}x), acceptance "
                    f"{row['acceptance']:.2f}, {row['tokens_per_verify']:.2f} tokens/verify, equal "
                    f"{row['drafted_equals_full']}",
                    file=sys.stderr,
                    flush=True,
                )
    return rows


def drafting_summary(rows: list[dict]) -> dict:
    """checkpoint -> budget -> means over contexts, and the smallest speedup."""
    table: dict = {}
    for kind in KINDS:
        for budget in sorted({r["budget"] for r in rows}):
            cell = [r for r in rows if r["checkpoint"] == kind and r["budget"] == budget]
            table.setdefault(kind, {})[str(budget)] = {
                "speedup_min": min(r["speedup"] for r in cell),
                **{
                    key: float(np.mean([r[key] for r in cell]))
                    for key in ("undrafted_tokens_per_s", "drafted_tokens_per_s", "speedup", "acceptance")
                },
                "tokens_per_verify": float(np.mean([r["tokens_per_verify"] for r in cell])),
                "all_equal_full": all(r["drafted_equals_full"] and r["undrafted_equals_full"] for r in cell),
            }
    return table


def plot_steps(results: dict, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(2, len(results), figsize=(6 * len(results), 8), squeeze=False)
    for col, (name, result) in enumerate(results.items()):
        rows = result["rows"]
        e = [r["evicted"] for r in rows]
        ax = axes[0][col]
        ax.plot(e, [r["prefill_evicted_s"] for r in rows], marker="o", label="llama.cpp prefill of E tokens")
        for kind in KINDS:
            ax.plot(e, [r[f"{kind}_step_s"] for r in rows], marker="o", label=f"kvdirect step ({kind})")
        ax.plot(e, [r["full_step_s"] for r in rows], marker="o", label="full cache step")
        ax.set(xscale="log", yscale="log", xlabel="evicted tokens E", ylabel="seconds", title=f"{name}: time")
        ax.legend(fontsize=8)
        ax = axes[1][col]
        for kind in KINDS:
            ax.plot(e, [r[f"{kind}_compute_bytes"] / 2**20 for r in rows], marker="o", label=f"compute ({kind})")
            ax.plot(
                e,
                [r[f"{kind}_checkpoint_bytes"] / 2**20 for r in rows],
                marker="x",
                linestyle="--",
                label=f"checkpoint ({kind})",
            )
        ax.set(xlabel="evicted tokens E", ylabel="MiB (allocator / arrays)", title=f"{name}: memory")
        ax.legend(fontsize=8)
    save(fig, path)


def panel_per_model(results: dict):
    """A figure with one panel per model: (figure, [(model name, its results, its axes)])."""
    fig, axes = pyplot().subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    return fig, [(name, result, axes[0][col]) for col, (name, result) in enumerate(results.items())]


def plot_prompts(results: dict, path: Path) -> None:
    fig, panels = panel_per_model(results)
    for name, rows, ax in panels:
        for mode in PROMPT_MODES:
            points = [(r["tokens"], r[mode]["seconds"]) for r in rows if mode in r]
            ax.plot(*zip(*points), marker="o", label=mode.replace("_", " "))
        ax.set(xscale="log", yscale="log", xlabel="prompt tokens N", ylabel="seconds")
        ax.set_title(f"{name}: prompt at budget {rows[0]['budget']}")
        ax.legend(fontsize=8)
    save(fig, path)


def plot_drafting(results: dict, path: Path) -> None:
    fig, panels = panel_per_model(results)
    for name, result, ax in panels:
        for kind, by_budget in result["table"].items():
            budgets = sorted(int(b) for b in by_budget)
            for key, style in (("undrafted_tokens_per_s", "--"), ("drafted_tokens_per_s", "-")):
                label = f"{kind}, {'drafted' if style == '-' else 'no drafting'}"
                ax.plot(budgets, [by_budget[str(b)][key] for b in budgets], style, marker="o", label=label)
        ax.set(yscale="log", xlabel="KV budget (tokens) of a 512-token context", ylabel="tokens/s")
        ax.set_title(f"{name}: kvdirect decoding")
        ax.legend(fontsize=8)
    save(fig, path)


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--one-prompt":
        name, mode, n, budget = sys.argv[2:6]
        print(json.dumps(run_prompt(name, mode, int(n), int(budget))))
        return 0
    p = parser(__doc__, "kvdirect_cost")
    p.add_argument("--sections", nargs="+", choices=["steps", "prompts", "drafting"], default=None)
    p.add_argument("--evicted", nargs="+", type=int, default=[128, 512, 1024, 2048])
    p.add_argument("--budget", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prompt-lengths", nargs="+", type=int, default=[512, 2048, 4096])
    p.add_argument("--prompt-budget", type=int, default=128)
    p.add_argument("--chunked-max", type=int, default=2048)
    p.add_argument("--contexts", type=int, default=2)
    p.add_argument("--draft-budgets", nargs="+", type=int, default=[64, 128, 256])
    p.add_argument("--off-steps", type=int, default=12)
    args = p.parse_args(argv)
    sections = args.sections or ["steps", "prompts", "drafting"]
    report: dict = json.loads(args.out.read_text()) if args.sections and args.out.exists() else {}
    report["profile"] = "exact"
    if "steps" in sections:
        report["steps"] = {"budget": args.budget, "repeats": args.repeats, "models": measure_steps(args)}
    if "prompts" in sections:
        report["prompts"] = {
            "budget": args.prompt_budget,
            "models": {
                name: measure_prompts(name, args.prompt_lengths, args.prompt_budget, args.chunked_max)
                for name in args.model
            },
        }
    if "drafting" in sections:
        drafting = {}
        for name in args.model:
            with pykvd.Model(name) as model:
                rows = measure_drafting(model, args.contexts, args.draft_budgets, args.off_steps)
            drafting[name] = {"rows": rows, "table": drafting_summary(rows)}
        report["drafting"] = {
            "context": CONTEXT,
            "generated": GENERATED,
            "off_steps": args.off_steps,
            "models": drafting,
        }

    def draw(path: Path) -> None:
        for section, plot in (("steps", plot_steps), ("prompts", plot_prompts), ("drafting", plot_drafting)):
            if section in report:
                models = report[section]["models"]
                plot(models, path if section == "steps" else path.with_name(f"{path.stem}_{section}{path.suffix}"))

    write_report(args, report, draw)
    return 0


def measure_steps(args) -> dict:
    results = {}
    for name in args.model:
        with pykvd.Model(name) as model:
            rows = []
            for n_evicted in args.evicted:
                rows.append(measure(model, n_evicted, args.budget, args.repeats))
                r = rows[-1]
                print(
                    f"{name} E={n_evicted}: prefill {r['prefill_evicted_s']:.3f} s, full step "
                    f"{r['full_step_s'] * 1e3:.1f} ms, tokens step {r['tokens_step_s']:.3f} s "
                    f"({r['tokens_vs_prefill']:.2f}x prefill), residuals step {r['residuals_step_s']:.3f} s "
                    f"({r['residuals_vs_prefill']:.2f}x), compute {r['tokens_compute_bytes'] / 2**20:.1f} / "
                    f"{r['residuals_compute_bytes'] / 2**20:.1f} MiB",
                    file=sys.stderr,
                    flush=True,
                )
            results[name] = {"rows": rows, **{f"{kind}_linearity": linearity(rows, kind) for kind in KINDS}}
    return results


if __name__ == "__main__":
    sys.exit(main())
