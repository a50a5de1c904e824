"""`pykvd plan`: bytes held and per-step recompute of every policy, from the model's real dimensions."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pykvd.plan import plan, weights_per_layer


def test_rows_for_every_policy_and_checkpoint_kind(smollm2):
    rows = {(r.policy, r.checkpoint): r for r in plan(smollm2, 4096, 512)}
    assert set(rows) == {
        ("full", "-"),
        ("window", "-"),
        ("streaming", "-"),
        ("h2o", "-"),
        ("tova", "-"),
        ("snapkv", "-"),
        ("kvdirect", "tokens"),
        ("kvdirect", "residuals"),
    }
    assert rows["full", "-"].kv_bytes == 4096 * 23040 == 8 * rows["window", "-"].kv_bytes
    assert rows["streaming", "-"].forgotten_tokens == 3584 and not rows["streaming", "-"].exact
    tokens, residuals = rows["kvdirect", "tokens"], rows["kvdirect", "residuals"]
    assert tokens.exact and residuals.exact and tokens.forgotten_tokens == 0
    assert tokens.checkpoint_bytes == 4 * 4096
    assert residuals.checkpoint_bytes == 4 * 576 * 30 * 4096  # one float32 h^(l) per layer for every token
    assert residuals.checkpoint_bytes > rows["full", "-"].kv_bytes  # bigger than the cache it replaces
    assert 0 < residuals.recompute_gflop_per_step < tokens.recompute_gflop_per_step
    for row in (tokens, residuals):  # drafting shares the recompute among the accepted tokens
        assert row.draft_k > 0 and row.gflop_per_token_drafted < row.recompute_gflop_per_step / 2


def test_the_drafted_cost_follows_the_assumed_acceptance(smollm2):
    def kvdirect(acceptance):
        rows = plan(smollm2, 4096, 512, acceptance=acceptance)
        return next(r for r in rows if r.checkpoint == "tokens")

    never, often, always = kvdirect(0.0), kvdirect(0.85), kvdirect(1.0)
    assert never.draft_k == 0 and never.gflop_per_token_drafted == never.recompute_gflop_per_step
    assert always.gflop_per_token_drafted < often.gflop_per_token_drafted < never.gflop_per_token_drafted
    assert always.draft_k == 16
    with pytest.raises(ValueError):
        plan(smollm2, 4096, 512, acceptance=1.5)


def test_layer_weights_come_from_the_gguf(smollm2, gemma3):
    for model in (smollm2, gemma3):
        counts = weights_per_layer(model)
        assert len(counts) == model.info.n_layer and len(set(counts)) == 1
        assert sum(counts) < model.info.n_params


def test_cli(tmp_path):
    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "pykvd", "plan", *args], capture_output=True, text=True, timeout=300
        )

    result = cli("smollm2", "--context", "2048", "--kv-budget", "256", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["budget_tokens"] == 256 and len(report["rows"]) == 8
    table = cli("gemma3", "--context", "2048", "--kv-budget", "4MiB")
    assert table.returncode == 0 and "kvdirect   residuals" in table.stdout
    assert "assuming 85% of drafts are accepted" in table.stdout
    assert (
        json.loads(cli("smollm2", "--context", "900", "--kv-budget", "64", "--acceptance", "0.5", "--json").stdout)[
            "assumed_acceptance"
        ]
        == 0.5
    )
    for bad in (
        ["--context", "0", "--kv-budget", "64"],
        ["--context", "100", "--kv-budget", "2"],
        ["--context", "100", "--kv-budget", "nonsense"],
        ["--context", "100", "--kv-budget", "64", "--acceptance", "1.5"],
        ["--context", "100", "--kv-budget", "64", "--acceptance", "nan"],
    ):
        result = cli("smollm2", *bad)
        assert result.returncode == 2 and result.stderr.startswith("pykvd: error:")


@pytest.mark.parametrize("budget", [0, 4])
def test_budget_too_small(smollm2, budget):
    with pytest.raises(ValueError):
        plan(smollm2, 100, budget)
