"""Two consistency experiments of the residual stream, on both real models.

Residual patching
    Prompt B is prefilled; then the last token's residual at layer l is replaced by the
    one captured from prompt A (same length, same position) and layers l..L-1 are re-run
    from it (P3, writing the last token's K/V in place). The next-token distribution is
    compared with A's own (KL(p_A || p_patched)) for every layer l. The earlier tokens'
    K/V still come from B, so for l < L the patched run is *not* A's run: the KL shows how
    much of the next-token distribution the last token's residual alone carries at each
    depth. Patching B's own residual back must reproduce B's logits bit for bit; that is
    the real check here (determinism of the partial-depth forward), not evidence of any
    "Markov property" of the residual stream.

Batch invariance
    One 160-token prompt prefilled in one batch, in chunks (n_batch 16 split into ubatches of 7)
    and token by token: every layer's residuals, every stored K/V row and the last
    logits compared bit for bit. In the exact profile (ggml's batch-invariant kernels) they
    are identical; in the fast profile (llama.cpp's own kernel choice by batch size, flash
    attention auto, repacked weights) the differences are reported as measured.

Usage: python bench/consistency.py [--model smollm2 gemma3] [--out bench/results/consistency.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from common import kl, parser, softmax
from prompts import build_prompt

RESULTS = Path(__file__).resolve().parent / "results"
DONOR = "The old lighthouse keeper climbed the stairs every evening to light the lamp for the ships"
RECIPIENT = "A young baker in the village rose before dawn each morning to knead bread for the market"
INVARIANCE_TOKENS = 160  # past 64 query rows, where flash attention switches to its tiled kernel


def residual_patching(model) -> dict:
    n_layer = model.info.n_layer
    a_ids, b_ids = model.tokenize(DONOR), model.tokenize(RECIPIENT)
    n = min(len(a_ids), len(b_ids))
    a_ids, b_ids = a_ids[:n], b_ids[:n]
    with model.session(n_ctx=256) as donor, model.session(n_ctx=256) as recipient:
        with donor.capture(range(n_layer)) as a_cap:
            donor.feed(a_ids)
        p_donor = softmax(donor.logits())
        with recipient.capture(range(n_layer)) as b_cap:
            recipient.feed(b_ids)
        own_logits = recipient.logits().copy()
        last = [n - 1]
        rows = []
        for layer in range(n_layer):
            _, patched = recipient.forward_layers(a_cap.residuals[layer][-1:], last, layer, n_layer, logits=True)
            _, restored = recipient.forward_layers(b_cap.residuals[layer][-1:], last, layer, n_layer, logits=True)
            rows.append(
                {
                    "layer": layer,
                    "kl_donor_vs_patched": kl(p_donor, softmax(patched[0])),
                    "top1_matches_donor": int(np.argmax(patched[0])) == int(np.argmax(p_donor)),
                    "self_patch_max_dlogit": float(np.max(np.abs(restored[0] - own_logits))),
                }
            )
        baseline = kl(p_donor, softmax(own_logits))
    return {
        "n_tokens": n,
        "kl_donor_vs_unpatched": baseline,
        "layers": rows,
        "self_patch_exact": all(r["self_patch_max_dlogit"] == 0 for r in rows),
    }


def _prefill(model, exact: bool, **session_args) -> dict:
    n_layer = model.info.n_layer
    ids = model.tokenize(build_prompt(model, INVARIANCE_TOKENS))[:INVARIANCE_TOKENS]
    with model.session(n_ctx=256, exact=exact, **session_args) as session:
        with session.capture(range(n_layer)) as cap:
            session.feed(ids)
        kv = [session.read_kv(layer, pos) for layer in range(n_layer) for pos in range(len(session.tokens))]
        return {"residuals": cap.residuals, "kv": kv, "logits": session.logits().copy()}


def _max_diff(a: dict, b: dict) -> dict:
    return {
        "residuals": max(
            float(np.max(np.abs(a["residuals"][layer] - b["residuals"][layer]))) for layer in a["residuals"]
        ),
        "k": max(float(np.max(np.abs(x[0] - y[0]))) for x, y in zip(a["kv"], b["kv"])),
        "v": max(float(np.max(np.abs(x[1] - y[1]))) for x, y in zip(a["kv"], b["kv"])),
        "logits": float(np.max(np.abs(a["logits"] - b["logits"]))),
        "same_top1": int(np.argmax(a["logits"])) == int(np.argmax(b["logits"])),
    }


def batch_invariance(model, exact: bool) -> dict:
    whole = _prefill(model, exact)
    chunked = _prefill(model, exact, n_batch=16, n_ubatch=7)
    single = _prefill(model, exact, n_batch=1)
    return {"one_batch_vs_chunks": _max_diff(whole, chunked), "one_batch_vs_token_by_token": _max_diff(whole, single)}


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--out", type=Path, default=RESULTS / "consistency.json")
    args = p.parse_args(argv)
    import pykvd

    report = {}
    for name in args.model:
        with pykvd.Model(name) as model:
            report[name] = {
                "residual_patching": residual_patching(model),
                "batch_invariance_exact": batch_invariance(model, exact=True),
            }
        with pykvd.Model(name, exact=False) as model:
            report[name]["batch_invariance_fast"] = batch_invariance(model, exact=False)
        print(f"{name}: done", file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
