"""Recompute versus read: the measurement behind the paper's "recomputing K/V is up to 5x faster".

For N evicted tokens (1 .. 4096) at one layer (the middle one):

* recompute: rebuild that layer's K/V of the N tokens from their residuals h^(l) (P2, one layer:
  norm, K/V projections, K norm, RoPE, row writes);
* read: what a decode step does with the same K/V already in cells: one query token runs the
  layer (P3, one layer) attending over the N cached rows.

Both are one pruned llama.cpp graph per call with the same build overhead, so the N = 1 row shows
that floor. The paper compared recomputation with a tensor copy, not with attention reading the
cache in place; this compares it with the read a decode step actually does. Times are medians of
interleaved repeats (2 threads, exact profile).

Usage: python bench/recompute.py [--model smollm2 gemma3] [--tokens 1 4 16 64 256 1024 4096] [--repeats 7]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import pykvd
from common import parser, pyplot, save
from prompts import build_prompt

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_model(name: str, sizes: list[int], repeats: int) -> dict:
    rows = []
    with pykvd.Model(name) as model:
        layer = model.info.n_layer // 2
        n_max = max(sizes)
        ids = model.tokenize(build_prompt(model, n_max + 1))[: n_max + 1]
        with model.session(n_ctx=n_max + 16) as session:
            with session.capture([layer]) as capture:
                session.feed(ids)
            h = capture.residuals[layer]
            positions = capture.positions
            # Largest N first: evicting the tail leaves exactly the first N + 1 positions in cells.
            for n in sorted(sizes, reverse=True):
                if n + 1 < len(session.tokens):
                    session.evict(range(n + 1, len(session.tokens)))
                block = np.ascontiguousarray(h[None, :n])
                query = np.ascontiguousarray(h[n : n + 1])

                def recompute():
                    session.refill(block, positions[:n], range(layer, layer + 1))

                def read():
                    session.forward_layers(query, positions[n : n + 1], layer, layer + 1)

                times = {"recompute": [], "read": []}
                for r in range(repeats):
                    order = (("recompute", recompute), ("read", read))
                    for label, fn in order if r % 2 == 0 else order[::-1]:
                        times[label].append(timed(fn))
                med = {k: statistics.median(v) for k, v in times.items()}
                rows.append(
                    {
                        "n_tokens": n,
                        "layer": layer,
                        "seconds": times,
                        "median_s": med,
                        "recompute_over_read": med["recompute"] / med["read"],
                    }
                )
                print(
                    f"{name} N={n}: recompute {1e3 * med['recompute']:.2f} ms, read {1e3 * med['read']:.2f} ms, "
                    f"ratio {med['recompute'] / med['read']:.2f}",
                    file=sys.stderr,
                    flush=True,
                )
    return {"layer": layer, "rows": sorted(rows, key=lambda r: r["n_tokens"])}


def plot(results: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, result in results.items():
        ns = [r["n_tokens"] for r in result["rows"]]
        ax.plot(
            ns,
            [1e3 * r["median_s"]["recompute"] for r in result["rows"]],
            marker="o",
            label=f"{name}: recompute K/V of N tokens",
        )
        ax.plot(
            ns,
            [1e3 * r["median_s"]["read"] for r in result["rows"]],
            marker="s",
            linestyle="--",
            label=f"{name}: one query attends to N cached rows",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("N (tokens)")
    ax.set_ylabel("ms per call, one layer (median)")
    ax.legend(fontsize=8)
    save(fig, path)


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--tokens", nargs="+", type=int, default=[1, 4, 16, 64, 256, 1024, 4096])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", type=Path, default=RESULTS / "recompute.json")
    p.add_argument("--plot", type=Path, default=RESULTS / "recompute.png")
    args = p.parse_args(argv)
    results = {name: run_model(name, args.tokens, args.repeats) for name in args.model}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"profile": "exact", "models": results}, indent=2) + "\n")
    plot(results, args.plot)
    print(f"wrote {args.out} and {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
