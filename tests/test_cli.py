"""The command line, run as a user runs it: the installed `pykvd` command in a subprocess."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pykvd
from pykvd import models

PROMPT = "The three primary colors are"


README = Path(__file__).resolve().parent.parent / "README.md"


def assert_one_line_error(result, case="") -> None:
    stderr = result.stderr if isinstance(result.stderr, str) else result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2, (case, result.returncode, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pykvd: error: "), (case, stderr)
    assert not result.stdout.strip(), case


def user_prompt(model, text: str) -> str:
    return model.apply_chat_template([{"role": "user", "content": text}])


@pytest.fixture(scope="module")
def smollm2_model():
    with pykvd.Model("smollm2") as model:
        yield model


@pytest.fixture(scope="module")
def not_a_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "notes.gguf"
    path.write_text("this is not a model\n" * 10)
    return path


@pytest.fixture(scope="module")
def truncated_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "cut.gguf"
    with open(models.fetch("smollm2"), "rb") as src:
        path.write_bytes(src.read(3_000_000))
    return path


@pytest.fixture(scope="module")
def unknown_arch_gguf(tmp_path_factory):
    from gguf_files import write_gguf

    return write_gguf(tmp_path_factory.mktemp("cli") / "alien.gguf", "notarealarch")


def test_run_prints_only_the_generated_text(smollm2_model, pykvd_cli):
    # SmolLM2 carries a chat template: run sends the prompt as a user message, --raw as it is.
    chat = pykvd_cli("run", "-p", PROMPT, "-n", "12")
    raw = pykvd_cli("run", "--raw", "-p", PROMPT, "-n", "12")
    explicit = pykvd_cli("run", "--chat", "-p", PROMPT, "-n", "12")
    assert chat.returncode == raw.returncode == explicit.returncode == 0, chat.stderr + raw.stderr
    with smollm2_model.session() as a, smollm2_model.session() as b:
        as_user = a.generate(user_prompt(smollm2_model, PROMPT), max_tokens=12).text
        as_text = b.generate(PROMPT, max_tokens=12).text
    assert chat.stdout == explicit.stdout == as_user + "\n"
    assert raw.stdout == as_text + "\n"
    assert as_user != as_text


def test_the_readme_first_command_prints_an_answer():
    block = re.search(r"```sh\npip install \. && (pykvd run .*)\n```", README.read_text()).group(1)
    argv = shlex.split(block)
    assert argv[:2] == ["pykvd", "run"]
    program = shutil.which("pykvd") or str(Path(sys.executable).with_name("pykvd"))
    result = subprocess.run([program, *argv[1:]], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    words = re.findall(r"[A-Za-z]+", result.stdout)
    assert len(words) >= 20, result.stdout
    assert any(w.lower() in ("blue", "light", "scattering", "sky", "sun") for w in words), result.stdout
    assert not result.stdout.lstrip().startswith(("Explain", "<|"))  # an answer, not an echo or template text


def test_run_stats_go_to_stderr_and_leave_stdout_alone(smollm2_model, pykvd_cli):
    plain = pykvd_cli("run", "smollm2", "-p", PROMPT, "-n", "8")
    with_stats = pykvd_cli("run", "smollm2", "-p", PROMPT, "-n", "8", "--stats")
    assert with_stats.returncode == 0, with_stats.stderr
    assert with_stats.stdout == plain.stdout
    assert "tok/s" in with_stats.stderr and "KV buffer" in with_stats.stderr and "RSS" in with_stats.stderr


def test_run_accepts_a_gguf_path_and_a_seeded_sampler(pykvd_cli):
    path = str(models.fetch("smollm2"))
    args = ["run", path, "-p", PROMPT, "-n", "10", "--temp", "0.9", "--top-k", "20", "--seed", "7"]
    first, second = pykvd_cli(*args), pykvd_cli(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and first.stdout.strip()


def test_run_reads_the_prompt_from_stdin(smollm2_model, pykvd_cli):
    from_arg = pykvd_cli("run", "-p", PROMPT, "-n", "6")
    from_stdin = pykvd_cli("run", "-p", "-", "-n", "6", stdin=PROMPT)
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert from_stdin.stdout == from_arg.stdout


def test_run_gemma3_by_name(pykvd_cli):
    # The Gemma 3 270M GGUF is a base model with no chat template: plain text is the default.
    result = pykvd_cli("run", "gemma3", "-p", "The sky is", "-n", "6")
    raw = pykvd_cli("run", "gemma3", "--raw", "-p", "The sky is", "-n", "6")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() and result.stdout == raw.stdout
    refused = pykvd_cli("run", "gemma3", "--chat", "-p", "The sky is", "-n", "6")
    assert_one_line_error(refused)
    assert "no chat template" in refused.stderr


def test_chat_keeps_the_conversation(smollm2_model, pykvd_cli):
    turns = ["What is the capital of France?", "And of Italy?"]
    result = pykvd_cli("chat", "-n", "24", stdin="\n".join(turns) + "\n")
    assert result.returncode == 0, result.stderr
    with smollm2_model.session() as session:
        expected = [session.chat(turn, max_tokens=24) for turn in turns]
    assert result.stdout == "".join(reply + "\n" for reply in expected)


def test_chat_stats_show_memory_per_turn(pykvd_cli):
    result = pykvd_cli("chat", "-n", "8", "--stats", stdin="Hi\nHello again\n")
    assert result.returncode == 0, result.stderr
    assert "turn 1" in result.stderr and "turn 2" in result.stderr and "KV buffer" in result.stderr


@pytest.mark.parametrize(
    "name, expected",
    [
        (
            "smollm2",
            {
                "architecture": "llama",
                "full F16 KV, all layers": 23040,
                "one F32 residual": 2304,
                "F32 residuals at every layer": 69120,
                "token id": 4,
            },
        ),
        (
            "gemma3",
            {
                "architecture": "gemma3",
                "full F16 KV, all layers": 18432,
                "one F32 residual": 2560,
                "F32 residuals at every layer": 46080,
                "token id": 4,
            },
        ),
    ],
)
def test_info_state_table(name, expected, pykvd_cli):
    result = pykvd_cli("info", name, "--json", "--measure-ctx", "2048")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["architecture"] == expected.pop("architecture")
    assert info["state_per_token_bytes"] == expected
    # The allocator agrees with the formula when every layer keeps every token.
    measured = info["measured_kv_buffer"]
    assert measured["bytes"] == 2048 * expected["full F16 KV, all layers"]
    if info["swa_layers"]:
        assert measured["bytes_swa_window_only"] < measured["bytes"]


def test_info_prints_a_table(pykvd_cli):
    result = pykvd_cli("info", "smollm2", "--measure-ctx", "128")
    assert result.returncode == 0, result.stderr
    for row in ("full F16 KV, all layers", "one F32 residual", "F32 residuals at every layer", "token id"):
        assert row in result.stdout
    assert "23040" in result.stdout


def test_models_list_and_fetch(pykvd_cli):
    listed = pykvd_cli("models", "list")
    assert listed.returncode == 0
    assert "smollm2" in listed.stdout and "gemma3" in listed.stdout
    fetched = pykvd_cli("models", "fetch", "smollm2")
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout.strip() == str(models.fetch("smollm2"))


def test_paths_point_at_installed_files(pykvd_cli):
    for what in ("lib", "include", "reference"):
        result = pykvd_cli("paths", what)
        assert result.returncode == 0
        assert shutil.os.path.exists(result.stdout.strip())


def bad_input_cases(not_a_gguf, truncated_gguf, unknown_arch_gguf):
    long_prompt = "word " * 400
    return {
        "missing path": ["run", "/no/such/model.gguf", "-p", "hi"],
        "not a GGUF": ["run", str(not_a_gguf), "-p", "hi"],
        "truncated GGUF": ["run", str(truncated_gguf), "-p", "hi"],
        "unknown architecture": ["run", str(unknown_arch_gguf), "-p", "hi"],
        "prompt longer than the context": ["run", "-p", long_prompt, "-c", "64"],
        "empty prompt": ["run", "-p", ""],
        "negative temperature": ["run", "-p", "hi", "--temp", "-1"],
        "top-p above one": ["run", "-p", "hi", "--temp", "0.5", "--top-p", "1.5"],
        "negative seed": ["run", "-p", "hi", "--seed", "-3"],
        "zero context": ["run", "-p", "hi", "-c", "0"],
        "negative token count": ["run", "-p", "hi", "-n", "-1"],
        "info on a missing file": ["info", "/no/such/model.gguf"],
        "too many threads": ["run", "-p", "hi", "-t", "100000"],
        "threads past ggml's limit": ["run", "-p", "hi", "-t", "513"],
        "threads past int32": ["run", "-p", "hi", "-t", str(2**31 - 1)],
        "a budget past the trained context": ["run", "-p", "hi", "--kv-budget", "99999999999GiB"],
        "a budget of superscript digits": ["run", "-p", "hi", "--kv-budget", "²"],
        "a one-token snapkv budget": ["run", "-p", "hi", "--kv-budget", "1", "--sinks", "0", "--policy", "snapkv"],
        "a huge seed": ["run", "-p", "hi", "--seed", str(2**40)],
        "plan with negative sinks": ["plan", "smollm2", "--context", "100", "--kv-budget", "64", "--sinks", "-1"],
        "a prompt file that is a directory": ["run", "-f", "/tmp"],
    }


def test_bad_input_is_a_one_line_error_with_exit_code_2(not_a_gguf, truncated_gguf, unknown_arch_gguf, pykvd_cli):
    for case, args in bad_input_cases(not_a_gguf, truncated_gguf, unknown_arch_gguf).items():
        assert_one_line_error(pykvd_cli(*args), case)


def test_unparsable_option_exits_2(pykvd_cli):
    result = pykvd_cli("run", "-p", "hi", "--temp", "warm")
    assert_one_line_error(result)
    assert "invalid float value" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["run"],
        ["run", "-p", "hi", "--no-such-option"],
        ["run", "-p", "a", "-f", "b"],
        ["run", "--raw", "--chat", "-p", "hi"],
        ["plan", "smollm2"],
        ["models", "fetch", "x"],
        ["run", "-p", "hi", "-n", "many"],
        ["nonsense"],
    ],
    ids=" ".join,
)
def test_command_line_mistakes_are_one_line_errors(args, pykvd_cli):
    assert_one_line_error(pykvd_cli(*args), args)


def test_help_still_prints_usage(pykvd_cli):
    for args in (["--help"], ["run", "--help"], ["plan", "-h"]):
        result = pykvd_cli(*args)
        assert result.returncode == 0 and result.stdout.startswith("usage: pykvd"), args


def test_text_that_is_not_utf8_is_one_error_line_or_replaced(tmp_path, pykvd_cli):
    for args in (
        ["run", "--chat", "-p", b"\xff\xfe"],
        ["run", "--raw", "-p", b"caf\xe9"],
        ["chat", "--system", b"\xff", "-n", "2"],
    ):
        assert_one_line_error(pykvd_cli(*args, stdin=b"hi\n", text=False), args)
    bad_file = tmp_path / "prompt.txt"
    bad_file.write_bytes(b"caf\xe9\n")
    refused = pykvd_cli("run", "-f", str(bad_file), text=False)
    assert_one_line_error(refused)
    assert b"not UTF-8" in refused.stderr
    # stdin is decoded with invalid bytes replaced, as a terminal would show them: the chat goes on.
    chat = pykvd_cli("chat", "-n", "4", stdin=b"caf\xe9 \xff\xfe?\nHello\n", text=False)
    assert chat.returncode == 0, chat.stderr
    assert len(chat.stdout.decode("utf-8").splitlines()) >= 2 and b"Traceback" not in chat.stderr
    piped = pykvd_cli("run", "-p", "-", "-n", "4", stdin=b"\xff\xfe hello", text=False)
    assert piped.returncode == 0, piped.stderr


def test_special_files_as_the_model_say_what_they_are(tmp_path, pykvd_cli):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "FIFO"), ("/dev/null", "character device"), (tmp_path, "directory")):
        result = pykvd_cli("run", str(path), "-p", "hi", timeout=60)  # a FIFO opened for reading would block
        assert_one_line_error(result, path)
        assert kind in result.stderr and "does not exist" not in result.stderr, result.stderr


def test_verify_checks_its_output_path_before_verifying(tmp_path, pykvd_cli):
    for target in ("/tmp", str(tmp_path / "no" / "such" / "dir" / "out.json")):
        start = time.monotonic()
        result = pykvd_cli("verify", "smollm2", "--json", target)
        assert_one_line_error(result, target)
        assert "verifying" not in result.stderr and time.monotonic() - start < 30
    assert not (tmp_path / "no").exists()


def test_chat_needs_a_template_for_a_gguf_without_one(pykvd_cli):
    refused = pykvd_cli("chat", "gemma3", "-n", "4", stdin="Hello\n")
    assert refused.returncode == 2
    assert "no chat template" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    with_builtin = pykvd_cli("chat", "gemma3", "-n", "4", "--chat-template", "gemma", stdin="Hello\n")
    assert with_builtin.returncode == 0, with_builtin.stderr
    assert with_builtin.stdout.strip()
