"""Bounded sessions: a KV budget, allocated once, and the lossy policies that keep within it."""

from __future__ import annotations

import numpy as np
import pytest

from pykvd import BudgetError, PolicyError
from pykvd.budget import measured_bytes_per_cell

PROMPT = "Once upon a time, in a kingdom by the sea, there lived a dragon who collected old clocks."


def hot_positions(session):
    """Positions whose layer-0 K/V are in a cell, read from llama.cpp."""
    held = []
    for pos in range(len(session.tokens)):
        try:
            session.read_kv(0, pos)
            held.append(pos)
        except KeyError:
            pass
    return held


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_the_kv_buffer_is_the_budget_and_never_grows(request, name):
    model = request.getfixturevalue(name)
    per_cell = measured_bytes_per_cell(model)
    with model.session(kv_budget=48, policy="streaming") as session:
        assert session.n_ctx == 48
        sizes = {session.stats.kv_bytes}
        session.feed(PROMPT)
        for _ in range(4):
            session.generate(max_tokens=16, stop_at_eog=False)
            sizes.add(session.stats.kv_bytes)
        assert sizes == {48 * per_cell}
        assert len(session.tokens) > 48 and session.stats.n_cached == 48


def test_budgets_in_bytes(smollm2):
    per_cell = measured_bytes_per_cell(smollm2)
    assert per_cell == 23040  # SmolLM2: 30 layers x 2 x 192 f16 values
    with smollm2.session(kv_budget="2MiB") as session:
        assert session.kv_budget.tokens == 2 * 2**20 // 23040 == session.n_ctx
        assert session.stats.kv_bytes == session.kv_budget.tokens * 23040
    with smollm2.session(kv_budget="96") as session:  # a digit string counts tokens, as on the CLI
        assert session.n_ctx == 96


@pytest.mark.parametrize("budget", [0, 4, -3, "4", "100KB", "lots", 12.5, True, [64]])
def test_bad_budgets(smollm2, budget):
    with pytest.raises(BudgetError):
        smollm2.session(kv_budget=budget, policy="window")


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(kv_budget=64, policy="h2oo"), PolicyError),
        (dict(kv_budget=64, policy="full"), PolicyError),
        (dict(policy="window"), PolicyError),
        (dict(kv_budget=64, policy=3), PolicyError),
        (dict(kv_budget=64, n_sink=-1), PolicyError),
        (dict(kv_budget=64, n_ctx=512), ValueError),
    ],
)
def test_bad_policy_arguments(smollm2, kwargs, error):
    with pytest.raises(error):
        smollm2.session(**kwargs)


def test_the_policy_is_fixed_for_the_session(smollm2):
    with smollm2.session(kv_budget=64, policy="window") as session:
        with pytest.raises(AttributeError):
            session.policy = "streaming"
        assert session.policy == "window"


def test_window_keeps_the_most_recent_tokens(smollm2):
    with smollm2.session(kv_budget=32, policy="window") as session:
        session.feed(PROMPT)
        session.generate(max_tokens=30, stop_at_eog=False)
        n = len(session.tokens) - 1  # the last sampled token is not decoded yet
        assert hot_positions(session) == list(range(n - 32, n))


def test_streaming_keeps_sinks_and_the_recent_window(smollm2):
    with smollm2.session(kv_budget=32, policy="streaming", n_sink=4) as session:
        session.feed(PROMPT)
        session.generate(max_tokens=30, stop_at_eog=False)
        n = len(session.tokens) - 1
        assert hot_positions(session) == [0, 1, 2, 3] + list(range(n - 28, n))


def test_a_prompt_longer_than_the_budget_streams_through(smollm2):
    """A lossy policy processes such a prompt in chunks that fit, evicting as it goes."""
    long_prompt = " ".join([PROMPT] * 8)
    n_prompt = len(smollm2.tokenize(long_prompt))
    assert n_prompt > 3 * 32
    with smollm2.session(kv_budget=32, policy="streaming") as session:
        session.feed(long_prompt)
        assert len(session.tokens) == n_prompt and session.stats.n_cached == 32
        assert hot_positions(session) == [0, 1, 2, 3] + list(range(n_prompt - 28, n_prompt))
        assert len(session.generate(max_tokens=5, stop_at_eog=False).tokens) == 5


def test_a_budget_at_least_the_sequence_changes_nothing(smollm2):
    with smollm2.session() as full, smollm2.session(kv_budget=256, policy="streaming") as bounded:
        a = full.generate(PROMPT, max_tokens=20, stop_at_eog=False)
        b = bounded.generate(PROMPT, max_tokens=20, stop_at_eog=False)
        assert a.tokens == b.tokens
        assert np.array_equal(full.logits(), bounded.logits())


def test_every_synthetic_architecture(tiny_model):
    with tiny_model.session(kv_budget=24, policy="streaming") as session:
        before = session.stats.kv_bytes
        session.feed(PROMPT)
        session.generate(max_tokens=20, stop_at_eog=False)
        assert session.stats.kv_bytes == before and session.stats.n_cached == 24


def test_chat_turns_stay_within_the_budget(smollm2):
    with smollm2.session(kv_budget=64, policy="streaming") as session:
        for question in ("Name a colour.", "Name another.", "And a third one?"):
            session.chat(question, max_tokens=12)
            assert session.stats.n_cached <= 64
        assert len(session.tokens) > 64


def test_refill_on_a_bounded_session_respects_the_budget(smollm2):
    from pykvd import ContextOverflowError

    with smollm2.session(kv_budget=32, policy="window") as session:
        with session.capture(range(smollm2.info.n_layer)) as capture:
            session.feed(" ".join([PROMPT] * 2))
        with pytest.raises(ContextOverflowError, match="budget"):
            session.refill(capture, positions=range(0, 8))
        session.evict(range(len(session.tokens) - 8, len(session.tokens)))
        session.refill(capture, positions=range(0, 8))
        assert session.stats.n_cached == 32


def test_the_smallest_budget_is_the_sinks_plus_one(smollm2):
    with smollm2.session(kv_budget=5, policy="streaming") as session:
        out = session.generate(PROMPT, max_tokens=6, stop_at_eog=False)
        assert len(out.tokens) == 6
        n = len(session.tokens) - 1
        assert hot_positions(session) == [0, 1, 2, 3, n - 1]
    with pytest.raises(BudgetError, match="sink"):
        smollm2.session(kv_budget=4, policy="streaming")


def test_cli_bounded_run_and_bad_budgets():
    import subprocess
    import sys

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "pykvd", *args], capture_output=True, text=True, timeout=300)

    ok = cli(
        "run", "smollm2", "-p", PROMPT, "-n", "40", "--ignore-eos", "--kv-budget", "32", "--policy", "window", "--stats"
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() and "in 32 cells" in ok.stderr and "KV buffer 720.00 KiB" in ok.stderr
    for bad in (["--kv-budget", "0"], ["--kv-budget", "lots"], ["--kv-budget", "64", "--policy", "full"]):
        result = cli("run", "smollm2", "-p", PROMPT, "-n", "2", *bad)
        assert result.returncode == 2 and result.stderr.startswith("pykvd: error:"), (bad, result.stderr)
    assert cli("run", "smollm2", "-p", PROMPT, "--policy", "bogus").returncode == 2


# -- the attention-based policies ------------------------------------------------------


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_attention_scores_come_from_llamacpp(request, name):
    """Each query row's weights sum to 1 over the held positions (averaged over heads and layers)."""
    from pykvd._llama import native

    model = request.getfixturevalue(name)
    ids = model.tokenize(PROMPT)
    ctx = native.Context(
        model._handle(),
        n_ctx=256,
        n_batch=64,
        n_ubatch=64,
        n_threads=1,
        n_threads_batch=1,
        flash_attn=0,
        attention_window=8,
    )
    ctx.decode(ids, 0, outputs=1)
    positions, total, last, window = ctx.attention_scores()
    assert positions.tolist() == list(range(len(ids)))
    assert total.sum() == pytest.approx(len(ids), rel=1e-6)
    assert last.sum() == pytest.approx(1.0, rel=1e-6) and window.sum() == pytest.approx(8.0, rel=1e-6)
    assert np.argmax(last) == 0  # the attention sink
    with pytest.raises(ValueError, match="flash attention"):
        native.Context(
            model._handle(),
            n_ctx=256,
            n_batch=64,
            n_ubatch=64,
            n_threads=1,
            n_threads_batch=1,
            flash_attn=1,
            attention_window=8,
        )


def test_h2o_keeps_the_recent_half_and_the_heaviest(smollm2):
    with smollm2.session(kv_budget=32, policy="h2o") as session:
        session.feed(" ".join([PROMPT] * 3))
        session.generate(max_tokens=10, stop_at_eog=False)
        held = hot_positions(session)
        n = len(session.tokens) - 1
        assert len(held) == 32 and held[-16:] == list(range(n - 16, n))
        assert 0 in held  # the sink gathers the most attention


def test_tova_evicts_what_the_current_query_ignores(smollm2):
    with smollm2.session(kv_budget=24, policy="tova") as session:
        session.feed(PROMPT)
        session.generate(max_tokens=12, stop_at_eog=False)
        assert session.stats.n_cached == 24 and 0 in hot_positions(session)


def test_snapkv_keeps_the_observation_window(smollm2):
    with smollm2.session(kv_budget=32, policy="snapkv") as session:
        session.feed(" ".join([PROMPT] * 2))
        n = len(session.tokens)
        held = hot_positions(session)
        assert held[-8:] == list(range(n - 8, n))  # window = budget // 4
        assert len(held) == 32


@pytest.mark.parametrize("policy", ["h2o", "tova", "snapkv"])
def test_attention_policies_need_the_exact_profile(smollm2, policy):
    with pytest.raises(PolicyError, match="batch-invariant attention"):
        smollm2.session(kv_budget=64, policy=policy, exact=False)


@pytest.mark.parametrize("policy", ["h2o", "tova", "snapkv"])
def test_attention_policies_on_every_synthetic_architecture(tiny_model, policy):
    with tiny_model.session(kv_budget=24, policy=policy) as session:
        before = session.stats.kv_bytes
        session.feed(PROMPT)
        session.generate(max_tokens=12, stop_at_eog=False)
        assert session.stats.kv_bytes == before and session.stats.n_cached == 24


def test_cli_chat_prints_memory_every_turn():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "pykvd", "chat", "smollm2", "--kv-budget", "48", "-n", "24"],
        input="Name three colours.\nName three animals.\nAnd three cities?\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    turns = [line for line in result.stderr.splitlines() if "cells |" in line]
    assert [line.split(":")[1].strip() for line in turns] == ["turn 1", "turn 2", "turn 3"]
    assert all("in 48 cells" in line for line in turns)
    assert result.stderr.count("KV buffer 1.05 MiB") == 3  # 48 x 23040 bytes, every turn
