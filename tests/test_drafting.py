"""kvdirect's fast paths: a prompt longer than the budget in one pass, and self-speculative decoding
(drafting over the hot cells, verifying exactly). The output stays the full cache's, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from pykvd import ArgumentError, ArgumentTypeError, BudgetError, PolicyError, SamplingParams, SessionBusyError

PROMPT = "Once upon a time, in a kingdom by the sea, there lived a dragon who collected old clocks."
LONG_PROMPT = " ".join([PROMPT] * 4)
GREEDY = SamplingParams(temperature=0.0)
SEEDED = SamplingParams(temperature=0.9, top_k=40, seed=11)
CHECKPOINTS = ["tokens", "residuals"]


def kvdirect(model, checkpoint, budget=16, **kwargs):
    return model.session(kv_budget=budget, policy="kvdirect", checkpoint=checkpoint, **kwargs)


def assert_generates_like_the_full_cache(model, sampling, checkpoint, draft, n_tokens=24, budget=16):
    with (
        model.session(sampling=sampling) as full,
        kvdirect(model, checkpoint, budget, sampling=sampling, draft=draft) as b,
    ):
        want = full.generate(LONG_PROMPT, max_tokens=n_tokens, stop_at_eog=False).tokens
        got = b.generate(LONG_PROMPT, max_tokens=n_tokens, stop_at_eog=False).tokens
        assert got == want
        assert np.array_equal(b.logits(), full.logits())
        assert b.stats.n_cached <= budget and b.stats.n_tokens == full.stats.n_tokens
        return b.stats


# -- drafting is exact -----------------------------------------------------------


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
@pytest.mark.parametrize("sampling", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_drafting_on_every_synthetic_architecture(tiny_model, sampling, checkpoint):
    for draft in (3, None):
        stats = assert_generates_like_the_full_cache(tiny_model, sampling, checkpoint, draft)
        assert stats.n_verifies > 0 and stats.n_drafted >= stats.n_verifies
        assert stats.n_draft_accepted + stats.n_draft_rejected <= stats.n_drafted
        assert 1.0 <= stats.tokens_per_verify <= 4.0 if draft == 3 else stats.tokens_per_verify >= 1.0


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
@pytest.mark.parametrize("sampling", [GREEDY, SEEDED], ids=["greedy", "seeded"])
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_drafting_on_the_real_models(request, name, sampling, checkpoint):
    model = request.getfixturevalue(name)
    stats = assert_generates_like_the_full_cache(model, sampling, checkpoint, None, n_tokens=32, budget=24)
    assert stats.n_verifies > 0 and 0.0 <= stats.acceptance <= 1.0


def test_drafting_off_decodes_step_by_step(tiny_llama):
    stats = assert_generates_like_the_full_cache(tiny_llama, GREEDY, "tokens", 0)
    assert stats.n_verifies == 0 and stats.n_drafted == 0 and stats.tokens_per_verify == 0.0


def test_a_draft_the_exact_logits_confirm_is_decoded_for_free(tiny_llama):
    """Greedy drafts over a cache that still holds every token are the exact tokens: all accepted."""
    with tiny_llama.session() as full, kvdirect(tiny_llama, "tokens", budget=128, draft=4) as b:
        want = full.generate(PROMPT, max_tokens=16, stop_at_eog=False).tokens
        assert b.generate(PROMPT, max_tokens=16, stop_at_eog=False).tokens == want
        stats = b.stats
        assert stats.n_draft_rejected == 0 and stats.acceptance == 1.0
        assert stats.n_verifies == 3  # 15 decodes: three verifications of 1 + 4 rows


# -- a stream that stops in the middle of verified rows ------------------------------


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_a_stream_closed_between_verified_rows_leaves_an_exact_session(tiny_llama, checkpoint):
    with tiny_llama.session() as full, kvdirect(tiny_llama, checkpoint, draft=6) as b:
        for session in (full, b):
            pieces = session.stream(LONG_PROMPT, max_tokens=40, sampling=GREEDY, stop_at_eog=False)
            for _ in range(5):
                next(pieces)
            pieces.close()
        assert b.tokens == full.tokens
        assert (
            b.generate(max_tokens=12, stop_at_eog=False).tokens
            == full.generate(max_tokens=12, stop_at_eog=False).tokens
        )
        assert np.array_equal(b.logits(), full.logits())
        assert b.stats.n_tokens == full.stats.n_tokens and b.stats.n_cached <= 16


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
@pytest.mark.parametrize("when", ["before", "after"])
def test_an_interrupt_in_the_middle_of_a_verification_loses_nothing(tiny_llama, checkpoint, when):
    """Ctrl-C arrives once the draft has run, before or after the exact decode wrote its rows: the
    interrupt surfaces, and the session goes on exactly."""
    with tiny_llama.session() as full, kvdirect(tiny_llama, checkpoint, draft=4) as b:
        full.feed(LONG_PROMPT)
        b.feed(LONG_PROMPT)
        real_arrive = b._policy.arrive

        def interrupted(*args, **kwargs):
            b._policy.arrive = real_arrive  # once
            if when == "after":
                real_arrive(*args, **kwargs)
            raise KeyboardInterrupt

        b._policy.arrive = interrupted
        with pytest.raises(KeyboardInterrupt):
            b.generate(max_tokens=10, sampling=GREEDY, stop_at_eog=False)
        assert b._ahead == [] and len(b.tokens) == len(full.tokens) + 1  # the sampled token is pending
        full.generate(max_tokens=1, sampling=GREEDY, stop_at_eog=False)
        assert b.tokens == full.tokens
        want = full.generate(max_tokens=10, sampling=GREEDY, stop_at_eog=False).tokens
        assert b.generate(max_tokens=10, sampling=GREEDY, stop_at_eog=False).tokens == want
        assert np.array_equal(b.logits(), full.logits())


# -- long prompts and chat turns in one pass ------------------------------------------


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_a_prompt_longer_than_the_budget_takes_one_pass(tiny_model, checkpoint):
    """Decoded as the sinks, then everything else in one call: the tokens that will not stay in
    cells are ephemeral on arrival. Logits equal the full cache's."""
    with tiny_model.session() as full, kvdirect(tiny_model, checkpoint, budget=12) as b:
        calls = []
        real_decode = b._policy.decode
        b._policy.decode = lambda *args, **kw: calls.append(len(args[1])) or real_decode(*args, **kw)
        full.feed(LONG_PROMPT)
        b.feed(LONG_PROMPT)
        n = len(b.tokens)
        assert n > 3 * 12 and calls == [4, n - 4]
        assert np.array_equal(b.logits(), full.logits())
        assert b._policy.hot == [0, 1, 2, 3, *range(n - 8, n)]
        calls.clear()
        full.feed(LONG_PROMPT)  # a second long chunk: the evicted tokens and the passing ones together
        b.feed(LONG_PROMPT)
        assert calls == [len(b.tokens) - n] and np.array_equal(b.logits(), full.logits())


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_chat_turns_longer_than_the_budget(smollm2, checkpoint):
    with smollm2.session(sampling=GREEDY) as full, kvdirect(smollm2, checkpoint, budget=32, sampling=GREEDY) as b:
        for question in (LONG_PROMPT, "Why is the sky blue?", PROMPT + " What did the dragon collect?"):
            assert b.chat(question, max_tokens=12) == full.chat(question, max_tokens=12)
        assert b.stats.n_cached <= 32 and b.stats.n_tokens == full.stats.n_tokens


# -- bad settings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"draft": -1}, ArgumentError),
        ({"draft": 65}, ArgumentError),
        ({"draft": 10**12}, ArgumentError),
        ({"draft": 2.5}, ArgumentTypeError),
        ({"draft": "4"}, ArgumentTypeError),
        ({"draft": True}, ArgumentTypeError),
        ({"draft": 15}, BudgetError),  # a budget of 16 with 4 sinks leaves room for 10
        ({"draft": 4, "policy": "streaming"}, PolicyError),
    ],
)
def test_bad_draft_settings_are_refused(tiny_llama, kwargs, error):
    kwargs = {"kv_budget": 16, "policy": "kvdirect", **kwargs}
    with pytest.raises(error):
        tiny_llama.session(**kwargs)


def test_a_full_cache_has_nothing_to_verify_against(tiny_llama):
    with pytest.raises(PolicyError, match="nothing to verify"):
        tiny_llama.session(draft=2)
    with tiny_llama.session(draft=0) as full, tiny_llama.session() as default:
        assert full.draft == 0 and default.draft is None


def test_cli_draft(pykvd_cli):
    base = ("run", "smollm2", "--raw", "-p", LONG_PROMPT, "-n", "16", "--ignore-eos", "--kv-budget", "24")
    plain = pykvd_cli(*base)
    assert plain.returncode == 0, plain.stderr
    for draft in ("0", "5"):
        got = pykvd_cli(*base, "--policy", "kvdirect", "--draft", draft, "--stats")
        assert got.returncode == 0, got.stderr
        assert ("drafting:" in got.stderr) == (draft != "0")
    full = pykvd_cli("run", "smollm2", "--raw", "-p", LONG_PROMPT, "-n", "16", "--ignore-eos")
    assert got.stdout == full.stdout
    for bad in (("--policy", "kvdirect", "--draft", "-1"), ("--policy", "streaming", "--draft", "3")):
        wrong = pykvd_cli(*base, *bad)
        assert wrong.returncode == 2 and wrong.stderr.startswith("pykvd: error:")
        assert len(wrong.stderr.strip().splitlines()) == 1


def test_drafting_can_be_changed_between_calls(tiny_llama):
    with tiny_llama.session() as full, kvdirect(tiny_llama, "tokens", draft=0) as b:
        want = full.generate(LONG_PROMPT, max_tokens=20, stop_at_eog=False).tokens
        got = b.generate(LONG_PROMPT, max_tokens=6, stop_at_eog=False).tokens
        assert b.stats.n_verifies == 0
        b.draft = 3
        got += b.generate(max_tokens=8, stop_at_eog=False).tokens
        assert b.stats.n_verifies > 0 and b.draft == 3
        with pytest.raises(ArgumentError):
            b.draft = -2
        assert b.draft == 3
        b.draft = None
        got += b.generate(max_tokens=6, stop_at_eog=False).tokens
        assert got == want and b.draft is None
        stream = b.stream(max_tokens=2)
        with pytest.raises(SessionBusyError):
            b.draft = 0
        stream.close()
