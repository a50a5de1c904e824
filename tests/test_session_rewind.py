"""Session.rewind(n): keep the first n tokens, forget the rest (what `pykvd serve` reuses a cached prompt with).

Under the lossless policies (full, kvdirect) a rewound session must continue exactly as a fresh one
fed only the kept tokens: same logits bit for bit, same greedy tokens.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pykvd import IndexOutOfRangeError, PromptError, SamplingParams, SessionBusyError

PROMPT = "Once upon a time, in a kingdom by the sea, there lived a dragon who collected old clocks."
GREEDY = SamplingParams(temperature=0.0)
ONE_THREAD = {"n_threads": 1}  # two OpenMP threads on a busy 2-core machine can be many times slower
GENERATOR = Path(__file__).resolve().parent.parent / "models" / "synthetic.py"

LOSSLESS = {
    "full": {},
    "kvdirect-tokens": {"kv_budget": 16, "policy": "kvdirect", "checkpoint": "tokens"},
    "kvdirect-residuals": {"kv_budget": 16, "policy": "kvdirect", "checkpoint": "residuals"},
}


def history(model, **session_args) -> list[int]:
    """The prompt plus 12 greedy tokens: more than a 16-token budget holds."""
    with model.session(**ONE_THREAD, sampling=GREEDY, **session_args) as session:
        session.generate(PROMPT, max_tokens=12, stop_at_eog=False)
        return session.tokens


@pytest.mark.parametrize("config", list(LOSSLESS))
@pytest.mark.parametrize("keep", [1, 9, 20, -1], ids=["first-token", "sinks-and-some", "evicted-region", "pending"])
def test_a_rewound_session_continues_like_a_fresh_one(tiny_llama, config, keep):
    args = LOSSLESS[config]
    tokens = history(tiny_llama, **args)
    n = len(tokens) + keep if keep < 0 else keep
    continuation = tiny_llama.tokenize(" and then", add_special=False)
    with (
        tiny_llama.session(**ONE_THREAD, sampling=GREEDY, **args) as rewound,
        tiny_llama.session(**ONE_THREAD, sampling=GREEDY) as fresh,
    ):
        rewound.generate(PROMPT, max_tokens=12, stop_at_eog=False)
        assert rewound.tokens == tokens
        rewound.rewind(n)
        assert rewound.tokens == tokens[:n]
        fresh.feed(tokens[:n])
        rewound.feed(continuation)
        fresh.feed(continuation)
        assert np.array_equal(rewound.logits(), fresh.logits())
        want = fresh.generate(max_tokens=8, stop_at_eog=False).tokens
        assert rewound.generate(max_tokens=8, stop_at_eog=False).tokens == want
        if "kv_budget" in args:
            assert rewound.stats.n_cached <= args["kv_budget"]


@pytest.mark.parametrize("config", list(LOSSLESS))
def test_generation_right_after_a_rewind_continues_from_the_kept_tokens(tiny_llama, config):
    args = LOSSLESS[config]
    tokens = history(tiny_llama, **args)
    with (
        tiny_llama.session(**ONE_THREAD, sampling=GREEDY, **args) as rewound,
        tiny_llama.session(**ONE_THREAD, sampling=GREEDY) as fresh,
    ):
        rewound.feed(tokens)
        rewound.rewind(15)
        # The logits of token 14 went with the tokens after it: none until the next call processes it again.
        with pytest.raises(PromptError):
            rewound.logits()
        before = rewound.stats.n_prefill_tokens
        got = rewound.generate(max_tokens=6, stop_at_eog=False).tokens
        assert rewound.stats.n_prefill_tokens - before == 1  # only the last kept token, in one pass
        fresh.feed(tokens[:15])
        assert got == fresh.generate(max_tokens=6, stop_at_eog=False).tokens


def test_rewinding_twice_and_to_zero(tiny_llama):
    tokens = history(tiny_llama)
    with (
        tiny_llama.session(**ONE_THREAD, sampling=GREEDY) as session,
        tiny_llama.session(**ONE_THREAD, sampling=GREEDY) as fresh,
    ):
        session.feed(tokens)
        session.rewind(10)
        session.rewind(10)  # the same length again: no-op
        session.rewind(7)  # a pending token from the first rewind is dropped too
        assert session.tokens == tokens[:7]
        fresh.feed(tokens[:7])
        assert session.generate(max_tokens=5).tokens == fresh.generate(max_tokens=5).tokens
        session.rewind(0)
        assert session.tokens == [] and session.stats.n_tokens == 0
        with pytest.raises(PromptError, match="nothing to continue from"):
            session.generate(max_tokens=2)
        fresh.reset()
        assert session.generate(PROMPT, max_tokens=5).tokens == fresh.generate(PROMPT, max_tokens=5).tokens


def test_dropping_only_the_pending_token_keeps_the_logits(tiny_llama):
    with tiny_llama.session(**ONE_THREAD, sampling=GREEDY) as session:
        session.generate(PROMPT, max_tokens=4)
        decoded = session.stats.n_tokens
        assert len(session.tokens) == decoded + 1  # the last sampled token is not decoded yet
        logits = session.logits()
        session.rewind(decoded)
        assert session.stats.n_tokens == decoded and np.array_equal(session.logits(), logits)


def test_rewind_forgets_the_chat_messages(tiny_llama):
    with tiny_llama.session(**ONE_THREAD, sampling=GREEDY) as session:
        session.chat("Hello there", max_tokens=4)
        assert session.messages
        session.rewind(len(session.tokens))  # nothing dropped: the conversation stays
        assert session.messages
        session.rewind(3)
        assert session.messages == []


def test_lossy_policies_rewind_within_their_budget(tiny_llama):
    for policy in ("streaming", "window", "h2o", "tova", "snapkv"):
        with tiny_llama.session(**ONE_THREAD, sampling=GREEDY, kv_budget=16, policy=policy) as session:
            session.generate(PROMPT, max_tokens=12, stop_at_eog=False)
            tokens = session.tokens
            session.rewind(20)
            assert session.tokens == tokens[:20]
            out = session.generate(" and then", max_tokens=6, stop_at_eog=False)
            assert len(out.tokens) == 6, policy
            assert session.tokens[:20] == tokens[:20] and session.stats.n_cached <= 16, policy


def test_bad_rewinds_change_nothing(tiny_llama):
    with tiny_llama.session(**ONE_THREAD, sampling=GREEDY) as session:
        session.feed(PROMPT)
        tokens = session.tokens
        for bad in (-1, len(tokens) + 1, 2.0, "3", None, True):
            with pytest.raises(IndexOutOfRangeError):
                session.rewind(bad)
        stream = session.stream(max_tokens=3)
        with pytest.raises(SessionBusyError):
            session.rewind(2)
        stream.close()
        assert session.tokens[: len(tokens)] == tokens


def test_a_recurrent_model_rewinds_by_processing_the_kept_tokens_again(tmp_path):
    import pykvd

    path = tmp_path / "tiny-mamba.gguf"
    done = subprocess.run([sys.executable, str(GENERATOR), "mamba", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with (
        pykvd.Model(path) as model,
        model.session(n_ctx=64, **ONE_THREAD) as session,
        model.session(n_ctx=64, **ONE_THREAD) as fresh,
    ):
        session.generate("Hello world, this is", max_tokens=6, stop_at_eog=False)
        tokens = session.tokens
        session.rewind(5)
        assert session.tokens == tokens[:5]
        fresh.feed(tokens[:5])
        assert (
            session.generate(max_tokens=4, stop_at_eog=False).tokens
            == fresh.generate(max_tokens=4, stop_at_eog=False).tokens
        )
