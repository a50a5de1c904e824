"""The paper's eviction table on llama.cpp: what each policy's bounded cache does to the output.

For every model, context, policy and KV budget (32, 64, 128, 256, 384 tokens), against the
full cache. The contexts (default 5) are 512 tokens each: a short seed instruction continued by
the model itself (temperature 0.8, a fixed seed per context), so the text is natural for the
model and not a repetition the policies could be judged on by copying alone.

* free-running: 50 greedy tokens from the bounded session; token match rate (the share of the
  50 positions where the token equals the full cache's) and the first divergence (50 = none);
* teacher-forced: the full cache's 50 tokens are fed to the bounded session one by one; at each
  step KL(p_full || p_policy) of the next-token distributions and whether the top-1 tokens agree.

Both metrics are defined here because the paper does not define its own. Policies that choose by
attention read llama.cpp's own softmax (exact profile). For kvdirect the free-running logits
are also compared with the full cache's (max |delta logit|); when its tokens equal the full cache's,
the free run is the teacher-forced run, so it is not repeated.

Usage: python bench/eviction.py [--model smollm2 gemma3] [--contexts 5] [--budgets 32 64 128 256 384]
                                [--policies window streaming h2o tova snapkv] [--checkpoint residuals]
                                [--out bench/results/eviction.json]
kvdirect: python bench/eviction.py --policies kvdirect --out bench/results/eviction_kvdirect.json \
                                   --plot bench/results/eviction_kvdirect.png
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

import pykvd
from common import kl, parser, pyplot, save, softmax
from pykvd.verify import greedy_steps

SEEDS = (
    "Write a story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a steam engine works, step by step, for a curious student.",
    "Describe a busy market in a harbour town on a summer morning.",
    "Write a letter from a traveller crossing the mountains in winter.",
    "Tell the history of a small village bakery over three generations.",
    "Explain why the sky is blue and why sunsets are red.",
    "Describe the life of a honeybee colony through one year.",
)

RESULTS = Path(__file__).resolve().parent / "results"
CONTEXT, GENERATED = 512, 50


def teacher_forced(session, tokens: list[int]) -> list[np.ndarray]:
    logits = []
    for token in tokens:
        logits.append(session.logits().copy())
        session.feed([token])
    return logits


def compare(ref_tokens, ref_logits, free_tokens, forced_logits) -> dict:
    same = [a == b for a, b in zip(ref_tokens, free_tokens)]
    kls = [kl(softmax(a), softmax(b)) for a, b in zip(ref_logits, forced_logits)]
    top1 = [int(np.argmax(a)) == int(np.argmax(b)) for a, b in zip(ref_logits, forced_logits)]
    return {
        "match_rate": sum(same) / len(same),
        "first_divergence": same.index(False) if False in same else len(same),
        "kl_mean": float(np.mean(kls)),
        "kl_max": float(np.max(kls)),
        "top1_agreement": sum(top1) / len(top1),
    }


def natural_context(model, seed_text: str, seed: int) -> np.ndarray:
    """CONTEXT tokens: the seed text, then the model's own sampled continuation."""
    sampling = pykvd.SamplingParams(temperature=0.8, top_p=0.95, seed=seed)
    with model.session(n_ctx=CONTEXT + 8) as writer:
        n_seed = writer.feed(seed_text)
        writer.generate(max_tokens=CONTEXT - n_seed + 1, sampling=sampling, stop_at_eog=False)
        return np.asarray(writer.tokens[:CONTEXT], dtype=np.int32)


def run_model(name: str, n_contexts: int, budgets: list[int], policies: list[str], checkpoint: str) -> dict:
    rows = []
    with pykvd.Model(name) as model:
        contexts = [natural_context(model, SEEDS[i % len(SEEDS)], seed=i) for i in range(n_contexts)]
        for i, ids in enumerate(contexts):
            with model.session(n_ctx=CONTEXT + GENERATED + 8) as full:
                full.feed(ids)
                ref_tokens, ref_logits = greedy_steps(full, GENERATED)
            for policy in policies:
                for budget in budgets:
                    start = time.perf_counter()
                    args = {"kv_budget": budget, "policy": policy}
                    if policy == "kvdirect":
                        args["checkpoint"] = checkpoint
                    with model.session(**args) as free:
                        free.feed(ids)
                        free_tokens, free_logits = greedy_steps(free, GENERATED)
                        kv_bytes = free.stats.kv_bytes
                    if policy == "kvdirect" and free_tokens == ref_tokens:
                        forced_logits = free_logits  # the same inputs: the teacher-forced run is this one
                    else:
                        with model.session(**args) as forced:
                            forced.feed(ids)
                            forced_logits = teacher_forced(forced, ref_tokens)
                    row = {
                        "context": i,
                        "policy": policy,
                        "budget": budget,
                        "kv_bytes": kv_bytes,
                        **compare(ref_tokens, ref_logits, free_tokens, forced_logits),
                        "seconds": time.perf_counter() - start,
                    }
                    if policy == "kvdirect":
                        row["checkpoint"] = checkpoint
                        row["max_abs_dlogit"] = max(
                            float(np.max(np.abs(a - b))) for a, b in zip(ref_logits, forced_logits)
                        )
                    rows.append(row)
                    print(
                        f"{name} context {i} {policy:>9} B={budget:<3} match {row['match_rate']:.2f} "
                        f"first div {row['first_divergence']:>2} KL {row['kl_mean']:.3f} "
                        f"top1 {row['top1_agreement']:.2f}",
                        file=sys.stderr,
                        flush=True,
                    )
    return {"rows": rows, "table": summarize(rows, policies, budgets)}


def summarize(rows: list[dict], policies: list[str], budgets: list[int]) -> dict:
    """policy -> budget -> means over prompts."""
    table: dict = {}
    for policy in policies:
        for budget in budgets:
            cell = [r for r in rows if r["policy"] == policy and r["budget"] == budget]
            table.setdefault(policy, {})[str(budget)] = {
                key: float(np.mean([r[key] for r in cell]))
                for key in ("match_rate", "first_divergence", "kl_mean", "top1_agreement")
            }
    return table


def plot(results: dict, budgets: list[int], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(2, len(results), figsize=(6 * len(results), 8), squeeze=False)
    for col, (name, result) in enumerate(results.items()):
        for policy, by_budget in result["table"].items():
            axes[0][col].plot(budgets, [by_budget[str(b)]["match_rate"] for b in budgets], marker="o", label=policy)
            axes[1][col].plot(budgets, [by_budget[str(b)]["kl_mean"] for b in budgets], marker="o", label=policy)
        axes[0][col].set_title(f"{name}: free-running token match vs full cache")
        axes[1][col].set_title(f"{name}: teacher-forced KL(full || policy), mean")
        for row in (0, 1):
            axes[row][col].set_xlabel("KV budget (tokens) of a 512-token context")
            axes[row][col].legend(fontsize=8)
        axes[1][col].set_yscale("symlog", linthresh=1e-3)
    save(fig, path)


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--contexts", type=int, default=5)
    p.add_argument("--budgets", nargs="+", type=int, default=[32, 64, 128, 256, 384])
    p.add_argument("--policies", nargs="+", default=["window", "streaming", "h2o", "tova", "snapkv"])
    p.add_argument(
        "--checkpoint",
        default="residuals",
        choices=["tokens", "residuals"],
        help="kvdirect's checkpoint kind (both are bit-exact; residuals is the faster here)",
    )
    p.add_argument("--out", type=Path, default=RESULTS / "eviction.json")
    p.add_argument("--plot", type=Path, default=RESULTS / "eviction.png")
    args = p.parse_args(argv)
    results = {
        name: run_model(name, args.contexts, args.budgets, args.policies, args.checkpoint) for name in args.model
    }
    report = {
        "context": CONTEXT,
        "generated": GENERATED,
        "contexts": args.contexts,
        "budgets": args.budgets,
        "profile": "exact",
        "models": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(results, args.budgets, args.plot)
    print(f"wrote {args.out} and {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
