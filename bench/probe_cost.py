"""What the child-process probe adds to loading a model, the first time and once its verdict is cached.

For each model, `repeats` times: pykvd.Model(path) with an empty verdict cache (the probe runs: a child
process loads the file, creates a context and decodes a few tokens), then pykvd.Model(path) again (the
verdict comes from the cache), then pykvd.Model(path, probe=False). The file is loaded once before
timing so that every measurement finds it in the page cache. Medians are reported, in seconds.

Usage: python bench/probe_cost.py [--model smollm2 gemma3] [--repeats 3] [--out bench/results/probe_cost.json]
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import common
import pykvd
from pykvd import models


def _load_seconds(path: Path, **kwargs) -> float:
    started = time.perf_counter()
    model = pykvd.Model(path, **kwargs)
    elapsed = time.perf_counter() - started
    model.close()
    return elapsed


def measure(path: Path, repeats: int) -> dict:
    _load_seconds(path, probe=False)  # page cache and binding warm for every measurement below
    cold, warm, unprobed = [], [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="pykvd-probe-cost-") as cache:
            os.environ["PYKVD_CACHE_DIR"] = cache  # only the verdict cache: the path is already resolved
            cold.append(_load_seconds(path))
            warm.append(_load_seconds(path))
        unprobed.append(_load_seconds(path, probe=False))
    return {
        "file": path.name,
        "size_bytes": path.stat().st_size,
        "first_load_s": statistics.median(cold),
        "cached_load_s": statistics.median(warm),
        "unprobed_load_s": statistics.median(unprobed),
        "probe_cost_s": statistics.median(cold) - statistics.median(unprobed),
        "runs": {"first_load_s": cold, "cached_load_s": warm, "unprobed_load_s": unprobed},
    }


def main() -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=common.RESULTS / "probe_cost.json")
    args = parser.parse_args()
    paths = {name: models.fetch(name) for name in args.model}  # resolved before the cache dir moves
    report = {
        "command": "python bench/probe_cost.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "repeats": args.repeats,
        "models": {name: measure(path, args.repeats) for name, path in paths.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, row in report["models"].items():
        print(
            f"{name}: first load {row['first_load_s']:.2f} s, cached {row['cached_load_s']:.3f} s, "
            f"without probe {row['unprobed_load_s']:.3f} s",
            file=sys.stderr,
        )
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
