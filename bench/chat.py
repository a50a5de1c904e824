"""A twenty-turn chat under a KV budget well below the conversation's full KV.

One fixed conversation (a system prompt, then twenty user turns about France and Paris, as in
the paper; replies of at most 30 greedy tokens) through the model's chat template, for the full
cache and for each bounded configuration. Per turn it records what llama.cpp's allocator and the
OS report (KV buffer, compute buffer, process RSS), the checkpoint bytes the policy keeps, the
wall time of the turn, the tokens in the conversation and in cells, and how many of the reply's
tokens equal the full cache's reply at the same turn (each configuration continues its own
conversation, as a user would see it).

kvdirect runs with each checkpoint kind named in --checkpoints (its replies must equal the full
cache's). --turns shortens the conversation (the tokens kind re-runs every evicted token at every
step, so its twenty turns take long on a laptop CPU).

Usage: python bench/chat.py [--model smollm2 gemma3] [--budget 128] [--policies streaming kvdirect]
                            [--checkpoints tokens residuals] [--turns 20]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pykvd
from common import parser, pyplot, save

RESULTS = Path(__file__).resolve().parent / "results"
SYSTEM = "You are a helpful travel guide. Answer briefly."
TURNS = (
    "What is the capital of France?",
    "What is the most famous tower there?",
    "Who designed it?",
    "When was it built?",
    "How tall is it?",
    "Can visitors go to the top?",
    "What river flows through the city?",
    "Name a famous museum in the city.",
    "What painting is most famous there?",
    "Who painted it?",
    "What is a typical French breakfast?",
    "Name a famous cathedral in Paris.",
    "What happened to it in 2019?",
    "What is the main avenue of Paris called?",
    "What monument stands at its end?",
    "Which hill has a white basilica?",
    "What is the name of that basilica?",
    "How do people get around Paris?",
    "What is a good month to visit?",
    "Summarise our conversation in one sentence.",
)
MAX_TOKENS = 30


def converse(model, n_turns: int, **session_args) -> list[dict]:
    turns = []
    with model.session(**session_args) as session:
        for i, text in enumerate(TURNS[:n_turns]):
            messages = ([{"role": "system", "content": SYSTEM}] if i == 0 else []) + [{"role": "user", "content": text}]
            start = time.perf_counter()
            reply_tokens_before = session.stats.n_generated
            session.chat(messages, max_tokens=MAX_TOKENS)
            wall = time.perf_counter() - start
            s = session.stats
            turns.append(
                {
                    "turn": i + 1,
                    "wall_s": wall,
                    "n_tokens": s.n_tokens,
                    "n_cached": s.n_cached,
                    "kv_bytes": s.kv_bytes,
                    "compute_bytes": s.compute_bytes,
                    "rss_bytes": s.rss_bytes,
                    # llama.cpp allocates every cell up front: the cells in use times the measured bytes per cell
                    "kv_bytes_in_use": int(s.n_cached * s.kv_bytes / s.n_ctx),
                    "checkpoint_bytes": s.checkpoint_bytes,
                    "reply": session.messages[-1]["content"],
                    "reply_tokens": session.tokens[len(session.tokens) - (s.n_generated - reply_tokens_before) :],
                }
            )
    return turns


def token_match(ref: list[int], got: list[int]) -> float:
    n = max(len(ref), len(got), 1)
    return sum(a == b for a, b in zip(ref, got)) / n


def run_model(name: str, budget: int, policies: list[str], checkpoints: list[str], n_turns: int) -> dict:
    template = "gemma" if name == "gemma3" else None
    with pykvd.Model(name, chat_template=template) as model:
        full = converse(model, n_turns, n_ctx=2048)
        configs = {"full": full}
        for policy in policies:
            if policy == "kvdirect":
                for kind in checkpoints:
                    configs[f"kvdirect-{kind}@{budget}"] = converse(
                        model, n_turns, kv_budget=budget, policy=policy, checkpoint=kind
                    )
            else:
                configs[f"{policy}@{budget}"] = converse(model, n_turns, kv_budget=budget, policy=policy)
        for label, turns in configs.items():
            for ref, turn in zip(full, turns):
                turn["token_match_vs_full"] = token_match(ref["reply_tokens"], turn["reply_tokens"])
            last = turns[-1]
            print(
                f"{name} {label}: {last['n_tokens']} tokens, {last['n_cached']} in cells, KV "
                f"{last['kv_bytes'] / 2**20:.2f} MiB, mean match "
                f"{sum(t['token_match_vs_full'] for t in turns) / len(turns):.2f}",
                file=sys.stderr,
                flush=True,
            )
        return {"budget": budget, "configs": configs}


def plot(results: dict, path: Path) -> None:
    plt = pyplot()
    panels = (
        ("kv_bytes", "KV buffer (MiB, allocator)", 2**20),
        ("checkpoint_bytes", "checkpoint (MiB)", 2**20),
        ("rss_bytes", "process RSS (MiB)", 2**20),
        ("wall_s", "turn wall time (s)", 1),
    )
    fig, axes = plt.subplots(len(panels), len(results), figsize=(6 * len(results), 3.4 * len(panels)), squeeze=False)
    for col, (name, result) in enumerate(results.items()):
        for row, (key, label, scale) in enumerate(panels):
            ax = axes[row][col]
            for config, turns in result["configs"].items():
                ax.plot([t["turn"] for t in turns], [t[key] / scale for t in turns], marker="o", label=config)
            ax.set_xlabel("turn")
            ax.set_ylabel(label)
            ax.set_title(f"{name}: twenty-turn chat")
            ax.legend(fontsize=7)
    save(fig, path)


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--budget", type=int, default=128)
    p.add_argument("--policies", nargs="+", default=["streaming", "kvdirect"])
    p.add_argument("--checkpoints", nargs="+", default=["tokens", "residuals"], choices=["tokens", "residuals"])
    p.add_argument("--turns", type=int, default=len(TURNS))
    p.add_argument("--out", type=Path, default=RESULTS / "chat.json")
    p.add_argument("--plot", type=Path, default=RESULTS / "chat.png")
    args = p.parse_args(argv)
    results = {name: run_model(name, args.budget, args.policies, args.checkpoints, args.turns) for name in args.model}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"max_tokens_per_reply": MAX_TOKENS, "turns": args.turns, "models": results}, indent=2) + "\n"
    )
    plot(results, args.plot)
    print(f"wrote {args.out} and {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
