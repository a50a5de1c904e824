"""The exact profile's speed against llama.cpp's default kernels: prefill and decode, per weight type.

Both sides are ``pykvd-llama-reference`` (a plain llama.cpp loop) over the same
installed build, which is the pinned tree with llama.cpp's default build options
(llamafile's tinyBLAS, the tiled K-quant matmul and repacking compiled in):

* default: what llama.cpp does on its own: flash attention auto, repacked
  weights, kernels chosen by batch size;
* exact: pykvd's exact profile for that model (``RuntimeProfile.for_weights``):
  flash attention on, ggml's batch-invariant mode on, repacked weights where
  the profile repacks them.

Per model: a prompt of at least --prompt-tokens tokens prefilled in one batch,
then --n-predict tokens decoded one by one. The two sides alternate within each
repeat (the order flips every repeat), so the machine's drift falls on both;
ratios are exact / default of the medians, and the median of the per-repeat
paired ratios. Models: the two real ones and random-weight llama models of
about 100M parameters in F16, Q8_0, Q4_0, Q4_K and Q6_K (models/sized.py,
written into pykvd's cache once).

With --before PROGRAM, a third side runs an older reference program (one built
against the exact build that preceded the batch-invariant kernels: no tinyBLAS,
GGML_LLAMAFILE=OFF) with that build's exact profile: flash attention off, no
repacked weights, GGML_CPU_TILED_MM=0.

Usage: python bench/profile_speed.py [--model smollm2 gemma3 F16 Q8_0 Q4_0 Q4_K Q6_K] [--repeats 7]
                                     [--before PROGRAM]
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from common import parser, pyplot, save, write_report
from prompts import build_prompt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "models"))

REAL_MODELS = ("smollm2", "gemma3")
SIZED_TYPES = ("F16", "Q8_0", "Q4_0", "Q4_K", "Q6_K")
BAR = 0.9


def model_path(name: str) -> Path:
    from pykvd import models

    if name.upper() not in SIZED_TYPES:
        return models.fetch(name)
    import sized

    path = models.cache_dir() / "bench" / f"llama-100m-{name.lower()}.gguf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        sized.write_sized_gguf(name, partial)
        partial.rename(path)
    return path


# The exact profile before the batch-invariant kernels, for --before.
BEFORE_SETTINGS = ["--flash-attn", "0", "--extra-bufts", "0"]


def run_once(path: Path, prompt: str, args, side: str, profile) -> dict:
    from pykvd import paths

    program = args.before if side == "before" else str(paths.reference_program())
    command = [program, "-m", str(path), "-p", prompt, "-n", str(args.n_predict)]
    command += ["-c", str(args.n_ctx), "-b", "512", "-t", str(args.threads), "--ignore-eos"]
    command += BEFORE_SETTINGS if side == "before" else profile.reference_flags()
    env = dict(os.environ, GGML_CPU_TILED_MM="0") if side == "before" else None
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    out = json.loads(done.stdout)
    n_prompt = len(out["prompt_tokens"])
    return {
        "prompt_tokens": n_prompt,
        "prefill_tok_s": n_prompt / out["prefill_s"],
        "decode_tok_s": out["n_decode_steps"] / out["decode_s"],
    }


def measure(name: str, args) -> dict:
    from pykvd import Model
    from pykvd.profile import RuntimeProfile

    path = model_path(name)
    with Model(path, probe=False) as model:
        prompt = build_prompt(model, args.prompt_tokens)
        exact = model.profile
        description = model.info.description
    # llama.cpp's own choice is what pykvd's fast profile asks for
    sides = {"default": RuntimeProfile.fast(), "exact": exact}
    if args.before:
        sides["before"] = None
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for repeat in range(args.repeats):
        order = list(sides) if repeat % 2 == 0 else list(reversed(sides))
        for side in order:
            runs[side].append(run_once(path, prompt, args, side, sides[side]))
    return {
        "model": str(path),
        "description": description,
        "exact_profile": {"flash_attn": exact.flash_attn, "extra_bufts": exact.extra_bufts, "batch_invariant": True},
        "runs": runs,
        "ratios": ratios(runs),
    }


def ratios(runs: dict[str, list[dict]]) -> dict:
    out = {}
    for key in ("prefill_tok_s", "decode_tok_s"):
        default = [r[key] for r in runs["default"]]
        out[key] = {"median_default": statistics.median(default)}
        for side in ("exact", "before"):
            if side not in runs:
                continue
            values = [r[key] for r in runs[side]]
            name = "" if side == "exact" else "before_"
            out[key][f"median_{side}"] = statistics.median(values)
            out[key][f"{name}ratio_of_medians"] = statistics.median(values) / statistics.median(default)
            out[key][f"{name}median_paired_ratio"] = statistics.median(e / d for e, d in zip(values, default))
    return out


def draw(report: dict):
    def figure(path):
        plt = pyplot()
        names = list(report["models"])
        fig, ax = plt.subplots(figsize=(10, 4))
        bars = [
            ("ratio_of_medians", "prefill_tok_s", "prefill", None),
            ("ratio_of_medians", "decode_tok_s", "decode", None),
        ]
        if report.get("before_program"):
            bars += [
                ("before_ratio_of_medians", "prefill_tok_s", "prefill, before", "//"),
                ("before_ratio_of_medians", "decode_tok_s", "decode, before", "//"),
            ]
        width = 0.8 / len(bars)
        for i, (ratio, key, label, hatch) in enumerate(bars):
            values = [report["models"][n]["ratios"][key][ratio] for n in names]
            offsets = [x + (i - (len(bars) - 1) / 2) * width for x in range(len(names))]
            ax.bar(offsets, values, width, label=label, hatch=hatch, alpha=0.55 if hatch else 1.0)
        ax.axhline(BAR, color="black", linestyle="--", linewidth=1, label=f"bar {BAR}x")
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names)
        ax.set_ylabel("exact profile / llama.cpp default")
        ax.set_title(
            f"exact profile speed, {report['prompt_tokens']}-token prefill and decode, {report['threads']} threads"
        )
        ax.legend(loc="lower right")
        save(fig, path)

    return figure


def main(argv=None) -> int:
    p = parser(__doc__, "profile_speed")
    p.set_defaults(model=[*REAL_MODELS, *SIZED_TYPES])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--n-predict", type=int, default=128)
    p.add_argument("--n-ctx", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--before", metavar="PROGRAM", help="an older pykvd-llama-reference to run as a third side")
    args = p.parse_args(argv)
    report = {
        "benchmark": "exact profile vs llama.cpp's default kernels (pykvd-llama-reference on both sides)",
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "prompt_tokens": args.prompt_tokens,
        "n_predict": args.n_predict,
        "threads": args.threads,
        "repeats": args.repeats,
        "bar": BAR,
        "before_program": args.before,
        "models": {},
    }
    for name in args.model:
        report["models"][name] = result = measure(name, args)
        r = result["ratios"]
        print(
            f"{name}: prefill {r['prefill_tok_s']['ratio_of_medians']:.2f}x, "
            f"decode {r['decode_tok_s']['ratio_of_medians']:.2f}x",
            file=sys.stderr,
            flush=True,
        )
    write_report(args, report, draw(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
