"""Arguments found by fuzzing the API: out-of-range integers, tiny budgets and temperatures, text that
is not UTF-8, special files and concurrent calls. Each is refused with a pykvd exception before it
reaches llama.cpp (or handled), and the session stays usable."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

import pykvd
from pykvd import BudgetError, PromptError, PykvdError, SamplingParams
from pykvd.errors import ArgumentError, ArgumentTypeError, IndexOutOfRangeError, ModelNotFoundError, SessionBusyError
from pykvd.memory import rss_bytes
from pykvd.policies import POLICIES, make_policy
from pykvd.sampling import GREEDY_BELOW
from pykvd.session import MAX_THREADS

PROMPT = "Hello world, the cat is sitting on the mat."
BOUNDED_POLICIES = sorted(name for name in POLICIES if name != "full")
GiB = 1 << 30


def open_session(model, **kwargs):
    kwargs.setdefault("n_threads", 1)
    return model.session(**kwargs)


def greedy(model, prompt=PROMPT, n=6, **kwargs):
    with open_session(model, n_ctx=128, **kwargs) as session:
        return session.generate(prompt, max_tokens=n, stop_at_eog=False).tokens


# -- threads ------------------------------------------------------------------------


@pytest.mark.parametrize("n_threads", [MAX_THREADS + 1, 5000, 100_000, 2**31 - 1, 2**31, 2**63])
def test_thread_counts_beyond_ggml_are_refused(tiny_llama, n_threads):
    with pytest.raises(ArgumentError, match=r"n_threads must be an integer in \[1, 512\]"):
        tiny_llama.session(n_ctx=64, n_threads=n_threads)


def test_the_largest_thread_count_works(tiny_llama):
    assert greedy(tiny_llama, n_threads=MAX_THREADS, n=3) == greedy(tiny_llama, n=3)


# -- tiny budgets ---------------------------------------------------------------------


def test_snapkv_with_a_one_token_budget_is_refused_before_anything_is_admitted(tiny_llama):
    with pytest.raises(BudgetError, match="snapkv"):
        tiny_llama.session(kv_budget=1, n_sink=0, policy="snapkv", n_threads=1)
    with pytest.raises(BudgetError):
        make_policy("snapkv", 1, n_sink=0)
    with pytest.raises(BudgetError):
        make_policy("streaming", 2, n_sink=4)  # the sinks alone fill the budget


@pytest.mark.parametrize("policy", BOUNDED_POLICIES)
def test_every_policy_with_every_tiny_budget_refuses_or_works(tiny_llama, policy):
    long_prompt = " ".join(["the cat sat on the mat"] * 4)
    for n_sink in (0, 1, 2):
        for kv_budget in range(1, 6):
            try:
                session = tiny_llama.session(kv_budget=kv_budget, n_sink=n_sink, policy=policy, n_threads=1)
            except BudgetError:
                continue
            with session:
                for _ in range(2):  # and again after reset: nothing was left broken
                    out = session.generate(long_prompt, max_tokens=4, stop_at_eog=False)
                    assert len(out.tokens) == 4, (policy, n_sink, kv_budget)
                    assert session.stats.n_cached <= kv_budget
                    assert session.generate(" more", max_tokens=2, stop_at_eog=False).tokens
                    session.reset()


# -- temperatures too small to sample -----------------------------------------------------


@pytest.mark.parametrize("temperature", [1e-39, 1e-45, 5e-324, GREEDY_BELOW / 2])
def test_temperatures_below_float32_range_are_greedy(tiny_llama, temperature):
    params = SamplingParams(temperature=temperature, top_k=0, top_p=1.0, min_p=0.0, seed=1)
    assert params.greedy
    with open_session(tiny_llama, n_ctx=128) as session:
        tokens = session.generate(PROMPT, max_tokens=6, sampling=params, stop_at_eog=False).tokens
    assert tokens == greedy(tiny_llama)
    assert tokens != [tiny_llama.info.n_vocab - 1] * 6


def test_the_smallest_sampled_temperature_still_samples_the_argmax(smollm2):
    params = SamplingParams(temperature=GREEDY_BELOW, top_k=0, top_p=1.0, min_p=0.0, seed=1)
    assert not params.greedy
    with open_session(smollm2, n_ctx=128) as session:
        assert session.generate(PROMPT, max_tokens=6, sampling=params, stop_at_eog=False).tokens == greedy(smollm2)


# -- the repeat-penalty window ----------------------------------------------------------


def test_a_huge_repeat_window_is_bounded_by_the_context(tiny_llama):
    huge = SamplingParams(repeat_penalty=1.3, repeat_last_n=2**31 - 1)
    context = SamplingParams(repeat_penalty=1.3, repeat_last_n=128)
    before = rss_bytes()
    with open_session(tiny_llama, n_ctx=128) as a, open_session(tiny_llama, n_ctx=128) as b:
        assert (
            a.generate(PROMPT, max_tokens=8, sampling=huge, stop_at_eog=False).tokens
            == b.generate(PROMPT, max_tokens=8, sampling=context, stop_at_eog=False).tokens
        )
        assert rss_bytes() - before < GiB // 4


# -- budgets ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kv_budget",
    [10**12, 2**31, "99999999999GiB", "9" * 400 + "GiB", "²", "١٢", "1e3", "-5", 0, -1],
    ids=lambda spec: repr(spec)[:16],
)
def test_budgets_out_of_range_or_malformed_are_budget_errors(tiny_llama, kv_budget):
    with pytest.raises(BudgetError):
        tiny_llama.session(kv_budget=kv_budget, n_threads=1)


def test_a_budget_larger_than_the_trained_context_is_refused(tiny_llama):
    n_ctx_train = tiny_llama.info.n_ctx_train
    with tiny_llama.session(kv_budget=n_ctx_train, n_threads=1) as session:
        assert session.n_ctx >= n_ctx_train
    with pytest.raises(BudgetError, match="trained context"):
        tiny_llama.session(kv_budget=n_ctx_train + 1, n_threads=1)


@pytest.mark.parametrize("kv_budget", [2.5, [64], b"64", True, object()])
def test_a_budget_of_the_wrong_type_builds_no_context(tiny_dir, kv_budget):
    with pykvd.Model(tiny_dir / "tiny-llama.gguf") as model:  # a fresh model: no cell measured yet
        with pytest.raises(BudgetError, match="kv_budget must be"):
            model.session(kv_budget=kv_budget, n_threads=1)
        assert model._kv_bytes_per_cell is None  # the measuring context was never built


# -- text that is not UTF-8 ---------------------------------------------------------------


BAD_TEXT = "caf\udce9 \udcff\udcfe"  # what Python makes of undecodable bytes (surrogateescape)


def test_text_that_is_not_utf8_is_a_prompt_error_and_changes_nothing(tiny_llama):
    with open_session(tiny_llama, n_ctx=256) as session:
        session.feed(PROMPT)
        tokens = list(session.tokens)
        calls = [
            lambda: tiny_llama.tokenize(BAD_TEXT),
            lambda: session.feed(BAD_TEXT),
            lambda: session.generate(BAD_TEXT, max_tokens=2),
            lambda: session.stream(BAD_TEXT, max_tokens=2),
            lambda: session.chat(BAD_TEXT, max_tokens=2),
            lambda: session.chat({"role": BAD_TEXT, "content": "hi"}, max_tokens=2),
            lambda: session.chat([{"role": "user", "content": "hi"}, {"role": "user", "content": BAD_TEXT}]),
            lambda: tiny_llama.apply_chat_template([{"role": "user", "content": BAD_TEXT}]),
        ]
        for call in calls:
            with pytest.raises(PromptError, match="UTF-8"):
                call()
        assert session.tokens == tokens and session.messages == []
        assert session.generate(max_tokens=2, stop_at_eog=False).tokens


def test_a_chat_template_must_be_utf8_text(tiny_llama, tiny_llama_path):
    with pytest.raises(ArgumentTypeError):
        pykvd.Model(tiny_llama_path, chat_template=5)
    with pytest.raises(ArgumentError, match="UTF-8"):
        pykvd.Model(tiny_llama_path, chat_template=BAD_TEXT)
    with pytest.raises(ArgumentTypeError):
        tiny_llama.apply_chat_template([{"role": "user", "content": "hi"}], template=5)
    with pytest.raises(ArgumentError, match="UTF-8"):
        tiny_llama.apply_chat_template([{"role": "user", "content": "hi"}], template=BAD_TEXT)


# -- integers the binding would reject (int32 and vocabulary ranges) ------------------------------


HUGE = [2**31, 2**40, 2**63, -(2**31) - 1, -1]


def test_every_integer_argument_is_checked_before_the_binding(tiny_llama):
    n_layer = tiny_llama.info.n_layer
    with open_session(tiny_llama, n_ctx=64) as session:
        session.feed(PROMPT)
        tokens = list(session.tokens)
        for value in HUGE:
            calls = {
                "is_end_of_generation": lambda: tiny_llama.is_end_of_generation(value),
                "token_to_bytes": lambda: tiny_llama.token_to_bytes(value),
                "detokenize": lambda: tiny_llama.detokenize([value]),
                "feed": lambda: session.feed([value]),
                "read_kv position": lambda: session.read_kv(0, value),
                "read_kv layer": lambda: session.read_kv(value, 0),
                "capture": lambda: session.capture([value]).__enter__(),
                "evict": lambda: session.evict([value]),
                "forward_layers": lambda: session.forward_layers(
                    np.zeros((1, tiny_llama.info.n_embd), np.float32), [0], value, n_layer
                ),
                "refill": lambda: session.refill(
                    np.zeros((1, 1, tiny_llama.info.n_embd), np.float32), [value], range(0, 1)
                ),
                "max_tokens": lambda: session.generate(max_tokens=value) if value < 0 else None,
                "top_k": lambda: SamplingParams(top_k=value),
                "repeat_last_n": lambda: SamplingParams(repeat_last_n=value),
                "seed": lambda: SamplingParams(seed=value) if value != 2**31 else None,
                "n_ctx": lambda: tiny_llama.session(n_ctx=value),
                "n_batch": lambda: tiny_llama.session(n_batch=value),
                "n_ubatch": lambda: tiny_llama.session(n_ubatch=value),
                "n_sink": lambda: tiny_llama.session(kv_budget=64, n_sink=value),
            }
            for name, call in calls.items():
                try:
                    call()
                except PykvdError:
                    continue
                except Exception as exc:  # noqa: BLE001 -- the point: nothing but pykvd's own errors
                    pytest.fail(f"{name}({value}) raised {type(exc).__name__}: {exc}")
                if name not in ("max_tokens", "seed"):
                    pytest.fail(f"{name}({value}) was accepted")
        assert session.tokens == tokens
        assert session.generate(max_tokens=2, stop_at_eog=False).tokens


def test_read_kv_past_int32_is_an_index_error(tiny_llama):
    with open_session(tiny_llama, n_ctx=64) as session:
        session.feed(PROMPT)
        with pytest.raises(IndexOutOfRangeError):
            session.read_kv(0, 2**31)
        with pytest.raises(IndexError):
            session.read_kv(0, 2**31)


def test_a_nested_capture_is_a_busy_error_and_the_first_one_goes_on(tiny_llama):
    with open_session(tiny_llama, n_ctx=64) as session:
        with session.capture([0]) as capture:
            with pytest.raises(SessionBusyError, match="capture"):
                with session.capture([1]):
                    pass
            session.feed(PROMPT)
        assert len(capture.positions) == len(tiny_llama.tokenize(PROMPT))


# -- special files ------------------------------------------------------------------------


def test_special_files_as_models_say_what_they_are(tmp_path):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    cases = {
        str(fifo): "FIFO",
        "/dev/null": "character device",
        str(tmp_path): "directory",
        str(tmp_path / "absent.gguf"): "does not exist",
    }
    for path, kind in cases.items():
        with pytest.raises(ModelNotFoundError, match=kind):
            pykvd.Model(path)
    with pytest.raises(ArgumentTypeError):
        pykvd.Model(5)


# -- one call at a time --------------------------------------------------------------------


def test_a_call_during_an_unfinished_stream_is_refused(tiny_llama):
    with open_session(tiny_llama, n_ctx=256) as session, open_session(tiny_llama, n_ctx=256) as alone:
        stream = session.stream(PROMPT, max_tokens=6, stop_at_eog=False)
        first = next(stream)
        for call in (
            lambda: session.generate(" more", max_tokens=2),
            lambda: session.feed(" more"),
            lambda: session.chat("hi"),
            session.reset,
            lambda: session.stream(max_tokens=2),
            lambda: session.capture([0]).__enter__(),
        ):
            with pytest.raises(SessionBusyError, match="busy"):
                call()
        rest = "".join(stream)
        expected = alone.generate(PROMPT, max_tokens=6, stop_at_eog=False)
        assert first + rest == expected.text and session.tokens == alone.tokens
        # Free again once the stream is exhausted, closed or dropped.
        session.generate(max_tokens=1)
        stream = session.stream(max_tokens=4)
        next(stream)
        stream.close()
        session.generate(max_tokens=1)
        for _ in session.stream(max_tokens=4):
            break
        session.generate(max_tokens=1)


def test_a_stream_in_another_thread_holds_the_session(tiny_llama):
    started, finish = threading.Event(), threading.Event()
    with open_session(tiny_llama, n_ctx=256) as session:

        def consume():
            stream = session.stream(PROMPT, max_tokens=6, stop_at_eog=False)
            next(stream)
            started.set()
            finish.wait(30)
            list(stream)

        worker = threading.Thread(target=consume)
        worker.start()
        assert started.wait(60)
        with pytest.raises(SessionBusyError):
            session.generate(" more", max_tokens=2)
        finish.set()
        worker.join(60)
        n = len(session.tokens)
        assert session.generate(" more", max_tokens=2, stop_at_eog=False).tokens
        assert len(session.tokens) > n


def test_threads_sharing_a_session_never_interleave_their_histories(tiny_llama):
    prompts = [f" {word} {word} {word}" for word in ("red", "green", "blue", "cat", "dog", "sea")]
    done: list[tuple[str, list[int]]] = []
    refused: list[SessionBusyError] = []
    errors: list[BaseException] = []
    with open_session(tiny_llama, n_ctx=512) as session:
        session.feed(PROMPT)
        barrier = threading.Barrier(len(prompts))

        def call(prompt):
            barrier.wait(30)
            for _ in range(3):
                try:
                    done.append((prompt, session.generate(prompt, max_tokens=3, stop_at_eog=False).tokens))
                except SessionBusyError as exc:
                    refused.append(exc)
                except BaseException as exc:  # noqa: BLE001
                    errors.append(exc)

        workers = [threading.Thread(target=call, args=(p,)) for p in prompts]
        for w in workers:
            w.start()
        for w in workers:
            w.join(120)
        assert not errors, errors
        assert done
        history = session.tokens
        # Each successful call's prompt and reply sit together in the history, in one piece.
        n = len(tiny_llama.tokenize(PROMPT))
        for prompt, tokens in done:
            block = tiny_llama.tokenize(prompt, add_special=False).tolist() + tokens
            assert any(history[i : i + len(block)] == block for i in range(n, len(history))), prompt
        assert len(history) == n + sum(len(tiny_llama.tokenize(p, add_special=False)) + len(t) for p, t in done)


# -- floats whose float32 scaling would overflow, and verify's step counts ------------------------


@pytest.mark.parametrize(
    "settings",
    [{"temperature": 1e31}, {"repeat_penalty": 1e31}, {"repeat_penalty": 1e-31}, {"repeat_penalty": 5e-324}],
    ids=str,
)
def test_scales_that_overflow_float32_logits_are_refused(settings):
    with pytest.raises(pykvd.SamplingError):
        SamplingParams(**settings)


def test_the_largest_scales_still_generate(tiny_llama):
    for params in (
        SamplingParams(temperature=1e30, seed=3),
        SamplingParams(repeat_penalty=1e30),
        SamplingParams(repeat_penalty=1e-30, temperature=0.5, seed=3),
    ):
        with open_session(tiny_llama, n_ctx=128) as session:
            tokens = session.generate(PROMPT, max_tokens=4, sampling=params, stop_at_eog=False).tokens
        assert len(tokens) == 4 and all(0 <= t < tiny_llama.info.n_vocab for t in tokens)


def test_verify_refuses_step_counts_beyond_the_context_before_running(tiny_llama):
    from pykvd.verify import verify

    for steps in ({"cacheless_steps": 2**40}, {"restore_steps": 0}, {"restore_steps": tiny_llama.info.n_ctx_train}):
        with pytest.raises(ArgumentError, match="steps"):
            verify(tiny_llama, **steps)
