"""Bad input through the Python API: each mistake raises its own pykvd exception, never aborts
the process, and leaves the session exactly as it was."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import textwrap

import gguf
import numpy as np
import pytest

import pykvd
import synthetic  # models/synthetic.py, put on sys.path by conftest.py
from gguf_files import write_gguf
from pykvd import (
    ContextOverflowError,
    InvalidModelError,
    ModelNotFoundError,
    PromptError,
    PykvdError,
    SamplingError,
    SamplingParams,
    SessionClosedError,
    UnsupportedArchitectureError,
)

PROMPT = "Hello world, the cat is sitting on the mat."


def open_session(model, **kwargs):
    """model.session(...) on one thread: ggml's spinning thread barriers crawl on a loaded machine."""
    kwargs.setdefault("n_threads", 1)
    return model.session(**kwargs)


# -- files that are not usable models -------------------------------------------


def _patched_copy(src, dst, key: str, value: int):
    """A copy of GGUF src with the scalar metadata value of key overwritten in place."""
    shutil.copy(src, dst)
    reader = gguf.GGUFReader(dst, "r+")
    field = reader.fields[key]
    field.parts[field.data[0]][...] = value
    reader.data.flush()
    del reader
    return dst


def _cut_points(path) -> dict[str, int]:
    """Offsets inside each part of a GGUF: header, metadata, tensor infos, tensor data."""
    reader = gguf.GGUFReader(path)
    fields = [f for name, f in reader.fields.items() if not name.startswith("GGUF.")]
    size = path.stat().st_size
    return {
        "inside the magic": 2,
        "inside the version": 6,
        "inside the counts": 20,
        "inside a metadata key": fields[3].offset + 5,
        "inside the token list": fields[-3].offset + 40,
        "inside the tensor infos": reader.tensors[len(reader.tensors) // 2].field.offset + 6,
        "at the start of the data": reader.data_offset,
        "inside the first tensor": reader.data_offset + 100,
        "halfway through the data": (reader.data_offset + size) // 2,
        "one byte short": size - 1,
    }


def test_missing_path(tmp_path):
    with pytest.raises(ModelNotFoundError) as error:
        pykvd.Model(tmp_path / "missing.gguf")
    assert "does not exist" in str(error.value)
    assert isinstance(error.value, FileNotFoundError)
    with pytest.raises(ModelNotFoundError):
        pykvd.Model(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelNotFoundError, match="directory"):
        pykvd.Model(tmp_path)
    with pytest.raises(ModelNotFoundError):
        pykvd.Model("no-such-model-name")


@pytest.mark.parametrize("content", [b"", b"GGU", b"hello, this is not a model\n" * 100, b"GGUF" + b"\xff" * 60])
def test_not_a_gguf(tmp_path, content):
    path = tmp_path / "not.gguf"
    path.write_bytes(content)
    with pytest.raises(InvalidModelError):
        pykvd.Model(path)


def test_unsupported_gguf_version(tmp_path, tiny_llama_path):
    path = tmp_path / "v99.gguf"
    data = bytearray(tiny_llama_path.read_bytes())
    data[4:8] = (99).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidModelError, match="version 99"):
        pykvd.Model(path)


def test_truncated_gguf(tmp_path, tiny_llama_path):
    for where, size in _cut_points(tiny_llama_path).items():
        path = tmp_path / "cut.gguf"
        with open(tiny_llama_path, "rb") as src:
            path.write_bytes(src.read(size))
        with pytest.raises(InvalidModelError):
            pykvd.Model(path)
            pytest.fail(f"a GGUF cut {where} (at byte {size}) loaded")


def test_unknown_architecture(tmp_path):
    path = write_gguf(tmp_path / "alien.gguf", "notarealarch")
    with pytest.raises(UnsupportedArchitectureError, match="notarealarch"):
        pykvd.Model(path)


def test_no_architecture(tmp_path):
    path = write_gguf(tmp_path / "anonymous.gguf", None)
    with pytest.raises(InvalidModelError, match="general.architecture"):
        pykvd.Model(path)


def test_known_architecture_without_its_tensors(tmp_path):
    # A whole, valid GGUF that llama.cpp itself refuses: its error comes back as InvalidModelError.
    path = write_gguf(tmp_path / "hollow.gguf", "llama", tensors=False)
    with pytest.raises(InvalidModelError, match="could not load"):
        pykvd.Model(path)


# Layer counts that make llama.cpp abort are tested in a subprocess below, so that a
# regression fails one test instead of killing the whole test run.
@pytest.mark.parametrize(
    "key, value",
    [
        ("llama.attention.head_count", 0),
        ("llama.embedding_length", 0),
        ("llama.feed_forward_length", 0),
    ],
)
def test_impossible_hyperparameters(tmp_path, tiny_llama_path, key, value):
    path = _patched_copy(tiny_llama_path, tmp_path / "odd.gguf", key, value)
    with pytest.raises(InvalidModelError):
        pykvd.Model(path)


def test_failed_loads_leave_the_process_usable(tmp_path, tiny_llama, tiny_llama_path):
    for bad in (tmp_path / "missing.gguf", write_gguf(tmp_path / "alien.gguf", "notarealarch")):
        with pytest.raises(PykvdError):
            pykvd.Model(bad)
    with pykvd.Model(tiny_llama_path) as model, open_session(model, n_ctx=64) as s:
        assert len(s.generate(PROMPT, max_tokens=4, stop_at_eog=False).tokens) == 4


# The worst files again, each in its own interpreter: it must exit normally with the
# Python exception printed, not die of a signal (llama.cpp's GGML_ASSERT aborts).
_LOAD_SCRIPT = textwrap.dedent("""
    import sys
    import pykvd
    try:
        pykvd.Model(sys.argv[1])
    except pykvd.PykvdError as exc:
        print("raised", type(exc).__name__)
    else:
        print("loaded")
""")


def _bad_file(kind: str, folder, tiny_llama_path):
    if kind == "truncated header":
        data = tiny_llama_path.read_bytes()[:3000]
    elif kind == "truncated data":
        data = tiny_llama_path.read_bytes()[:-1000]
    elif kind == "unknown architecture":
        return write_gguf(folder / "alien.gguf", "notarealarch")
    elif kind == "no tensors":
        return write_gguf(folder / "hollow.gguf", "llama", tensors=False)
    elif kind == "zero layers":
        return _patched_copy(tiny_llama_path, folder / "zero.gguf", "llama.block_count", 0)
    elif kind == "too many layers":
        return _patched_copy(tiny_llama_path, folder / "many.gguf", "llama.block_count", 4096)
    elif kind == "negative rms epsilon":  # ggml asserts eps >= 0 at the first decode
        return _patched_copy(tiny_llama_path, folder / "eps.gguf", "llama.attention.layer_norm_rms_epsilon", -1.0)
    elif kind == "indivisible kv heads":
        return _patched_copy(tiny_llama_path, folder / "gqa.gguf", "llama.attention.head_count_kv", 3)
    else:
        raise AssertionError(kind)
    path = folder / "bad.gguf"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "kind, exception",
    [
        ("truncated header", "InvalidModelError"),
        ("truncated data", "InvalidModelError"),
        ("unknown architecture", "UnsupportedArchitectureError"),
        ("no tensors", "InvalidModelError"),
        ("zero layers", "InvalidModelError"),
        ("too many layers", "InvalidModelError"),
        ("negative rms epsilon", "InvalidModelError"),
        ("indivisible kv heads", "InvalidModelError"),
    ],
)
def test_bad_files_never_abort_the_process(tmp_path, tiny_llama_path, kind, exception):
    path = _bad_file(kind, tmp_path, tiny_llama_path)
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_SCRIPT, str(path)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, (
        f"exit status {result.returncode} (a negative one is a signal):\n{result.stderr[-2000:]}"
    )
    assert result.stdout.split() == ["raised", exception]


# -- prompts ---------------------------------------------------------------------


class _State:
    """What a session holds, to check that a rejected call changed nothing."""

    def __init__(self, session):
        self.tokens = list(session.tokens)
        self.n_tokens = session.stats.n_tokens
        self.messages = [dict(m) for m in session.messages]
        self.logits = session.logits().copy()

    def assert_unchanged(self, session):
        assert session.tokens == self.tokens
        assert session.stats.n_tokens == self.n_tokens
        assert session.messages == self.messages
        assert np.array_equal(session.logits(), self.logits)


@pytest.fixture
def fed(tiny_llama):
    """A tiny-llama session holding PROMPT, and the greedy continuation it must still produce."""
    with open_session(tiny_llama, n_ctx=256) as reference:
        expected = reference.generate(PROMPT, max_tokens=8, stop_at_eog=False).tokens
    with open_session(tiny_llama, n_ctx=256) as s:
        s.feed(PROMPT)
        state = _State(s)
        yield s
        # Whatever was rejected in the test, the session continues exactly as if it never happened.
        state.assert_unchanged(s)
        assert s.generate(max_tokens=8, stop_at_eog=False).tokens == expected


def test_prompt_longer_than_the_context(fed, tiny_llama):
    too_long = tiny_llama.tokenize("the cat " * fed.n_ctx, add_special=False)
    assert len(too_long) > fed.n_ctx
    with pytest.raises(ContextOverflowError):
        fed.feed(too_long)
    with pytest.raises(ContextOverflowError):
        fed.generate(too_long, max_tokens=4)
    with pytest.raises(ContextOverflowError):
        list(fed.stream(too_long, max_tokens=4))
    with pytest.raises(ContextOverflowError):
        fed.chat("the cat " * fed.n_ctx, max_tokens=4)  # must not drop cached tokens first
    # Fits alone, but not after what the session already holds.
    just_too_many = too_long[: fed.n_ctx - len(fed.tokens) + 1]
    with pytest.raises(ContextOverflowError):
        fed.feed(just_too_many)


def test_prompt_longer_than_the_context_real_model(smollm2):
    with open_session(smollm2, n_ctx=64) as s:
        s.feed("The capital of France is")
        state = _State(s)
        with pytest.raises(ContextOverflowError) as error:
            s.generate("word " * (s.n_ctx + 10), max_tokens=4)
        assert isinstance(error.value, ValueError)
        state.assert_unchanged(s)
        assert len(s.generate(max_tokens=3, stop_at_eog=False).tokens) == 3


def test_chat_longer_than_the_context(smollm2):
    with open_session(smollm2, n_ctx=256) as s:
        s.chat("Reply with one word: yes or no?", max_tokens=4)
        state = _State(s)
        with pytest.raises(ContextOverflowError):
            s.chat("word " * (s.n_ctx + 10), max_tokens=4)
        state.assert_unchanged(s)
        assert s.chat("Why?", max_tokens=3)


@pytest.mark.parametrize("prompt", ["", [], np.array([], dtype=np.int32), ()])
def test_empty_prompt(fed, prompt):
    with pytest.raises(PromptError):
        fed.feed(prompt)
    with pytest.raises(PromptError):
        fed.generate(prompt, max_tokens=2)
    with pytest.raises(PromptError):
        fed.stream(prompt, max_tokens=2)


def test_empty_chat_message(fed):
    for message in ("", [], ()):
        with pytest.raises(PromptError):
            fed.chat(message)


@pytest.mark.parametrize(
    "bad_message",
    [
        [{"role": "user"}],
        [{"content": "hi"}],
        ["hi"],
        [("user", "hi")],
    ],
)
def test_malformed_chat_messages(fed, tiny_llama, bad_message):
    with pytest.raises(PromptError):
        fed.chat(bad_message)
    with pytest.raises(PromptError):
        tiny_llama.apply_chat_template(bad_message)


@pytest.mark.parametrize(
    "ids",
    [
        [-1],
        [5, -7, 6],
        "vocab",  # [n_vocab]: the first id past the vocabulary
        [2**40],
        [2**70],
        np.array([2**63], dtype=np.uint64),
    ],
)
def test_token_ids_out_of_range(fed, tiny_llama, ids):
    if ids == "vocab":
        ids = [tiny_llama.info.n_vocab]
    with pytest.raises(PromptError):
        fed.feed(ids)
    with pytest.raises(PromptError):
        fed.generate(ids, max_tokens=2)
    with pytest.raises(PromptError):
        tiny_llama.detokenize(ids)


@pytest.mark.parametrize(
    "ids",
    [
        [1.5, 2.0],
        np.array([1, 2], dtype=np.float32),
        ["1", "2"],
        [True, False],
        [[1, 2], [3, 4]],
        [1, None],
        7,
        b"abc",
        None,
    ],
)
def test_token_ids_of_the_wrong_type(fed, tiny_llama, ids):
    with pytest.raises(PromptError):
        fed.feed(ids)
    if ids is not None:  # generate(None) means "continue"
        with pytest.raises(PromptError):
            fed.generate(ids, max_tokens=2)
    with pytest.raises(PromptError):
        tiny_llama.detokenize(ids)


def test_bad_single_tokens(tiny_llama):
    for token in (-1, tiny_llama.info.n_vocab, 2**40):
        with pytest.raises(PromptError):
            tiny_llama.token_to_bytes(token)


@pytest.mark.parametrize("text", [None, 42, b"bytes", ["a", "b"]])
def test_tokenize_needs_a_string(tiny_llama, text):
    with pytest.raises(PromptError):
        tiny_llama.tokenize(text)


def test_text_that_is_not_unicode(fed, tiny_llama):
    lone_surrogate = "half a pair: \ud800"
    with pytest.raises(PromptError):
        tiny_llama.tokenize(lone_surrogate)
    with pytest.raises(PromptError):
        fed.feed(lone_surrogate)
    with pytest.raises(PromptError):
        fed.generate(lone_surrogate, max_tokens=2)


def test_bad_chat_template(tiny_llama):
    with pytest.raises(PromptError):
        tiny_llama.apply_chat_template([{"role": "user", "content": "hi"}], template="no such template {{")


def test_generate_without_prompt_on_a_fresh_session(tiny_llama):
    with open_session(tiny_llama, n_ctx=64) as s:
        with pytest.raises(PromptError):
            s.generate(max_tokens=2)
        with pytest.raises(PromptError):
            s.stream(max_tokens=2)
        assert s.tokens == []
        # After a reset, too: the old logits belong to tokens the session forgot.
        s.generate(PROMPT, max_tokens=2)
        s.reset()
        with pytest.raises(PromptError):
            s.generate(max_tokens=2)
        assert s.tokens == []
        assert len(s.generate(PROMPT, max_tokens=2, stop_at_eog=False).tokens) == 2


# -- sampler settings ------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"temperature": -0.1},
        {"temperature": math.nan},
        {"temperature": math.inf},
        {"temperature": "0.8"},
        {"temperature": None},
        {"temperature": True},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"top_p": math.nan},
        {"min_p": -0.1},
        {"min_p": 1.1},
        {"top_k": -1},
        {"top_k": 2.5},
        {"top_k": "40"},
        {"top_k": 2**31},
        {"repeat_penalty": 0.0},
        {"repeat_penalty": -1.0},
        {"repeat_penalty": math.nan},
        {"repeat_last_n": -1},
        {"repeat_last_n": 2**40},
        {"seed": -1},
        {"seed": 2**32},
        {"seed": 2**32 - 1},
        {"seed": 1.0},
        {"seed": "42"},
    ],
    ids=lambda settings: ",".join(f"{k}={v!r}" for k, v in settings.items()),
)
def test_bad_sampler_values(settings):
    with pytest.raises(SamplingError) as error:
        SamplingParams(**{"temperature": 0.8, "seed": 1, **settings})
    assert isinstance(error.value, ValueError)


def test_good_sampler_edge_values():
    edge = SamplingParams(
        temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0, repeat_last_n=0, seed=2**32 - 2
    )
    assert edge.greedy
    SamplingParams(temperature=2, top_k=2**31 - 1, top_p=1e-9, min_p=1.0, seed=0)


def test_numpy_numbers_are_valid_sampler_values(tiny_llama):
    params = SamplingParams(temperature=np.float32(0.7), top_k=np.int64(5), seed=np.uint32(3))
    with open_session(tiny_llama) as session:
        assert len(session.generate(PROMPT, max_tokens=3, sampling=params, stop_at_eog=False).tokens) == 3


def test_logits_before_any_prompt(tiny_llama):
    with open_session(tiny_llama) as session:
        with pytest.raises(PromptError):
            session.logits()


def test_sampling_must_be_sampling_params(fed):
    with pytest.raises(TypeError):
        fed.generate(max_tokens=2, sampling={"temperature": 0.5})
    with pytest.raises(TypeError):
        fed.generate(PROMPT, max_tokens=2, sampling=0.5)
    with pytest.raises(TypeError):
        fed.chat("Hi", max_tokens=2, sampling="greedy")


# -- session and generation arguments -------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_ctx": 0},
        {"n_ctx": -1},
        {"n_ctx": 1.5},
        {"n_ctx": "64"},
        {"n_ctx": True},
        {"n_ctx": 2**32},
        {"n_batch": 0},
        {"n_batch": 2**40},
        {"n_ubatch": 0},
        {"n_batch": 8, "n_ubatch": 16},
        {"n_threads": -2},
        {"n_threads": 0},
    ],
    ids=lambda kwargs: ",".join(f"{k}={v!r}" for k, v in kwargs.items()),
)
def test_bad_session_arguments(tiny_llama, kwargs):
    with pytest.raises(ValueError):
        tiny_llama.session(**kwargs)
    assert not tiny_llama.closed


@pytest.mark.parametrize("max_tokens", [-1, 1.5, "4", True, None])
def test_bad_max_tokens(fed, max_tokens):
    # Checked before the prompt is processed: the prompt is not added either.
    with pytest.raises(ValueError):
        fed.generate(PROMPT, max_tokens=max_tokens)
    with pytest.raises(ValueError):
        fed.generate(max_tokens=max_tokens)
    with pytest.raises(ValueError):
        fed.stream(PROMPT, max_tokens=max_tokens)
    with pytest.raises(ValueError):
        fed.chat("Hi", max_tokens=max_tokens)  # must not drop cached tokens first


def test_bad_max_tokens_in_chat_keeps_the_conversation(smollm2):
    with open_session(smollm2, n_ctx=256) as s:
        s.chat("Reply with one word: yes or no?", max_tokens=8)
        state = _State(s)
        with pytest.raises(ValueError):
            s.chat("Why?", max_tokens=-1)
        with pytest.raises(TypeError):
            s.chat("Why?", max_tokens=4, sampling={"temperature": 1.0})
        state.assert_unchanged(s)


# -- closed objects ---------------------------------------------------------------


def test_closed_session(tiny_llama):
    s = open_session(tiny_llama, n_ctx=64)
    s.feed(PROMPT)
    s.close()
    for use in (
        lambda: s.feed(PROMPT),
        lambda: s.generate(max_tokens=1),
        lambda: s.generate(PROMPT),
        lambda: s.stream(PROMPT),
        lambda: s.chat("Hi"),
        s.logits,
        lambda: s.tokens,
        lambda: s.stats,
        s.reset,
    ):
        with pytest.raises(SessionClosedError):
            use()
    s.close()
    assert not tiny_llama.closed


def test_session_on_a_closed_model(tiny_llama_path):
    model = pykvd.Model(tiny_llama_path)
    model.close()
    with pytest.raises(SessionClosedError):
        model.session(n_ctx=64)
    with pytest.raises(SessionClosedError):
        pykvd.Session(model, n_ctx=64)


def test_the_exception_hierarchy():
    for cls in (
        ModelNotFoundError,
        InvalidModelError,
        UnsupportedArchitectureError,
        PromptError,
        ContextOverflowError,
        SamplingError,
        SessionClosedError,
    ):
        assert issubclass(cls, PykvdError)
    assert issubclass(ModelNotFoundError, FileNotFoundError)
    for cls in (InvalidModelError, UnsupportedArchitectureError, PromptError, ContextOverflowError, SamplingError):
        assert issubclass(cls, ValueError)
    assert issubclass(SessionClosedError, RuntimeError)


def test_synthetic_generator_rejects_bad_arguments(tmp_path):
    # The fixture generator itself: unknown architectures and layer counts are refused.
    with pytest.raises(ValueError):
        synthetic.write_tiny_gguf("notarealarch", tmp_path / "x.gguf")
    with pytest.raises(ValueError):
        synthetic.write_tiny_gguf("llama", tmp_path / "x.gguf", n_layer=0)
