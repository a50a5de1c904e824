"""kvdirect: a bounded cache whose evicted tokens are recomputed at every step (P4), so the output
is the full cache's, bit for bit, for both checkpoint kinds."""

from __future__ import annotations

import numpy as np
import pytest

from pykvd import BudgetError, PolicyError, SamplingParams
from pykvd.verify import greedy_steps

PROMPT = "Once upon a time, in a kingdom by the sea, there lived a dragon who collected old clocks."
LONG_PROMPT = " ".join([PROMPT] * 4)
GREEDY = SamplingParams(temperature=0.0)


def assert_same_steps(reference, bounded, n_steps):
    ref_tokens, ref_logits = greedy_steps(reference, n_steps)
    got_tokens, got_logits = greedy_steps(bounded, n_steps)
    assert got_tokens == ref_tokens
    for a, b in zip(ref_logits, got_logits):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("checkpoint", ["tokens", "residuals"])
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_kvdirect_equals_the_full_cache(request, name, checkpoint):
    model = request.getfixturevalue(name)
    n_prompt = len(model.tokenize(LONG_PROMPT))
    with model.session() as full, model.session(kv_budget=24, policy="kvdirect", checkpoint=checkpoint) as bounded:
        kv_bytes = bounded.stats.kv_bytes
        full.feed(LONG_PROMPT)
        bounded.feed(LONG_PROMPT)  # several times the budget: streamed in chunks, nothing lost
        assert np.array_equal(full.logits(), bounded.logits())
        assert_same_steps(full, bounded, 12)
        stats = bounded.stats
        assert stats.kv_bytes == kv_bytes and stats.n_cached == 24 and stats.n_tokens == n_prompt + 12
        per_token = 4 if checkpoint == "tokens" else 4 * model.info.n_layer * model.info.n_embd
        assert stats.checkpoint_bytes >= per_token * stats.n_tokens
        assert bounded.checkpoint == checkpoint and bounded.policy == "kvdirect"


@pytest.mark.parametrize("checkpoint", ["tokens", "residuals"])
def test_kvdirect_on_every_synthetic_architecture(tiny_model, checkpoint):
    """The tiny gemma3 has a 32-token sliding window: the prompt runs well past it."""
    with (
        tiny_model.session() as full,
        tiny_model.session(kv_budget=12, policy="kvdirect", checkpoint=checkpoint) as bounded,
    ):
        full.feed(LONG_PROMPT)
        bounded.feed(LONG_PROMPT)
        assert len(bounded.tokens) > 3 * 32
        assert_same_steps(full, bounded, 10)
        assert bounded.stats.n_cached == 12


def test_seeded_sampling_and_chat_match_the_full_cache(smollm2):
    sampling = SamplingParams(temperature=0.8, top_k=40, seed=7)
    with (
        smollm2.session(sampling=sampling) as full,
        smollm2.session(sampling=sampling, kv_budget=20, policy="kvdirect", checkpoint="residuals") as bounded,
    ):
        assert full.generate(PROMPT, max_tokens=24).tokens == bounded.generate(PROMPT, max_tokens=24).tokens
    with (
        smollm2.session(sampling=GREEDY) as full,
        smollm2.session(sampling=GREEDY, kv_budget=32, policy="kvdirect") as bounded,
    ):
        for question in ("Name a colour.", "Why is the sky blue?", "And the sea?"):
            assert full.chat(question, max_tokens=10) == bounded.chat(question, max_tokens=10)
        assert len(bounded.tokens) > 32 and bounded.stats.n_cached <= 32


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"kv_budget": 16, "policy": "kvdirect", "checkpoint": "hidden"}, PolicyError),
        ({"kv_budget": 16, "policy": "streaming", "checkpoint": "tokens"}, PolicyError),
        ({"checkpoint": "residuals"}, PolicyError),
        ({"policy": "kvdirect"}, PolicyError),
        ({"kv_budget": 16, "policy": "kvdirect", "exact": False}, PolicyError),
        ({"kv_budget": 4, "policy": "kvdirect"}, BudgetError),
    ],
)
def test_bad_kvdirect_arguments(smollm2, kwargs, error):
    with pytest.raises(error):
        smollm2.session(**kwargs)


def test_kvdirect_keeps_its_own_checkpoint(smollm2):
    with smollm2.session(kv_budget=16, policy="kvdirect") as session:
        with pytest.raises(PolicyError, match="checkpoint"):
            with session.capture([0]):
                pass
        session.feed(PROMPT)


def test_bad_ephemeral_rows_are_refused_and_lose_nothing(smollm2):
    """The native call checks what Python would otherwise send wrong; the session goes on exactly."""
    with smollm2.session() as full, smollm2.session(kv_budget=16, policy="kvdirect", checkpoint="residuals") as bounded:
        full.feed(LONG_PROMPT)
        bounded.feed(LONG_PROMPT)
        ctx, pos = bounded._ctx, len(bounded.tokens)
        token = np.array([42], dtype=np.int32)
        eph = bounded._policy.evicted(pos)
        ids = np.zeros(len(eph), dtype=np.int32)
        rows = np.zeros((smollm2.info.n_layer, len(eph), smollm2.info.n_embd), dtype=np.float32)
        bad_calls = [
            (token, pos, ids[1:], eph[1:], None),  # a position neither cached nor ephemeral
            (token, pos, ids, eph[::-1].copy(), None),  # not increasing
            (token, pos, ids[:1], np.array([pos + 3], np.int32), None),  # after the new token
            (token, pos, ids, eph, np.zeros((rows.shape[0], len(eph) + 1, rows.shape[2]), np.float32)),  # too many
            (token, pos, ids, eph, rows[:-1]),  # a layer short
            (token, pos, ids, eph, rows[:, :, :-1]),  # rows of the wrong width
            (np.array([10**7], np.int32), pos, ids, eph, None),  # outside the vocabulary
            (np.zeros(0, np.int32), pos, ids, eph, None),  # nothing to decode
            (token, pos, ids[:-1], eph, None),  # ids and positions disagree
        ]
        for args in bad_calls:
            with pytest.raises(ValueError):
                ctx.decode_ephemeral(*args)
        store = np.zeros((rows.shape[0], 2 * len(eph) + 1, rows.shape[2]), np.float32)
        read_only = store[:, :1].copy()
        read_only.flags.writeable = False
        bad_stores = [
            {"eph_h": rows.astype(np.float64)},  # never converted behind the caller's back
            {"eph_h": store[:, : 2 * len(eph) : 2]},  # rows not packed
            {"eph_h": rows[::-1]},  # layers backwards
            {"capture": True, "h_out": store[:, :2]},  # one row runs, not two
            {"capture": True, "h_out": read_only},
            {"capture": True, "h_out": store[:, :1].astype(np.float64)},
            {"h_out": store[:, :1]},  # h_out without capture
        ]
        for kwargs in bad_stores:
            with pytest.raises(ValueError):
                ctx.decode_ephemeral(token, pos, ids, eph, **{"eph_h": rows, **kwargs})
        assert bounded.stats.n_cached == 16
        assert_same_steps(full, bounded, 4)


def test_residual_rows_are_read_and_written_in_place(smollm2):
    """eph_h and h_out may be views into a checkpoint store: the same logits and rows as packed arrays."""
    with smollm2.session(kv_budget=16, policy="kvdirect", checkpoint="residuals") as bounded:
        bounded.feed(LONG_PROMPT)
        ctx, pos, store = bounded._ctx, len(bounded.tokens), bounded._policy._store
        bounded._policy.make_room(ctx, 1)
        eph = bounded._policy.evicted(pos)
        ids, token = np.zeros(len(eph), np.int32), np.array([42], np.int32)
        view = store.take(eph)
        assert not view.flags.c_contiguous and np.shares_memory(view, store.data)  # no gather
        packed = np.ascontiguousarray(view)
        logits, rows = ctx.decode_ephemeral(token, pos, ids, eph, packed, capture=True)
        ctx.seq_rm(0, pos, -1)
        into = store.rows(pos, pos + 1)
        logits_in_place, returned = ctx.decode_ephemeral(token, pos, ids, eph, view, capture=True, h_out=into)
        assert np.array_equal(logits, logits_in_place)
        assert np.shares_memory(returned, store.data) and np.array_equal(into, rows)
        ctx.seq_rm(0, pos, -1)


def test_a_long_residuals_prompt_holds_one_copy_of_its_rows(smollm2):
    """The prompt's residuals are written straight into the checkpoint store (a reserved mapping, not
    numpy's heap): numpy allocates nothing near the checkpoint's size on the way."""
    import tracemalloc

    ids = np.resize(smollm2.tokenize(LONG_PROMPT), 1024).astype(np.int32)
    with smollm2.session(kv_budget=64, policy="kvdirect", checkpoint="residuals", draft=0) as bounded:
        tracemalloc.start()
        try:
            bounded.feed(ids)
            bounded.generate(max_tokens=2, stop_at_eog=False)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        checkpoint = bounded.stats.checkpoint_bytes
        assert checkpoint == 4 * smollm2.info.n_layer * smollm2.info.n_embd * bounded.stats.n_tokens
        assert peak < checkpoint / 8, (peak, checkpoint)


def test_a_residual_store_too_large_to_reserve_is_a_clear_error():
    """A GGUF may claim any trained context; the store's reservation failing is a PolicyError, not numpy's."""
    from pykvd.policies.checkpoint_store import ResidualStore

    with pytest.raises(PolicyError, match="address space"):
        ResidualStore(80, 8192, 2**31 - 1)  # 5 PiB
    store = ResidualStore(2, 8, 1024)
    assert store.nbytes == 0 and store.data.shape == (2, 1024, 8)  # reserved, not yet backed


def test_cli_kvdirect_run_matches_the_full_cache():
    import subprocess
    import sys

    def cli(*args):
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "pykvd",
                "run",
                "smollm2",
                "-p",
                LONG_PROMPT,
                "-n",
                "12",
                "--ignore-eos",
                "--temp",
                "0",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )

    full = cli()
    assert full.returncode == 0, full.stderr
    for checkpoint in ("tokens", "residuals"):
        bounded = cli("--kv-budget", "24", "--policy", "kvdirect", "--checkpoint", checkpoint, "--stats")
        assert bounded.returncode == 0, bounded.stderr
        assert bounded.stdout == full.stdout
        assert "in 24 cells" in bounded.stderr and "checkpoint" in bounded.stderr
    wrong = cli("--kv-budget", "24", "--policy", "streaming", "--checkpoint", "tokens")
    assert wrong.returncode == 2 and wrong.stderr.startswith("pykvd: error:")


def _flagged_decode(model, outputs):
    """Three new tokens decoded with ephemeral rows on a bounded session; logits as the native call returns them."""
    with model.session(kv_budget=12, policy="kvdirect", checkpoint="tokens", n_threads=1) as bounded:
        bounded.feed(LONG_PROMPT)
        ctx, pos = bounded._ctx, len(bounded.tokens)
        bounded._policy.make_room(ctx, 3)
        eph = bounded._policy.evicted(pos)
        ids = np.asarray(bounded.tokens, dtype=np.int32)[eph]
        logits, _ = ctx.decode_ephemeral(np.array([40, 41, 42], np.int32), pos, ids, eph, outputs=outputs)
        return logits.copy()


def test_logits_for_flagged_rows_only_equal_those_of_every_row(tiny_llama):
    """llama_kvd_ephemeral_params.logits: the rows asked for, bit for bit those of a decode of every row."""
    every = _flagged_decode(tiny_llama, None)
    flagged = _flagged_decode(tiny_llama, np.array([1, 0, 1], np.int8))
    assert every.shape == (3, tiny_llama.info.n_vocab) and flagged.shape == (2, tiny_llama.info.n_vocab)
    assert np.array_equal(flagged, every[[0, 2]])
    last = _flagged_decode(tiny_llama, np.array([0, 0, 1], np.int8))
    assert np.array_equal(last, every[[2]])
    with pytest.raises(ValueError):
        _flagged_decode(tiny_llama, np.zeros(3, np.int8))


@pytest.mark.parametrize("checkpoint", ["tokens", "residuals"])
def test_the_policy_asks_logits_only_where_the_session_wants_them(tiny_llama, checkpoint):
    """A prompt chunk runs the output head for its last row only; the session's logits stay exact."""
    from pykvd.outputs import Outputs

    with (
        tiny_llama.session(kv_budget=12, policy="kvdirect", checkpoint=checkpoint, n_threads=1) as bounded,
        tiny_llama.session(n_threads=1) as full,
    ):
        bounded.feed(LONG_PROMPT)
        full.feed(LONG_PROMPT)
        ctx, policy, pos = bounded._ctx, bounded._policy, len(bounded.tokens)
        policy.make_room(ctx, 3)
        logits = policy.decode(ctx, np.array([40, 41, 42], np.int32), pos, Outputs.LAST)
        assert logits.shape == (1, tiny_llama.info.n_vocab)
        full.feed([40, 41, 42])
        assert np.array_equal(logits[0], full.logits())
