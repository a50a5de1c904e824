"""pykvd.Llama against llama-cpp-python 0.3.36's own Llama: the same calls give the same text and dicts of
the same shape, plus what only pykvd has (a KV budget, checked arguments).

The reference runs llama-cpp-python's Python package, taken from the source distribution the build used
(in pykvd's cache), in a subprocess over pykvd's bundled libllama (as tests/test_llama_cpp_python_compat.py
does). Both sides run the same list of calls through run_calls, whose source is sent to the subprocess.
"""

from __future__ import annotations

import inspect
import json

import pytest

import pykvd
from conftest import run_llama_cpp_python
from pykvd.errors import (
    ArgumentError,
    ArgumentTypeError,
    BudgetError,
    ContextOverflowError,
    ModelNotFoundError,
    PolicyError,
    PromptError,
    PykvdError,
    SamplingError,
    SessionBusyError,
    SessionClosedError,
)

PROMPT = "The capital of France is"
COUNTING = "Count: one, two, three,"
QUESTION = [{"role": "user", "content": "What is 2+2?"}]
WITH_SYSTEM = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Name a red fruit."}]
CONTEXT = {"n_ctx": 512, "n_threads": 1, "verbose": False}

# name -> (method, args, kwargs); the same on both sides. Greedy unless a seed is given.
CALLS = {
    "call": ("__call__", [PROMPT], {"max_tokens": 12, "temperature": 0}),
    "stop_list": ("create_completion", [COUNTING], {"max_tokens": 24, "temperature": 0, "stop": [" five", "seven"]}),
    "stop_str": ("create_completion", [PROMPT], {"max_tokens": 12, "temperature": 0, "stop": "."}),
    "echo": ("create_completion", [PROMPT], {"max_tokens": 6, "temperature": 0, "echo": True}),
    "token_prompt": ("create_completion", [[504, 3575, 282, 4649, 314]], {"max_tokens": 8, "temperature": 0}),
    "seeded": ("create_completion", [PROMPT], {"max_tokens": 16, "temperature": 0.8, "seed": 42}),
    "stream": ("__call__", [PROMPT], {"max_tokens": 12, "temperature": 0, "stream": True}),
    "stream_stop": (
        "create_completion",
        [COUNTING],
        {"max_tokens": 24, "temperature": 0, "stop": [" five"], "stream": True},
    ),
    "chat": ("create_chat_completion", [QUESTION], {"temperature": 0, "max_tokens": 32}),
    "chat_system": ("create_chat_completion", [WITH_SYSTEM], {"temperature": 0, "max_tokens": 16}),
    "chat_length": ("create_chat_completion", [QUESTION], {"temperature": 0, "max_tokens": 4}),
    "chat_stream": ("create_chat_completion", [QUESTION], {"temperature": 0, "max_tokens": 32, "stream": True}),
    "tokenize": ("tokenize", ["Hello, world! <|im_start|>"], {"add_bos": True, "special": False}),
    "tokenize_special": ("tokenize", ["<|im_start|>user\nHi<|im_end|>"], {"add_bos": False, "special": True}),
    "detokenize": ("detokenize", [[1, 19556, 28, 905, 17, 2]], {}),
    "detokenize_special": ("detokenize", [[1, 19556, 28, 905, 17, 2]], {"special": True}),
    "token_eos": ("token_eos", [], {}),
    "token_bos": ("token_bos", [], {}),
    "n_ctx": ("n_ctx", [], {}),
    "n_vocab": ("n_vocab", [], {}),
}
STREAMS = [name for name, (_, _, kwargs) in CALLS.items() if kwargs.get("stream")]
RESPONSES = [name for name, (method, _, _) in CALLS.items() if "completion" in method or method == "__call__"]
RESPONSES = [name for name in RESPONSES if name not in STREAMS]


def run_calls(llm, calls):
    """Each call's result as JSON-able data: a stream as its list of chunks, bytes as latin-1 text."""
    results = {}
    for name, (method, args, kwargs) in calls.items():
        if method == "tokenize":  # JSON carries the text; tokenize takes its UTF-8 bytes
            args = [args[0].encode("utf-8"), *args[1:]]
        result = getattr(llm, method)(*args, **kwargs)
        if kwargs.get("stream"):
            result = list(result)
        elif isinstance(result, bytes):
            result = result.decode("latin-1")
        results[name] = result
    return results


REFERENCE = """
import json, sys
import llama_cpp
{runner}
model_path, context, calls = json.loads(sys.stdin.read())
llm = llama_cpp.Llama(model_path=model_path, **context)
print(json.dumps(run_calls(llm, calls)))
"""


@pytest.fixture(scope="module")
def reference(llama_cpp_python_dir, smollm2_path):
    """What llama-cpp-python's Llama returns for CALLS."""
    script = REFERENCE.format(runner=inspect.getsource(run_calls))
    # pykvd's exact profile attends with flash attention; llama-cpp-python's flash_attn=True does too
    stdin = json.dumps([str(smollm2_path), CONTEXT | {"flash_attn": True}, CALLS])
    return json.loads(run_llama_cpp_python(llama_cpp_python_dir, script, stdin=stdin))


@pytest.fixture(scope="module")
def llm(smollm2_path):
    with pykvd.Llama(model_path=str(smollm2_path), **CONTEXT) as llm:
        yield llm


@pytest.fixture(scope="module")
def ours(llm):
    """What pykvd.Llama returns for CALLS, through JSON as the reference's results come."""
    return json.loads(json.dumps(run_calls(llm, CALLS)))


def key_shape(value):
    """The nested key structure of a response, with the type of each leaf."""
    if isinstance(value, dict):
        return {key: key_shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [key_shape(item) for item in value]
    return type(value).__name__


def collapsed(shapes):
    """Consecutive equal shapes as one: a stream's shapes without depending on its number of chunks."""
    return [shape for i, shape in enumerate(shapes) if i == 0 or shape != shapes[i - 1]]


def meaningful(chunks):
    """A stream's chunks without empty ones that finish nothing: llama-cpp-python sends one when a stop
    string ends the text inside a token; pykvd does not."""
    choices = [chunk["choices"][0] for chunk in chunks]
    return [c for c, choice in zip(chunks, choices) if choice.get("text", "x") or choice["finish_reason"]]


def without_ids(value):
    """A response without the fields that differ from run to run (id, created)."""
    if isinstance(value, dict):
        return {key: without_ids(item) for key, item in value.items() if key not in ("id", "created")}
    if isinstance(value, list):
        return [without_ids(item) for item in value]
    return value


# -- the same as llama-cpp-python ------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CALLS))
def test_same_result_as_llama_cpp_python(reference, ours, name):
    """Texts, finish reasons, usage, stream chunks, token ids and bytes: all equal, except ids and times."""
    if name in STREAMS:
        assert without_ids(meaningful(ours[name])) == without_ids(meaningful(reference[name]))
    else:
        assert without_ids(ours[name]) == without_ids(reference[name])


@pytest.mark.parametrize("name", RESPONSES + STREAMS)
def test_same_key_structure_as_llama_cpp_python(reference, ours, name):
    if name in STREAMS:
        assert collapsed(key_shape(ours[name])) == collapsed(key_shape(reference[name]))
    else:
        assert key_shape(ours[name]) == key_shape(reference[name])
        assert list(ours[name]) == list(reference[name])  # the keys in the same order too


def test_the_reference_calls_cover_what_they_claim(reference):
    """The comparisons above are only as good as the calls: stops, lengths and chunks really happen."""
    assert reference["stop_list"]["choices"][0]["finish_reason"] == "stop"
    assert reference["stop_list"]["usage"]["completion_tokens"] < 24
    assert reference["stop_str"]["choices"][0]["text"] == " Paris"
    assert reference["chat"]["choices"][0]["finish_reason"] == "stop"
    assert reference["chat_length"]["choices"][0]["finish_reason"] == "length"
    assert reference["echo"]["choices"][0]["text"].startswith(PROMPT)
    for name in STREAMS:
        assert len(reference[name]) > 3
    assert "".join(c["choices"][0]["text"] for c in reference["stream"]) == reference["call"]["choices"][0]["text"]


def test_response_ids_and_objects(ours):
    assert ours["call"]["id"].startswith("cmpl-") and ours["call"]["object"] == "text_completion"
    assert ours["chat"]["id"].startswith("chatcmpl-") and ours["chat"]["object"] == "chat.completion"
    chunks = ours["chat_stream"]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert chunks[-1]["choices"][0]["delta"] == {} and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == ours["chat"]["choices"][0]["message"]["content"]


# -- prompt reuse ------------------------------------------------------------------------------------


def prefilled(llm) -> int:
    return llm.session.stats.n_prefill_tokens


def test_a_prompt_that_extends_the_session_processes_only_its_new_tokens(llm, smollm2_path):
    first = llm(PROMPT, max_tokens=8, temperature=0)["choices"][0]["text"]
    decoded = len(llm.session.tokens) - 1  # the last sampled token was never run through the model
    longer = PROMPT + first + " Its"
    before = prefilled(llm)
    reused = llm(longer, max_tokens=8, temperature=0)
    n_prompt = reused["usage"]["prompt_tokens"]
    assert n_prompt > decoded + 1
    assert prefilled(llm) - before == n_prompt - decoded  # only what the cache lacked went through the model
    with pykvd.Llama(model_path=str(smollm2_path), **CONTEXT) as fresh:
        assert reused["choices"] == fresh(longer, max_tokens=8, temperature=0)["choices"]


def test_a_prompt_that_does_not_extend_the_session_starts_over(llm):
    llm(PROMPT, max_tokens=4, temperature=0)
    before = prefilled(llm)
    out = llm(COUNTING, max_tokens=4, temperature=0)
    assert prefilled(llm) - before == out["usage"]["prompt_tokens"]
    assert llm.session.tokens[: out["usage"]["prompt_tokens"]] == llm.tokenize(COUNTING.encode())


def test_a_prompt_that_departs_part_way_keeps_the_common_prefix(llm, smollm2_path):
    """As llama-cpp-python keeps its longest common prefix: only the tokens after it (and the last kept
    one, whose logits went with the rest) go through the model, and the result is a fresh object's."""
    llm(PROMPT + " It is known for", max_tokens=4, temperature=0)
    departing = PROMPT + " Its most famous"
    shared = len(llm.tokenize(PROMPT.encode()))
    before = prefilled(llm)
    out = llm(departing, max_tokens=4, temperature=0)
    n_prompt = out["usage"]["prompt_tokens"]
    assert n_prompt > shared and prefilled(llm) - before <= n_prompt - shared + 1
    with pykvd.Llama(model_path=str(smollm2_path), **CONTEXT) as fresh:
        assert out["choices"] == fresh(departing, max_tokens=4, temperature=0)["choices"]


def test_reset_forgets_the_session(llm):
    llm(PROMPT, max_tokens=4, temperature=0)
    llm.reset()
    assert llm.session.tokens == []
    before = prefilled(llm)
    out = llm(PROMPT, max_tokens=4, temperature=0)
    assert prefilled(llm) - before == out["usage"]["prompt_tokens"]


# -- pykvd's own: a KV budget --------------------------------------------------------------------------


def chat_turns(llm, questions, max_tokens=32):
    messages, replies = [], []
    for question in questions:
        messages.append({"role": "user", "content": question})
        reply = llm.create_chat_completion(messages, temperature=0, max_tokens=max_tokens)
        content = reply["choices"][0]["message"]["content"]
        messages.append({"role": "assistant", "content": content})
        replies.append(content)
    return replies


def test_kvdirect_under_a_budget_chats_exactly_like_the_full_cache(smollm2_path):
    questions = ["Name three colours.", "Which of them is the colour of the sky?", "And of grass?"]
    with pykvd.Llama(model_path=str(smollm2_path), **CONTEXT) as full:
        expected = chat_turns(full, questions)
        full_kv = full.session.stats.kv_bytes
    with pykvd.Llama(model_path=str(smollm2_path), kv_budget=64, policy="kvdirect", **CONTEXT) as bounded:
        assert chat_turns(bounded, questions) == expected
        stats = bounded.session.stats
        assert stats.n_tokens > 64 >= stats.n_cached  # the conversation outgrew the budget
        assert stats.kv_bytes < full_kv
        assert bounded.n_ctx() == 512 and bounded.session.policy == "kvdirect"


# -- bad arguments -------------------------------------------------------------------------------------

BAD_CONSTRUCTORS = {
    "missing model": ({"model_path": "/nonexistent/model.gguf"}, ModelNotFoundError),
    "model path type": ({"model_path": 3}, ArgumentTypeError),
    "n_ctx -1": ({"n_ctx": -1}, ArgumentError),
    "n_ctx str": ({"n_ctx": "512"}, ArgumentError),
    "n_threads absurd": ({"n_threads": 10**6}, ArgumentError),
    "n_threads zero": ({"n_threads": 0}, ArgumentError),
    "n_batch zero": ({"n_batch": 0}, ArgumentError),
    "seed str": ({"seed": "x"}, SamplingError),
    "flash_attn str": ({"flash_attn": "yes"}, ArgumentTypeError),
    "chat_format type": ({"chat_format": 3}, ArgumentTypeError),
    "chat_format unknown": ({"chat_format": "no-such-format"}, ArgumentError),
    "chat_format llama-cpp-python's": ({"chat_format": "llama-2"}, ArgumentError),
    "lora": ({"lora_path": "adapter.gguf"}, ArgumentError),
    "kv overrides": ({"kv_overrides": {"a": 1}}, ArgumentError),
    "rope base": ({"rope_freq_base": 10000.0}, ArgumentError),
    "embedding": ({"embedding": True}, ArgumentError),
    "quantized KV": ({"type_k": 8}, ArgumentError),
    "unknown keyword": ({"no_such_option": 1}, ArgumentTypeError),
    "budget too small": ({"kv_budget": 2}, BudgetError),
    "unknown policy": ({"kv_budget": 64, "policy": "no-such-policy"}, PolicyError),
    "window beyond training": ({"kv_budget": 64, "n_ctx": 10**6}, ArgumentError),
}


@pytest.mark.parametrize("name", list(BAD_CONSTRUCTORS))
def test_bad_constructor_arguments_raise_pykvd_errors(smollm2_path, name):
    changes, error = BAD_CONSTRUCTORS[name]
    kwargs = {"model_path": str(smollm2_path), **CONTEXT, **changes}
    with pytest.raises(error) as caught:
        pykvd.Llama(**kwargs)
    assert isinstance(caught.value, PykvdError)


def test_harmless_llama_cpp_python_keywords_are_accepted(smollm2_path, reference):
    ignored = dict(use_mlock=True, n_threads_batch=2, logits_all=True, offload_kqv=False, numa=False, type_k=1)
    with pykvd.Llama(model_path=str(smollm2_path), chat_format="chatml", **CONTEXT, **ignored) as llm:
        assert llm(PROMPT, max_tokens=12, temperature=0)["choices"] == reference["call"]["choices"]
        reply = llm.create_chat_completion(WITH_SYSTEM, temperature=0, max_tokens=16)
        assert reply["choices"][0]["message"]["content"]  # llama.cpp's chatml template answers too


def test_a_gguf_without_a_chat_template_needs_a_chat_format(gemma3_path):
    with pykvd.Llama(model_path=str(gemma3_path), **CONTEXT) as base:
        with pytest.raises(PromptError, match="chat_format"):
            base.create_chat_completion(QUESTION)
        assert base(PROMPT, max_tokens=4, temperature=0)["usage"]["completion_tokens"] == 4  # still usable
    with pykvd.Llama(model_path=str(gemma3_path), chat_format="gemma", **CONTEXT) as chat:
        reply = chat.create_chat_completion(QUESTION, temperature=0, max_tokens=8)
        assert reply["choices"][0]["message"]["content"] and reply["usage"]["prompt_tokens"] > 8


BAD_CALLS = {
    "prompt type": (lambda llm: llm(123), ArgumentTypeError),
    "token out of vocabulary": (lambda llm: llm([10**9]), PromptError),
    "empty token list": (lambda llm: llm([]), PromptError),
    "prompt too long": (lambda llm: llm("word " * 600), ContextOverflowError),
    "max_tokens str": (lambda llm: llm(PROMPT, max_tokens="8"), ArgumentError),
    "temperature str": (lambda llm: llm(PROMPT, temperature="hot"), SamplingError),
    "top_p out of range": (lambda llm: llm(PROMPT, top_p=2.0), SamplingError),
    "seed out of range": (lambda llm: llm(PROMPT, seed=2**40), SamplingError),
    "stop type": (lambda llm: llm(PROMPT, stop=[1]), ArgumentTypeError),
    "empty stop": (lambda llm: llm(PROMPT, stop=[""]), ArgumentError),
    "logprobs": (lambda llm: llm(PROMPT, logprobs=3), ArgumentError),
    "grammar": (lambda llm: llm(PROMPT, grammar=object()), ArgumentError),
    "presence penalty": (lambda llm: llm(PROMPT, presence_penalty=0.5), ArgumentError),
    "stream str": (lambda llm: llm(PROMPT, stream="yes"), ArgumentTypeError),
    "messages str": (lambda llm: llm.create_chat_completion("hi"), PromptError),
    "message without role": (lambda llm: llm.create_chat_completion([{"content": "hi"}]), PromptError),
    "message content type": (lambda llm: llm.create_chat_completion([{"role": "user", "content": 3}]), PromptError),
    "no messages": (lambda llm: llm.create_chat_completion([]), PromptError),
    "tools": (lambda llm: llm.create_chat_completion(QUESTION, tools=[{"type": "function"}]), ArgumentError),
    "tokenize str": (lambda llm: llm.tokenize("text"), ArgumentTypeError),
    "tokenize invalid UTF-8": (lambda llm: llm.tokenize(b"\xff\xfe"), PromptError),
    "detokenize negative id": (lambda llm: llm.detokenize([-1]), PromptError),
    "detokenize not ids": (lambda llm: llm.detokenize("abc"), PromptError),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_a_bad_call_raises_and_leaves_the_object_usable(llm, reference, name):
    call, error = BAD_CALLS[name]
    with pytest.raises(error) as caught:
        call(llm)
    assert isinstance(caught.value, PykvdError)
    assert llm(PROMPT, max_tokens=12, temperature=0)["choices"] == reference["call"]["choices"]


def test_an_unfinished_stream_keeps_other_calls_out_until_it_is_closed(llm, reference):
    chunks = llm(PROMPT, max_tokens=12, temperature=0, stream=True)
    first = next(chunks)
    assert first["choices"][0]["text"] == reference["stream"][0]["choices"][0]["text"]
    with pytest.raises(SessionBusyError):
        llm(PROMPT, max_tokens=4, temperature=0)
    chunks.close()
    assert llm(PROMPT, max_tokens=12, temperature=0)["choices"] == reference["call"]["choices"]


def test_a_fixed_seed_repeats_and_a_random_one_varies(smollm2_path):
    with pykvd.Llama(model_path=str(smollm2_path), seed=7, **CONTEXT) as llm:
        texts = {llm(PROMPT, max_tokens=16, temperature=1.5)["choices"][0]["text"] for _ in range(3)}
        assert len(texts) == 1  # a constructor seed fixes every completion
        llm.set_seed(-1)
        texts = {llm(PROMPT, max_tokens=16, temperature=1.5)["choices"][0]["text"] for _ in range(4)}
        assert len(texts) > 1


def test_a_closed_llama_raises(smollm2_path):
    llm = pykvd.Llama(model_path=str(smollm2_path), **CONTEXT)
    llm.close()
    for call in (lambda: llm(PROMPT), lambda: llm.tokenize(b"x"), lambda: llm.create_chat_completion(QUESTION)):
        with pytest.raises(SessionClosedError):
            call()
    llm.close()  # closing twice is fine
