"""A twenty-turn chat under a KV budget well below the conversation's full KV.

One fixed conversation (a system prompt, then twenty user turns about France and Paris, as in
the paper; replies of at most 30 greedy tokens) through the model's chat template, for the full
cache and for each bounded configuration. Per turn it records what llama.cpp's allocator and the
OS report (KV buffer, compute buffer, process RSS), the checkpoint bytes the policy keeps, the
wall time of the turn, the tokens in the conversation and in cells, and how many of the reply's
tokens equal the full cache's reply at the same turn (each configuration continues its own
conversation, as a user would see it).

kvdirect runs with each checkpoint kind named in --checkpoints and its defaults: a turn longer than
the budget in one pass, and adaptive drafting (its replies must equal the full cache's). After each
turn it also times --undrafted-steps steps without drafting at the same length, past the reply (the
next turn drops them again), so each turn's tokens/s with and without drafting come from one run.
The per-turn wall times from before the single pass and drafting are carried over from the report
this run replaces, beside the new ones, as old_wall_s. --turns shortens the
conversation.

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


def undrafted_rate(session, n_steps: int) -> float:
    """kvdirect's tokens/s without drafting at the conversation's current length: n_steps plain steps
    past the reply, which the next turn's chat drops again (it keeps only the conversation's tokens)."""
    before, setting = session.stats, session.draft
    session.draft = 0
    try:
        session.generate(max_tokens=n_steps + 1, stop_at_eog=False)
    finally:
        session.draft = setting
    after = session.stats
    return (after.n_decode_steps - before.n_decode_steps) / (after.decode_s - before.decode_s)


def turn_rates(before, after) -> dict:
    steps, seconds = after.n_decode_steps - before.n_decode_steps, after.decode_s - before.decode_s
    verifies = after.n_verifies - before.n_verifies
    accepted = after.n_draft_accepted - before.n_draft_accepted
    judged = accepted + after.n_draft_rejected - before.n_draft_rejected
    return {
        "decode_tokens_per_s": steps / seconds if seconds else 0.0,
        "verifies": verifies,
        "acceptance": accepted / judged if judged else None,
        "tokens_per_verify": (verifies + accepted) / verifies if verifies else None,
    }


def converse(model, n_turns: int, undrafted_steps: int = 0, **session_args) -> list[dict]:
    turns = []
    with model.session(**session_args) as session:
        for i, text in enumerate(TURNS[:n_turns]):
            messages = ([{"role": "system", "content": SYSTEM}] if i == 0 else []) + [{"role": "user", "content": text}]
            start = time.perf_counter()
            before = session.stats
            reply_tokens_before = before.n_generated
            session.chat(messages, max_tokens=MAX_TOKENS)
            wall = time.perf_counter() - start
            s = session.stats
            rates = turn_rates(before, s)
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
                    **rates,
                }
            )
            if undrafted_steps and session.policy == "kvdirect":
                turns[-1]["undrafted_tokens_per_s"] = undrafted_rate(session, undrafted_steps)
    return turns


def token_match(ref: list[int], got: list[int]) -> float:
    n = max(len(ref), len(got), 1)
    return sum(a == b for a, b in zip(ref, got)) / n


def run_model(
    name: str, budget: int, policies: list[str], checkpoints: list[str], n_turns: int, undrafted_steps: int
) -> dict:
    template = "gemma" if name == "gemma3" else None
    with pykvd.Model(name, chat_template=template) as model:
        full = converse(model, n_turns, n_ctx=2048)
        configs = {"full": full}
        for policy in policies:
            if policy == "kvdirect":
                for kind in checkpoints:
                    configs[f"kvdirect-{kind}@{budget}"] = converse(
                        model, n_turns, undrafted_steps, kv_budget=budget, policy=policy, checkpoint=kind
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


def old_wall_times() -> dict:
    """model -> config -> per-turn wall seconds from before drafting, from the report this run replaces."""
    old: dict = {}
    path = RESULTS / "chat.json"
    if path.exists():
        for name, result in json.loads(path.read_text())["models"].items():
            for label, turns in result["configs"].items():
                if all("old_wall_s" in t for t in turns):
                    old.setdefault(name, {})[label] = [t["old_wall_s"] for t in turns]
                elif "decode_tokens_per_s" not in turns[0]:  # a report from before drafting
                    old.setdefault(name, {})[label] = [t["wall_s"] for t in turns]
    return old


def summary(configs: dict) -> dict:
    """Per configuration: total wall time (new and old), and for kvdirect the tokens/s with and
    without drafting over the conversation (harmonic means of the per-turn rates)."""
    out = {}
    for label, turns in configs.items():
        row = {"wall_s": sum(t["wall_s"] for t in turns), "match_vs_full": min(t["token_match_vs_full"] for t in turns)}
        if all("old_wall_s" in t for t in turns):
            row["old_wall_s"] = sum(t["old_wall_s"] for t in turns)
        if all("undrafted_tokens_per_s" in t for t in turns):
            timed = [t for t in turns if t["decode_tokens_per_s"] > 0]  # a reply of one token decodes nothing
            drafted = [t["decode_tokens_per_s"] for t in timed]
            undrafted = [t["undrafted_tokens_per_s"] for t in timed]
            row["drafted_tokens_per_s"] = len(turns) / sum(1 / r for r in drafted)
            row["undrafted_tokens_per_s"] = len(turns) / sum(1 / r for r in undrafted)
            row["speedup"] = row["drafted_tokens_per_s"] / row["undrafted_tokens_per_s"]
            row["speedup_min_turn"] = min(d / u for d, u in zip(drafted, undrafted))
        out[label] = row
    return out


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
                line = ax.plot([t["turn"] for t in turns], [t[key] / scale for t in turns], marker="o", label=config)
                if key == "wall_s" and all("old_wall_s" in t for t in turns):
                    old = [t["old_wall_s"] for t in turns]
                    ax.plot(
                        [t["turn"] for t in turns], old, "--", color=line[0].get_color(), label=f"{config} (before)"
                    )
            if key == "wall_s":
                ax.set_yscale("log")
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
    p.add_argument("--undrafted-steps", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS / "chat.json")
    p.add_argument("--plot", type=Path, default=RESULTS / "chat.png")
    args = p.parse_args(argv)
    old = old_wall_times()
    results = {
        name: run_model(name, args.budget, args.policies, args.checkpoints, args.turns, args.undrafted_steps)
        for name in args.model
    }
    for name, result in results.items():
        for label, turns in result["configs"].items():
            for turn, wall in zip(turns, old.get(name, {}).get(label, [])):
                turn["old_wall_s"] = wall
        result["summary"] = summary(result["configs"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"max_tokens_per_reply": MAX_TOKENS, "turns": args.turns, "models": results}, indent=2) + "\n"
    )
    plot(results, args.plot)
    print(f"wrote {args.out} and {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
