"""Helpers the benchmark scripts share: distributions, the command line, figures."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max()
    p = np.exp(z)
    return p / p.sum()


def kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) in nats."""
    mask = p > 0
    return float(np.sum(p[mask] * (np.log(p[mask]) - np.log(np.maximum(q[mask], 1e-300)))))


def parser(doc: str, results: str | None = None) -> argparse.ArgumentParser:
    """A script's argument parser, with the --model list every benchmark takes and, given a results
    name, --out and --plot defaulting to bench/results/<name>.json and .png."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--model", nargs="+", default=["smollm2", "gemma3"])
    if results is not None:
        p.add_argument("--out", type=Path, default=RESULTS / f"{results}.json")
        p.add_argument("--plot", type=Path, default=RESULTS / f"{results}.png")
    return p


def pyplot():
    """matplotlib's pyplot on a file-only backend (benchmarks run without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_report(args, report: dict, draw) -> None:
    """The JSON report to args.out, the figure draw(path) makes to args.plot."""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    draw(args.plot)
    print(f"wrote {args.out} and {args.plot}", file=sys.stderr)
