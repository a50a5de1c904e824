"""Helpers the benchmark scripts share: distributions, the command line, figures."""

from __future__ import annotations

import argparse

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max()
    p = np.exp(z)
    return p / p.sum()


def kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) in nats."""
    mask = p > 0
    return float(np.sum(p[mask] * (np.log(p[mask]) - np.log(np.maximum(q[mask], 1e-300)))))


def parser(doc: str) -> argparse.ArgumentParser:
    """A script's argument parser, with the --model list every benchmark takes."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--model", nargs="+", default=["smollm2", "gemma3"])
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
