"""pykvd against llama.cpp itself: greedy output, token for token.

The reference is ``pykvd-llama-reference`` (``pykvd.paths.reference_program()``),
a plain llama.cpp greedy loop written only against llama.h and linked with the
same libllama as pykvd. Each case runs it as a subprocess and pykvd in this
process with the same model, prompt, n_ctx, n_batch (= n_ubatch), thread count
and kernel settings, and requires the same prompt token ids and the same
generated tokens. Nothing expected is hard-coded: llama.cpp is the oracle.

Both sides generate a fixed number of tokens (``--ignore-eos`` and
``stop_at_eog=False``), except the cases named ``*_eog`` where both stop at an
end-of-generation token.

The reference gets the kernel settings of the model's profile: flash
attention, repacked weights and ggml's batch-invariant mode (on in the exact
profile, through llama_kvd_set_batch_invariant).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest

from pykvd import Model, models, paths
from pykvd.profile import FLASH_ATTN_AUTO, RuntimeProfile
from pykvd.session import FINISH_LENGTH, FINISH_STOP, Session

N_THREADS = 2
N_CTX = 512
REFERENCE_TIMEOUT_S = 300

# llama.cpp built-in template names for models whose GGUF carries no
# tokenizer.chat_template (the gemma3 270M GGUF has none).
BUILTIN_TEMPLATES = {"gemma3": "gemma"}

SHORT_PROMPT = "The three primary colours of light are"

LONG_PROMPT = (
    "A lighthouse keeper kept a log of every ship that passed the rocks below his tower. "
    "In spring he wrote down fishing boats, in summer the white sails of pleasure yachts, "
    "and in autumn the heavy grain freighters that rode low in the water on their way south. "
    "Winter brought storms, and with them the rescue boats, whose crews he knew by name. "
    "One night in December the lamp failed, and for eleven minutes the coast was dark. "
    "He climbed the iron stairs with a lantern in one hand and a spare wick in the other, "
    "counting the steps as he always did, one hundred and twelve of them. When the light "
    "turned again across the water, he sat down at his desk and wrote:"
)

UNICODE_PROMPT = "Übersetze ins Englische: «Der schnelle braune Fuchs springt über den faulen Hund.» →"

CHAT_MESSAGES = [{"role": "user", "content": "Write two sentences about why the sky looks blue."}]
CHAT_EOG_MESSAGES = [{"role": "user", "content": "Reply with one word only: what colour is fresh snow?"}]


@dataclass(frozen=True)
class Case:
    name: str
    prompt: str | list  # text, or chat messages formatted with the model's template
    n_batch: int = 512
    stop_at_eog: bool = False
    min_prompt_tokens: int = 1


CASES = [
    Case("short", SHORT_PROMPT),
    Case("long_chunked", LONG_PROMPT, n_batch=32, min_prompt_tokens=3 * 32 + 1),
    Case("unicode", UNICODE_PROMPT, n_batch=8, min_prompt_tokens=9),
    Case("chat", CHAT_MESSAGES),
    Case("chat_eog", CHAT_EOG_MESSAGES, stop_at_eog=True),
]

MAX_TOKENS = {"smollm2": 32, "gemma3": 24}


# -- fixtures ---------------------------------------------------------------


@pytest.fixture(scope="module")
def reference() -> str:
    program = paths.reference_program()
    if not program.is_file():
        pytest.fail(f"the reference program is missing: {program}")
    return str(program)


@pytest.fixture(scope="module", params=sorted(MAX_TOKENS))
def exact_model(request):
    """Each real model loaded with the default (exact) profile, one at a time."""
    with Model(models.fetch(request.param)) as model:
        yield request.param, model


def run_reference(
    program: str,
    model_path,
    prompt: str,
    *,
    n_predict: int,
    n_ctx: int,
    n_batch: int,
    profile: RuntimeProfile,
    ignore_eos: bool = True,
) -> dict:
    cmd = [
        program,
        "-m",
        str(model_path),
        "-p",
        prompt,
        "-n",
        str(n_predict),
        "-c",
        str(n_ctx),
        "-b",
        str(n_batch),
        "-t",
        str(N_THREADS),
        *profile.reference_flags(),
    ]
    if ignore_eos:
        cmd.append("--ignore-eos")
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=REFERENCE_TIMEOUT_S)
    assert proc.returncode == 0, f"reference failed ({proc.returncode}): {proc.stderr}"
    return json.loads(proc.stdout)


def prompt_text(name: str, model: Model, prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    template = None if model.chat_template else BUILTIN_TEMPLATES[name]
    return model.apply_chat_template(prompt, add_generation_prompt=True, template=template)


def assert_same(ref: dict, model: Model, session: Session, gen, text: str) -> None:
    ids = [int(t) for t in model.tokenize(text)]
    assert ids == ref["prompt_tokens"], "prompt tokenization differs from llama.cpp's"
    assert gen.n_prompt_tokens == len(ref["prompt_tokens"])
    first = next(
        (i for i, (a, b) in enumerate(zip(gen.tokens, ref["tokens"])) if a != b),
        min(len(gen.tokens), len(ref["tokens"])),
    )
    assert gen.tokens == ref["tokens"], (
        f"generated tokens differ from index {first}\n  pykvd:     {gen.tokens}\n  llama.cpp: {ref['tokens']}"
    )
    assert session.stats.n_decode_steps == ref["n_decode_steps"]
    if gen.finish_reason != FINISH_LENGTH:
        # Stopped at end-of-generation: every kept token was decoded.
        assert session.stats.n_decode_steps == len(gen.tokens)


# -- tests ------------------------------------------------------------------


def test_reference_program_exists_and_exact_profile_is_on(reference):
    assert os.access(reference, os.X_OK)
    with Model(models.fetch("smollm2")) as model:
        assert model.profile.is_exact and model.profile.batch_invariant
        with Session(model, n_ctx=64, n_threads=N_THREADS) as session:
            assert session.profile.is_exact


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_greedy_matches_llama_cpp(reference, exact_model, case: Case):
    name, model = exact_model
    assert model.profile.is_exact
    text = prompt_text(name, model, case.prompt)
    n_predict = MAX_TOKENS[name]
    assert len(model.tokenize(text)) >= case.min_prompt_tokens, "prompt too short for this case"

    ref = run_reference(
        reference,
        model.path,
        text,
        n_predict=n_predict,
        n_ctx=N_CTX,
        n_batch=case.n_batch,
        profile=model.profile,
        ignore_eos=not case.stop_at_eog,
    )
    with Session(model, n_ctx=N_CTX, n_batch=case.n_batch, n_ubatch=case.n_batch, n_threads=N_THREADS) as session:
        gen = session.generate(text, max_tokens=n_predict, stop_at_eog=case.stop_at_eog)
        assert_same(ref, model, session, gen, text)

    if case.stop_at_eog:
        assert gen.finish_reason == (FINISH_STOP if len(gen.tokens) < n_predict else FINISH_LENGTH)
    else:
        assert len(gen.tokens) == n_predict and gen.finish_reason == FINISH_LENGTH


@pytest.mark.parametrize("name", sorted(MAX_TOKENS))
def test_fast_profile_matches_llama_cpp_with_same_settings(reference, name):
    """exact=False: flash attention auto and repacked weights on both sides, so the same kernels run."""
    n_predict = 16
    with Model(models.fetch(name), exact=False) as model:
        assert model.profile.flash_attn == FLASH_ATTN_AUTO and model.profile.extra_bufts
        assert not model.profile.is_exact
        ref = run_reference(
            reference,
            model.path,
            SHORT_PROMPT,
            n_predict=n_predict,
            n_ctx=N_CTX,
            n_batch=512,
            profile=model.profile,
        )
        with Session(model, n_ctx=N_CTX, n_batch=512, n_threads=N_THREADS) as session:
            assert session.profile == model.profile
            gen = session.generate(SHORT_PROMPT, max_tokens=n_predict, stop_at_eog=False)
            assert_same(ref, model, session, gen, SHORT_PROMPT)


@pytest.mark.parametrize("name", sorted(MAX_TOKENS))
@pytest.mark.parametrize("mode", ["--raw", "as a user message"])
def test_cli_run_matches_llama_cpp(reference, name, mode):
    """`pykvd run --raw` prints llama.cpp's own continuation of the text; plain `pykvd run` (the model's
    template, or a built-in one for a GGUF without) prints its continuation of the chat-wrapped prompt."""
    path = models.fetch(name)
    n_predict = MAX_TOKENS[name]
    content = CHAT_MESSAGES[0]["content"]
    args = [
        "run",
        str(path),
        "-p",
        content,
        "-n",
        str(n_predict),
        "--ignore-eos",
        "-c",
        str(N_CTX),
        "-b",
        "512",
        "-t",
        str(N_THREADS),
    ]
    with Model(path) as model:
        if mode == "--raw":
            text, args = content, args + ["--raw"]
        else:
            text = prompt_text(name, model, CHAT_MESSAGES)
            args += [] if model.chat_template else ["--chat-template", BUILTIN_TEMPLATES[name]]
        ref = run_reference(reference, path, text, n_predict=n_predict, n_ctx=N_CTX, n_batch=512, profile=model.profile)
        expected = b"".join(model.token_to_bytes(t) for t in ref["tokens"]).decode("utf-8", errors="replace")
    cli = subprocess.run(
        [sys.executable, "-m", "pykvd", *args], capture_output=True, text=True, timeout=REFERENCE_TIMEOUT_S
    )
    assert cli.returncode == 0, cli.stderr
    assert len(ref["tokens"]) == n_predict
    assert cli.stdout == expected + "\n"
