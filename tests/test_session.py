"""pykvd.Session over the real SmolLM2 (and Gemma 3 where it matters): generation, streaming,
sampling, chat, statistics, finish reasons and lifetime."""

from __future__ import annotations

import numpy as np
import pytest

from pykvd import ContextOverflowError, PromptError, SamplingParams, SessionClosedError

PROMPT = "Once upon a time, in a small village by the sea,"
N = 12
MiB = 1 << 20

SEEDED = dict(temperature=0.8, top_k=40, top_p=0.9, min_p=0.02, repeat_penalty=1.1)


def open_session(model, **kwargs):
    """model.session(...) on one thread: ggml's spinning thread barriers crawl on a loaded machine."""
    kwargs.setdefault("n_threads", 1)
    return model.session(**kwargs)


@pytest.fixture
def session(smollm2):
    with open_session(smollm2, n_ctx=256) as s:
        yield s


def _chat_prompt(model, text: str) -> np.ndarray:
    return model.tokenize(model.apply_chat_template([{"role": "user", "content": text}]))


# -- generate and stream -------------------------------------------------------


def test_generate_returns_text_tokens_and_finish_reason(smollm2, session):
    result = session.generate(PROMPT, max_tokens=N, stop_at_eog=False)
    assert isinstance(result.text, str) and result.text
    assert len(result.tokens) == N
    assert all(isinstance(t, int) and 0 <= t < smollm2.info.n_vocab for t in result.tokens)
    assert result.finish_reason == "length"
    assert result.text == smollm2.detokenize(result.tokens)
    prompt_ids = smollm2.tokenize(PROMPT)
    assert result.n_prompt_tokens == len(prompt_ids)
    assert result.prefill_s > 0 and result.decode_s > 0
    assert session.tokens == prompt_ids.tolist() + result.tokens


def test_stream_concatenates_to_generate(smollm2):
    with open_session(smollm2, n_ctx=256) as a, open_session(smollm2, n_ctx=256) as b:
        generated = a.generate(PROMPT, max_tokens=16, stop_at_eog=False)
        pieces = list(b.stream(PROMPT, max_tokens=16, stop_at_eog=False))
        assert len(pieces) > 1
        assert all(isinstance(p, str) and p for p in pieces)
        assert "".join(pieces) == generated.text
        assert a.tokens == b.tokens
        assert np.array_equal(a.logits(), b.logits())


def test_stream_yields_whole_utf8_characters(smollm2):
    # SmolLM2 writes Japanese with byte-level tokens, several per character.
    prompt = _chat_prompt(smollm2, 'Translate "thank you" into Japanese.')
    with open_session(smollm2, n_ctx=256) as s:
        pieces = list(s.stream(prompt, max_tokens=16))
        generated = s.tokens[len(prompt) :]
    raw = [smollm2.token_to_bytes(t) for t in generated]
    assert any(piece.decode("utf-8", errors="replace") != piece.decode("utf-8", errors="ignore") for piece in raw)
    assert len(pieces) < len(generated)  # bytes were held back until their character was whole
    assert all("\ufffd" not in piece for piece in pieces[:-1])
    assert "".join(pieces) == b"".join(raw).decode("utf-8", errors="replace") == smollm2.detokenize(generated)


def test_generation_continues_where_it_stopped(smollm2, session):
    with open_session(smollm2, n_ctx=256) as at_once:
        expected = at_once.generate(PROMPT, max_tokens=2 * N, stop_at_eog=False)
    first = session.generate(PROMPT, max_tokens=N, stop_at_eog=False)
    second = session.generate(max_tokens=N, stop_at_eog=False)
    assert second.n_prompt_tokens == 1  # only the pending last token of the first call
    assert first.tokens + second.tokens == expected.tokens


def test_feed_adds_bos_only_at_the_start(gemma3):
    assert gemma3.add_bos
    with open_session(gemma3, n_ctx=64) as s:
        assert s.feed("Hello") == len(gemma3.tokenize("Hello"))
        s.feed(" world")
        expected = gemma3.tokenize("Hello").tolist() + gemma3.tokenize(" world", add_special=False).tolist()
        assert s.tokens == expected
        assert s.tokens.count(s.tokens[0]) == 1


def test_max_tokens_zero_only_processes_the_prompt(smollm2, session):
    result = session.generate(PROMPT, max_tokens=0)
    assert result.tokens == [] and result.text == "" and result.finish_reason == "length"
    assert session.tokens == smollm2.tokenize(PROMPT).tolist()
    assert session.stats.n_tokens == len(session.tokens)


# -- sampling ------------------------------------------------------------------


def _sample(model, params: SamplingParams, *, max_tokens: int = N) -> list[int]:
    with open_session(model, n_ctx=256) as s:
        return s.generate(PROMPT, max_tokens=max_tokens, sampling=params, stop_at_eog=False).tokens


def test_seeded_sampling_is_reproducible(smollm2):
    one = _sample(smollm2, SamplingParams(**SEEDED, seed=1234))
    again = _sample(smollm2, SamplingParams(**SEEDED, seed=1234))
    assert one == again
    others = [_sample(smollm2, SamplingParams(**SEEDED, seed=seed)) for seed in (1, 2)]
    # Different seeds give a different continuation (fails only by an unlikely coincidence).
    assert any(other != one for other in others)


def test_sampling_differs_from_greedy(smollm2):
    greedy = _sample(smollm2, SamplingParams())
    hot = [_sample(smollm2, SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=s)) for s in (7, 8)]
    assert any(tokens != greedy for tokens in hot)


def test_greedy_is_temperature_zero(smollm2):
    default = _sample(smollm2, SamplingParams())
    assert SamplingParams().greedy
    zero = SamplingParams(temperature=0.0, top_k=3, top_p=0.5, min_p=0.2, seed=99)
    assert zero.greedy
    assert _sample(smollm2, zero) == default
    # Greedy picks the arg-max of the logits at each step.
    with open_session(smollm2, n_ctx=256) as s:
        s.feed(PROMPT)
        assert int(np.argmax(s.logits())) == default[0]


def test_session_default_sampling_is_used(smollm2):
    params = SamplingParams(**SEEDED, seed=5)
    expected = _sample(smollm2, params)
    with open_session(smollm2, n_ctx=256, sampling=params) as s:
        assert s.sampling is params
        assert s.generate(PROMPT, max_tokens=N, stop_at_eog=False).tokens == expected


def test_repeat_penalty_changes_greedy_output(smollm2):
    prompt = "one two one two one two one two one two one two"
    with open_session(smollm2, n_ctx=256) as a, open_session(smollm2, n_ctx=256) as b:
        plain = a.generate(prompt, max_tokens=8, stop_at_eog=False).tokens
        penalized = b.generate(
            prompt, max_tokens=8, stop_at_eog=False, sampling=SamplingParams(repeat_penalty=5.0, repeat_last_n=64)
        ).tokens
    assert plain != penalized


# -- chat ----------------------------------------------------------------------


def test_chat_keeps_the_conversation_and_reuses_the_cache(smollm2):
    with open_session(smollm2, n_ctx=512) as s:
        first = s.chat("Reply with one word: yes or no?", max_tokens=16)
        assert first
        assert [m["role"] for m in s.messages] == ["user", "assistant"]
        assert s.messages[1]["content"] == first
        before = s.stats
        assert before.n_prefill_tokens == len(_chat_prompt(smollm2, "Reply with one word: yes or no?"))

        second = s.chat("Why?", max_tokens=8)
        assert second
        assert [m["role"] for m in s.messages] == ["user", "assistant", "user", "assistant"]
        assert s.messages[2] == {"role": "user", "content": "Why?"}
        after = s.stats
        full = smollm2.tokenize(smollm2.apply_chat_template(s.messages[:3]))
        added = after.n_prefill_tokens - before.n_prefill_tokens
        # Only the new suffix was processed: everything already cached was reused.
        assert added <= len(full) - before.n_tokens + 1
        assert added < len(full) / 2
        # The cache holds the re-rendered conversation followed by the reply.
        assert s.tokens[: len(full)] == full.tolist()


def test_chat_accepts_message_dicts_and_lists(smollm2):
    with (
        open_session(smollm2, n_ctx=512) as a,
        open_session(smollm2, n_ctx=512) as b,
        open_session(smollm2, n_ctx=512) as c,
    ):
        as_text = a.chat("Say hi.", max_tokens=6)
        as_dict = b.chat({"role": "user", "content": "Say hi."}, max_tokens=6)
        as_list = c.chat(
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}], max_tokens=6
        )
    assert as_text == as_dict
    assert as_list and len(c.messages) == 3


def test_chat_stream_matches_chat(smollm2):
    with open_session(smollm2, n_ctx=512) as a, open_session(smollm2, n_ctx=512) as b:
        text = a.chat("What is the capital of France?", max_tokens=12)
        pieces = list(b.chat_stream("What is the capital of France?", max_tokens=12))
        assert "".join(pieces) == text
        assert a.messages == b.messages


def test_reset_forgets_everything(smollm2):
    with open_session(smollm2, n_ctx=256) as s:
        first = s.generate(PROMPT, max_tokens=N, stop_at_eog=False)
        first_logits = s.logits().copy()
        s.chat("Say hi.", max_tokens=4)
        s.reset()
        assert s.tokens == [] and s.messages == []
        assert s.stats.n_tokens == 0
        with pytest.raises(PromptError):
            s.generate(max_tokens=4)  # nothing to continue from
        again = s.generate(PROMPT, max_tokens=N, stop_at_eog=False)
        assert again.tokens == first.tokens
        assert np.array_equal(s.logits(), first_logits)


# -- statistics ----------------------------------------------------------------


def test_stats(smollm2):
    with open_session(smollm2, n_ctx=256) as s:
        fresh = s.stats
        assert fresh.n_ctx == s.n_ctx >= 256
        assert fresh.n_tokens == 0 and fresh.n_prefill_tokens == 0 and fresh.n_generated == 0
        assert fresh.kv_bytes > 0 and fresh.compute_bytes > 0 and fresh.model_bytes > 0
        # K and V, F16, every layer, n_ctx cells: the whole cache is allocated up front.
        info = smollm2.info
        assert fresh.kv_bytes >= 2 * 2 * info.n_layer * info.n_head_kv * info.head_dim_k * s.n_ctx
        assert 10 * MiB <= fresh.rss_bytes <= 100 * 1024 * MiB

        prompt_len = len(smollm2.tokenize(PROMPT))
        s.feed(PROMPT)
        fed = s.stats
        assert fed.n_tokens == fed.n_prefill_tokens == prompt_len
        assert fed.prefill_s > 0 and fed.prefill_tokens_per_s > 0
        assert fed.kv_bytes == fresh.kv_bytes and fed.compute_bytes == fresh.compute_bytes

        s.generate(max_tokens=N, stop_at_eog=False)
        done = s.stats
        assert done.n_generated == N
        assert done.n_decode_steps == N - 1  # the last token is sampled, not decoded
        assert done.n_tokens == prompt_len + N - 1
        assert done.decode_s > 0 and done.decode_tokens_per_s > 0
        assert done.kv_bytes == fresh.kv_bytes
        assert done.compute_bytes == fresh.compute_bytes
        assert done.model_bytes == fresh.model_bytes
        assert 10 * MiB <= done.rss_bytes <= 100 * 1024 * MiB


def test_kv_bytes_grow_with_n_ctx(smollm2):
    with open_session(smollm2, n_ctx=256) as small, open_session(smollm2, n_ctx=1024) as large:
        assert large.stats.kv_bytes == 4 * small.stats.kv_bytes


# -- finish reasons ------------------------------------------------------------


def test_finish_reason_length(session):
    result = session.generate(PROMPT, max_tokens=3, stop_at_eog=False)
    assert result.finish_reason == "length" and len(result.tokens) == 3


def test_finish_reason_stop_at_end_of_generation(smollm2):
    prompt = _chat_prompt(smollm2, "Reply with one word: yes or no?")
    with open_session(smollm2, n_ctx=256) as s:
        result = s.generate(prompt, max_tokens=16)
        assert result.finish_reason == "stop"
        assert 0 < len(result.tokens) < 16
        assert not any(smollm2.is_end_of_generation(t) for t in result.tokens)
        # The token that ended it is the greedy choice at this point, and it is end-of-generation.
        ended_by = int(np.argmax(s.logits()))
        assert smollm2.is_end_of_generation(ended_by)
        # It was not added to the session.
        assert s.tokens == prompt.tolist() + result.tokens
        # Without stopping, the same generation continues through that token.
    with open_session(smollm2, n_ctx=256) as s:
        through = s.generate(prompt, max_tokens=len(result.tokens) + 1, stop_at_eog=False)
        assert through.tokens == result.tokens + [ended_by]


def test_finish_reason_context(smollm2):
    with open_session(smollm2, n_ctx=64) as s:
        n_ctx = s.n_ctx  # llama.cpp may round the context up
        base = smollm2.tokenize("The quick brown fox jumps over the lazy dog. ", add_special=False).tolist()
        prompt = (base * (n_ctx // len(base) + 1))[: n_ctx - 5]
        s.feed(prompt)
        result = s.generate(max_tokens=50, stop_at_eog=False)
        assert result.finish_reason == "context"
        assert len(result.tokens) == 6  # 5 free cells, and a last sampled token that cannot be decoded
        assert s.stats.n_tokens == n_ctx
        before = s.tokens
        assert len(before) == n_ctx + 1
        with pytest.raises(ContextOverflowError):
            s.generate(max_tokens=1)
        assert s.tokens == before


# -- lifetime ------------------------------------------------------------------


def _every_use(s):
    return {
        "generate": lambda: s.generate(PROMPT, max_tokens=1),
        "generate()": lambda: s.generate(max_tokens=1),
        "stream": lambda: list(s.stream(PROMPT, max_tokens=1)),
        "feed": lambda: s.feed(PROMPT),
        "feed ids": lambda: s.feed([1, 2, 3]),
        "chat": lambda: s.chat("Hi", max_tokens=1),
        "chat_stream": lambda: list(s.chat_stream("Hi", max_tokens=1)),
        "logits": s.logits,
        "stats": lambda: s.stats,
        "tokens": lambda: s.tokens,
        "n_ctx": lambda: s.n_ctx,
        "reset": s.reset,
    }


def test_close_makes_every_method_raise(smollm2):
    s = open_session(smollm2, n_ctx=64)
    s.generate(PROMPT, max_tokens=2)
    assert not s.closed
    s.close()
    assert s.closed
    for name, use in _every_use(s).items():
        with pytest.raises(SessionClosedError):
            use()
            pytest.fail(f"{name} worked on a closed session")
    s.close()  # harmless
    assert s.closed


def test_context_manager_closes(smollm2):
    with open_session(smollm2, n_ctx=64) as s:
        s.feed(PROMPT)
    assert s.closed
    with pytest.raises(SessionClosedError):
        s.generate(max_tokens=1)


def test_closing_mid_stream(smollm2):
    s = open_session(smollm2, n_ctx=64)
    stream = s.stream(PROMPT, max_tokens=16, stop_at_eog=False)
    next(stream)
    s.close()
    with pytest.raises(SessionClosedError):
        list(stream)


def test_default_thread_count_gives_the_same_result(smollm2):
    """The default (one thread per CPU) and one thread compute bit-identical logits."""
    with smollm2.session(n_ctx=64) as default, open_session(smollm2, n_ctx=64) as single:
        assert (
            default.generate(PROMPT, max_tokens=2, stop_at_eog=False).tokens
            == single.generate(PROMPT, max_tokens=2, stop_at_eog=False).tokens
        )
        assert np.array_equal(default.logits(), single.logits())
