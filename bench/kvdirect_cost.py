"""What kvdirect costs per generated token, against the full cache and llama.cpp's own prefill.

For E evicted tokens (a context of E + budget tokens, kvdirect holding `budget` of them in cells),
all in one run per model, interleaved, each time the median of --repeats:

* the kvdirect decode step (one new token; every evicted token recomputed at every layer), for each
  checkpoint kind, and its compute buffer as llama.cpp's allocator reports it;
* the full cache's decode step at the same context length;
* llama.cpp's prefill of E tokens in a fresh context: the work the tokens checkpoint redoes.

Bars (issue 4): the tokens step costs at most 1.25x the prefill of E tokens; the compute buffer
grows at most linearly with E (the JSON gives bytes per evicted token at each E).

Usage: python bench/kvdirect_cost.py [--model smollm2 gemma3] [--evicted 128 512 1024 2048]
                                     [--budget 256] [--repeats 3]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

import pykvd
from common import parser, pyplot, save, write_report
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
        with model.session(kv_budget=budget, policy="kvdirect", checkpoint=kind) as bounded:
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


def plot(results: dict, path: Path) -> None:
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


def main(argv=None) -> int:
    p = parser(__doc__, "kvdirect_cost")
    p.add_argument("--evicted", nargs="+", type=int, default=[128, 512, 1024, 2048])
    p.add_argument("--budget", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
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
    report = {"profile": "exact", "budget": args.budget, "repeats": args.repeats, "models": results}
    write_report(args, report, lambda path: plot(results, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
