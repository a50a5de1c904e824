"""`pykvd serve`, tested with the real `openai` client against live servers on free loopback ports.

Two servers run for the whole module (the model loads once in each): a full-cache one with two slots
and an API key, and a kvdirect one under a 64-token budget; one test starts a third, under streaming.
Greedy and seeded answers are compared with the same generation run in-process, so the server is
checked against pykvd itself, token for token.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from pykvd import SamplingParams
from servers import Server

pytestmark = pytest.mark.real_model  # every server here runs SmolLM2

KEY = "test-key-123"
N_CTX_PER_SLOT = 1024  # -c 2048 shared by two slots
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
CONVERSATION = (
    "What is the capital of France?",
    "What is the most famous tower there?",
    "Who designed it?",
)


@pytest.fixture(scope="module")
def server():
    live = Server("smollm2", "-np", "2", "-c", str(2 * N_CTX_PER_SLOT), "--queue", "8", api_key=KEY)
    yield live
    live.stop()
    assert not "".join(live.stdout).strip(), "the server wrote to stdout"


@pytest.fixture(scope="module")
def kvdirect_server():
    live = Server("smollm2", "-t", "1", "--kv-budget", "64", "--policy", "kvdirect", "--checkpoint", "residuals")
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(server):
    return server.client()


@pytest.fixture(scope="module")
def local(smollm2):
    """In-process generation with the server's settings: what the server must answer."""

    def generate(prompt_ids, max_tokens, sampling=None, stop_at_eog=True):
        # One thread: two OpenMP threads on a busy 2-core machine can be many times slower.
        with smollm2.session(n_ctx=N_CTX_PER_SLOT, n_threads=1) as session:
            return session.generate(prompt_ids, max_tokens=max_tokens, sampling=sampling, stop_at_eog=stop_at_eog)

    def chat_ids(messages):
        return smollm2.tokenize(smollm2.apply_chat_template(messages))

    generate.chat_ids = chat_ids
    generate.tokenize = smollm2.tokenize
    return generate


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and "code" in error
    if code is not None:
        assert error["code"] == code, error
    return error


# -- the endpoints -----------------------------------------------------------------------------------


def test_health_and_models(server, client):
    with server.http(authorized=False) as http:
        assert http.get("/health").json() == {"status": "ok"}
    models = client.models.list()
    assert [m.id for m in models.data] == ["smollm2"]


def test_chat_answers_as_pykvd_does_in_process(client, local):
    answer = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=16, temperature=0)
    want = local(local.chat_ids(QUESTION), 16)
    choice = answer.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == want.text
    assert choice.finish_reason == ("stop" if want.finish_reason == "stop" else "length")
    assert answer.object == "chat.completion" and answer.id.startswith("chatcmpl-")
    assert answer.usage.prompt_tokens == len(local.chat_ids(QUESTION))
    assert answer.usage.completion_tokens == len(want.tokens)
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_streamed_chat_is_the_same_text_in_chunks(client):
    whole = client.chat.completions.create(messages=QUESTION, max_tokens=20, model="m").choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            messages=QUESTION, max_tokens=20, model="m", stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 2 and "".join(pieces) == whole
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 2
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0  # the same prompt as just before


def test_the_event_stream_ends_with_done(server):
    body = {"messages": QUESTION, "max_tokens": 4, "stream": True}
    with server.http() as http, http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]" and len(events) >= 4


def test_completions_continue_the_text(client, local):
    prompt = "The three primary colors are"
    answer = client.completions.create(model="m", prompt=prompt, max_tokens=12)
    want = local(local.tokenize(prompt), 12)
    assert answer.choices[0].text == want.text and answer.object == "text_completion"
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 12
    streamed = client.completions.create(model="m", prompt=prompt, max_tokens=12, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == want.text
    # Token ids are a prompt too.
    by_ids = client.completions.create(model="m", prompt=[int(t) for t in local.tokenize(prompt)], max_tokens=12)
    assert by_ids.choices[0].text == want.text


def test_seeded_sampling_is_reproducible_and_matches_pykvd(client, local):
    def sample(seed):
        answer = client.chat.completions.create(model="m", messages=QUESTION, max_tokens=24, temperature=1.0, seed=seed)
        return answer.choices[0].message.content

    first, again = sample(42), sample(42)
    assert first == again
    assert len({first, sample(43), sample(44)}) > 1
    want = local(local.chat_ids(QUESTION), 24, SamplingParams(temperature=1.0, seed=42)).text
    assert first == want


def test_llama_server_sampling_extensions(client, local):
    ids = local.chat_ids(QUESTION)
    # top_k 1 leaves one candidate: sampling at any temperature is greedy.
    top1 = client.chat.completions.create(
        model="m", messages=QUESTION, max_tokens=12, temperature=1.5, seed=1, extra_body={"top_k": 1}
    )
    assert top1.choices[0].message.content == local(ids, 12).text
    sampling = SamplingParams(temperature=0.8, seed=5, top_k=20, min_p=0.1, repeat_penalty=1.3)
    extended = client.chat.completions.create(
        model="m",
        messages=QUESTION,
        max_tokens=12,
        temperature=0.8,
        seed=5,
        extra_body={"top_k": 20, "min_p": 0.1, "repeat_penalty": 1.3},
    )
    assert extended.choices[0].message.content == local(ids, 12, sampling).text
    zero = client.chat.completions.create(
        model="m", messages=QUESTION, max_tokens=4, presence_penalty=0, frequency_penalty=0
    )
    assert zero.choices[0].message.content


def test_stop_strings_and_token_limits(client, local):
    full = local(local.chat_ids(QUESTION), 16).text
    assert "Paris" in full
    stopped = client.chat.completions.create(model="m", messages=QUESTION, max_tokens=16, stop=["Paris"])
    assert stopped.choices[0].message.content == full[: full.index("Paris")]
    assert stopped.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(model="m", messages=QUESTION, max_tokens=16, stop="Paris", stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == full[: full.index("Paris")]
    for field in ("max_tokens", "max_completion_tokens"):
        short = client.chat.completions.create(model="m", messages=QUESTION, **{field: 3})
        assert short.usage.completion_tokens == 3 and short.choices[0].finish_reason == "length", field


# -- prompt reuse ---------------------------------------------------------------------------------------


def converse(client, turns, max_tokens=24) -> list:
    """A chat client's conversation: every turn resends the whole history."""
    messages, answers = [], []
    for text in turns:
        messages.append({"role": "user", "content": text})
        answer = client.chat.completions.create(model="m", messages=messages, max_tokens=max_tokens, temperature=0)
        messages.append({"role": "assistant", "content": answer.choices[0].message.content})
        answers.append(answer)
    return answers


def assert_each_turn_processes_only_its_new_tokens(answers) -> None:
    for before, after in zip(answers, answers[1:]):
        held = before.usage.prompt_tokens + before.usage.completion_tokens
        grown = after.usage.prompt_tokens - held  # the new user message and the template around it
        processed = after.usage.prompt_tokens - after.usage.prompt_tokens_details.cached_tokens
        # One more token at most: the reply's last token is processed again when it was never decoded
        # or when its re-tokenized text splits differently.
        assert grown <= processed <= grown + 2, (grown, processed)
        assert after.usage.prompt_tokens_details.cached_tokens >= held - 2


def test_a_chat_processes_only_each_turns_new_tokens(server, client):
    answers = converse(client, CONVERSATION)
    assert answers[0].usage.prompt_tokens_details.cached_tokens < answers[0].usage.prompt_tokens
    assert_each_turn_processes_only_its_new_tokens(answers)
    held = answers[-1].usage.prompt_tokens + answers[-1].usage.completion_tokens
    slots = server.slots()
    assert held in [s["tokens"] for s in slots["slots"]] or held + 1 in [s["tokens"] for s in slots["slots"]]


def test_slots_report_memory(server):
    report = server.slots()
    assert report["n_slots"] == 2 and len(report["slots"]) == 2
    assert report["kv_bytes_total"] == sum(s["kv_bytes"] for s in report["slots"]) > 0
    for slot in report["slots"]:
        assert slot["policy"] == "full" and slot["n_ctx"] == N_CTX_PER_SLOT
        assert slot["cells_in_use"] == slot["tokens"] or slot["cells_in_use"] == slot["tokens"] - 1
        assert slot["checkpoint_bytes"] == 0 and slot["is_processing"] is False


def test_a_lossy_policy_reuses_by_continuing_the_same_session():
    streaming = Server("smollm2", "-t", "1", "--kv-budget", "64", "--policy", "streaming")
    try:
        answers = converse(streaming.client(), CONVERSATION)
        assert_each_turn_processes_only_its_new_tokens(answers)
        slot = streaming.slots()["slots"][0]
        assert slot["policy"] == "streaming" and slot["tokens"] > 64 >= slot["cells_in_use"]
    finally:
        streaming.stop()


def test_kvdirect_under_64_tokens_answers_as_the_full_cache(server, client, kvdirect_server):
    bounded = converse(kvdirect_server.client(), CONVERSATION)
    full = converse(client, CONVERSATION)
    assert [a.choices[0].message.content for a in bounded] == [a.choices[0].message.content for a in full]
    assert_each_turn_processes_only_its_new_tokens(bounded)
    slot = kvdirect_server.slots()["slots"][0]
    assert slot["policy"] == "kvdirect" and slot["checkpoint"] == "residuals"
    assert slot["tokens"] > 64 >= slot["cells_in_use"] and slot["checkpoint_bytes"] > 0
    assert slot["kv_bytes"] < server.slots()["slots"][0]["kv_bytes"]


# -- concurrency and disconnects ----------------------------------------------------------------------


def test_four_clients_on_two_slots_get_their_own_answers(server, client):
    questions = [
        [{"role": "user", "content": f"Name a fruit that is {c}."}] for c in ("red", "yellow", "green", "blue")
    ]

    def ask(messages):
        return client.chat.completions.create(model="m", messages=messages, max_tokens=12).choices[0].message.content

    alone = [ask(q) for q in questions]
    served_before = [s["n_requests"] for s in server.slots()["slots"]]
    together: list = [None] * 4
    threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, ask(questions[i]))) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert together == alone
    served = [s["n_requests"] - before for s, before in zip(server.slots()["slots"], served_before)]
    assert sum(served) == 4 and min(served) >= 1  # both slots took part


def test_a_client_that_disconnects_mid_stream_frees_its_slot_at_once(server, client):
    server.wait_until_idle(timeout=60)
    start = time.perf_counter()
    stream = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "Write a very long story about a dragon."}],
        max_tokens=900,
        stream=True,
        extra_body={"ignore_eos": True},  # would run for many seconds to the end
    )
    received = [chunk for _, chunk in zip(range(4), stream)]
    assert len(received) == 4
    assert any(s["is_processing"] for s in server.slots()["slots"])
    stream.close()
    freed_after = server.wait_until_idle(timeout=5)
    assert freed_after < 2.0
    assert time.perf_counter() - start < 30
    answer = client.chat.completions.create(model="m", messages=QUESTION, max_tokens=2)
    assert answer.usage.completion_tokens == 2


def test_a_client_that_gives_up_while_queued_leaves_the_queue(server, client):
    server.wait_until_idle(timeout=60)
    story = [{"role": "user", "content": "Write a very long story about a dragon."}]
    streams = [
        client.chat.completions.create(
            model="m", messages=story, max_tokens=900, stream=True, extra_body={"ignore_eos": True}
        )
        for _ in range(2)
    ]
    for stream in streams:
        next(iter(stream))  # both slots are generating
    with server.http(timeout=1.0) as http, pytest.raises(httpx.ReadTimeout):
        http.post("/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 2})
    deadline = time.perf_counter() + 3
    while server.slots()["n_waiting"] and time.perf_counter() < deadline:
        time.sleep(0.02)
    assert server.slots()["n_waiting"] == 0
    for stream in streams:
        stream.close()
    assert server.wait_until_idle(timeout=5) < 2.0


def test_a_full_queue_answers_503(client, server):
    # Two slots busy and a queue of 8: of 14 requests at once, at least 4 must be refused.
    server.wait_until_idle(timeout=60)
    outcomes: list = []

    def ask():
        try:
            client.chat.completions.create(model="m", messages=QUESTION, max_tokens=24, extra_body={"ignore_eos": True})
            outcomes.append(200)
        except openai.APIStatusError as exc:
            outcomes.append(exc.status_code)
            assert exc.status_code != 503 or exc.response.headers["retry-after"] == "1"

    threads = [threading.Thread(target=ask) for _ in range(14)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # The first ten to arrive take the slots and the queue; nothing but 200 and 503 ever comes back.
    assert sorted(set(outcomes)) == [200, 503] and outcomes.count(200) >= 10
    assert outcomes.count(200) + outcomes.count(503) == 14


# -- bad requests ------------------------------------------------------------------------------------


BAD_CHAT_BODIES = {
    "not an object": [1, 2],
    "no messages": {"model": "m"},
    "messages not an array": {"messages": "hello"},
    "empty messages": {"messages": []},
    "message not an object": {"messages": ["hello"]},
    "no role": {"messages": [{"content": "hi"}]},
    "role not a string": {"messages": [{"role": 5, "content": "hi"}]},
    "unknown role": {"messages": [{"role": "wizard", "content": "hi"}]},
    "no content": {"messages": [{"role": "user"}]},
    "content a number": {"messages": [{"role": "user", "content": 5}]},
    "image content": {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
    "model a number": {"messages": QUESTION, "model": 3},
    "max_tokens a string": {"messages": QUESTION, "max_tokens": "10"},
    "max_tokens negative": {"messages": QUESTION, "max_tokens": -5},
    "max_tokens a bool": {"messages": QUESTION, "max_tokens": True},
    "temperature a string": {"messages": QUESTION, "temperature": "hot"},
    "temperature negative": {"messages": QUESTION, "temperature": -1},
    "top_p out of range": {"messages": QUESTION, "top_p": 1.5},
    "top_k a float": {"messages": QUESTION, "top_k": 2.5},
    "seed a string": {"messages": QUESTION, "seed": "abc"},
    "seed too large": {"messages": QUESTION, "seed": 2**40},
    "stream a string": {"messages": QUESTION, "stream": "yes"},
    "stop a number": {"messages": QUESTION, "stop": 5},
    "stop with a number": {"messages": QUESTION, "stop": ["a", 5]},
    "stream_options a list": {"messages": QUESTION, "stream": True, "stream_options": []},
    "n=2": {"messages": QUESTION, "n": 2},
    "tools": {"messages": QUESTION, "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
    "tool_choice": {"messages": QUESTION, "tool_choice": "auto"},
    "tool message": {"messages": [{"role": "tool", "content": "42", "tool_call_id": "1"}]},
    "logprobs": {"messages": QUESTION, "logprobs": True},
    "top_logprobs": {"messages": QUESTION, "top_logprobs": 3},
    "presence_penalty": {"messages": QUESTION, "presence_penalty": 0.5},
    "frequency_penalty": {"messages": QUESTION, "frequency_penalty": -0.5},
    "json mode": {"messages": QUESTION, "response_format": {"type": "json_object"}},
    "logit_bias": {"messages": QUESTION, "logit_bias": {"1": 5}},
}

BAD_COMPLETION_BODIES = {
    "no prompt": {"max_tokens": 3},
    "prompt a number": {"prompt": 5},
    "prompt of bad ids": {"prompt": [1, -4]},
    "prompt ids past the vocabulary": {"prompt": [10**9]},
    "two prompts": {"prompt": ["a", "b"]},
    "empty prompt": {"prompt": ""},
    "echo": {"prompt": "a", "echo": True},
    "best_of": {"prompt": "a", "best_of": 3},
    "logprobs": {"prompt": "a", "logprobs": 2},
    "suffix": {"prompt": "a", "suffix": "b"},
}


@pytest.mark.parametrize("case", list(BAD_CHAT_BODIES))
def test_bad_chat_requests_get_400(server, case):
    with server.http() as http:
        assert_error(http.post("/v1/chat/completions", json=BAD_CHAT_BODIES[case]), 400)


@pytest.mark.parametrize("case", list(BAD_COMPLETION_BODIES))
def test_bad_completion_requests_get_400(server, case):
    with server.http() as http:
        assert_error(http.post("/v1/completions", json=BAD_COMPLETION_BODIES[case]), 400)


def test_malformed_bodies_get_400(server):
    with server.http() as http:
        for raw in (b"{", b"", b"not json", b"\xff\xfe\x00", b"[" * 100000, b'{"messages": NaN}'):
            assert_error(http.post("/v1/chat/completions", content=raw), 400)
        assert_error(http.post("/v1/chat/completions", content=b"{", headers={"Content-Type": "text/plain"}), 400)
        assert http.get("/health").status_code == 200


FUZZ_FIELDS = (
    "messages", "model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p",
    "repeat_penalty", "repeat_last_n", "seed", "stop", "stream", "stream_options", "n", "tools", "tool_choice",
    "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty", "response_format", "logit_bias",
    "ignore_eos", "prompt", "echo", "best_of", "suffix",
)  # fmt: skip
FUZZ_VALUES = (
    None, True, False, 0, 1, 2, -3, 0.5, 1e300, -1e-9, "", "x", [], [1], ["a"], [[1]], {}, {"a": 1},
    [{"role": "user", "content": "hi"}], [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    {"include_usage": "yes"}, {"type": "text"}, float("nan"), 2**70,
)  # fmt: skip


def test_fuzzed_requests_get_200_or_400_never_500(server):
    import random

    rng = random.Random(7)
    seen = set()
    with server.http() as http:
        for i in range(160):
            path = "/v1/chat/completions" if i % 2 else "/v1/completions"
            body: dict = {"messages": QUESTION} if i % 2 else {"prompt": "The sky is"}
            body["max_completion_tokens"] = 2  # valid requests stay short
            for field in rng.sample(FUZZ_FIELDS, rng.randint(1, 3)):
                body[field] = rng.choice(FUZZ_VALUES)
            response = http.post(path, content=json.dumps(body))  # NaN too, as JavaScript clients send it
            assert response.status_code in (200, 400), (body, response.text)
            if response.status_code == 400:
                assert response.json()["error"]["message"]
            seen.add(response.status_code)
    assert seen == {200, 400}


def test_errors_name_the_field_and_the_reason(server):
    with server.http() as http:
        error = assert_error(http.post("/v1/chat/completions", json=BAD_CHAT_BODIES["max_tokens a string"]), 400)
        assert error["param"] == "max_tokens" and error["code"] == "invalid_type" and "a string" in error["message"]
        error = assert_error(http.post("/v1/chat/completions", json={"model": "m"}), 400, "missing_required_parameter")
        assert error["param"] == "messages"
        assert assert_error(http.post("/v1/chat/completions", json=BAD_CHAT_BODIES["n=2"]), 400)["param"] == "n"


def test_a_prompt_longer_than_the_context_gets_400(server, client):
    long = [{"role": "user", "content": "word " * (N_CTX_PER_SLOT + 50)}]
    with server.http() as http:
        assert_error(http.post("/v1/chat/completions", json={"messages": long}), 400, "context_length_exceeded")
        prompt = {"prompt": "word " * (N_CTX_PER_SLOT + 50), "stream": True}
        assert_error(http.post("/v1/completions", json=prompt), 400, "context_length_exceeded")
    with pytest.raises(openai.BadRequestError, match="context"):
        client.chat.completions.create(model="m", messages=long)


def test_unsupported_features_are_refused_through_the_client(client):
    with pytest.raises(openai.BadRequestError, match="n other than 1"):
        client.chat.completions.create(model="m", messages=QUESTION, n=2)
    with pytest.raises(openai.BadRequestError, match="tools"):
        client.chat.completions.create(
            model="m", messages=QUESTION, tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]
        )


def test_unknown_paths_and_methods_answer_in_openai_shape(server):
    with server.http() as http:
        assert_error(http.get("/v1/nothing"), 404)
        assert_error(http.get("/v1/chat/completions"), 405)
        assert http.get("/health").status_code == 200


# -- access ---------------------------------------------------------------------------------------------


def test_the_api_key_is_required(server):
    with server.http(authorized=False) as http:
        assert_error(http.get("/v1/models"), 401, "invalid_api_key")
        assert_error(http.post("/v1/chat/completions", json={"messages": QUESTION}), 401)
        assert_error(http.get("/slots"), 401)
        assert_error(http.get("/v1/models", headers={"Authorization": f"Bearer {KEY}x"}), 401)
        assert_error(http.get("/v1/models", headers={"Authorization": KEY}), 401)
        assert http.get("/v1/models", headers={"X-Api-Key": KEY}).status_code == 200
        assert http.get("/health").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        server.client(api_key="wrong").models.list()
    assert server.client().models.list().data[0].id == "smollm2"


def test_the_server_listens_on_loopback_only(server):
    assert server.url.startswith("http://127.0.0.1:")


# -- the command line ---------------------------------------------------------------------------------


def one_line_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("pykvd: error: "), result.stderr
    return lines[0]


def run_cli(*args, code: str | None = None, timeout: float = 120):
    command = [sys.executable, "-m", "pykvd", *args] if code is None else [sys.executable, "-c", code]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "args",
    [
        ["--parallel", "0"],
        ["-np", "-3"],
        ["--queue", "-1"],
        ["--port", "70000"],
        ["--port", "http"],
        ["-n", "-2"],
        ["-c", "-5"],
        ["-c", "100", "--kv-budget", "64"],
        ["--api-key", " "],
        ["smollm2", "-m", "gemma3"],
        ["--temp", "-1"],
        ["--policy", "nope"],
        ["--host", "no.such.host.invalid"],
    ],
)
def test_bad_serve_flags_are_one_line_errors(args):
    one_line_error(run_cli("serve", *args))


def test_a_port_in_use_is_a_one_line_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert "in use" in one_line_error(run_cli("serve", "--port", str(port)))


def test_serve_without_the_server_extra_says_how_to_install_it():
    blocked = "import sys; sys.modules['starlette'] = None; from pykvd.cli import main; sys.exit(main({}))"
    line = one_line_error(run_cli(code=blocked.format(["serve"])))
    assert "pip install 'kvdirect[server]'" in line
    # Every other command works without it.
    listed = run_cli(code=blocked.format(["models", "list"]))
    assert listed.returncode == 0 and "smollm2" in listed.stdout
