"""pykvd.Model over the two real models: what llama.cpp reports, tokenizer, chat template, lifetime."""

from __future__ import annotations

import numpy as np
import pytest

import pykvd
from pykvd import SessionClosedError
from pykvd.gguf_file import GGML_TYPE_NAMES
from pykvd.profile import REPACK_ALIKE_TYPES

TEXT = "Hello, world! The quick brown fox jumps over 13 lazy dogs.\nA new line, and: punctuation?"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def open_session(model, **kwargs):
    """model.session(...) on one thread: ggml's spinning thread barriers crawl on a loaded machine."""
    kwargs.setdefault("n_threads", 1)
    return model.session(**kwargs)


# -- info ----------------------------------------------------------------------


def test_smollm2_info(smollm2, smollm2_path):
    info = smollm2.info
    assert info.path == smollm2_path
    assert info.architecture == "llama"
    assert info.n_layer == 30
    assert info.n_embd == 576
    assert info.n_head == 9
    assert info.n_head_kv == 3
    assert info.head_dim_k == info.head_dim_v == 64
    assert info.swa_layers == ()
    assert info.n_swa == 0
    assert info.n_vocab == 49152
    assert info.n_ctx_train == 8192
    assert 130e6 < info.n_params < 140e6
    assert 0 < info.size_bytes <= smollm2_path.stat().st_size
    assert len(info.layers) == 30
    for layer in info.layers:
        assert (layer.n_head, layer.n_head_kv, layer.head_dim_k, layer.head_dim_v) == (9, 3, 64, 64)
        assert layer.n_embd_k_gqa == layer.n_embd_v_gqa == 3 * 64
        assert layer.has_kv and not layer.is_swa


def test_gemma3_info(gemma3, gemma3_path):
    info = gemma3.info
    assert info.path == gemma3_path
    assert info.architecture == "gemma3"
    assert info.n_layer == 18
    assert info.n_embd == 640
    assert info.n_head == 4
    assert info.n_head_kv == 1
    assert info.head_dim_k == info.head_dim_v == 256
    assert info.n_swa == 512
    assert info.n_vocab == 262144
    assert info.n_ctx_train == 32768
    # Gemma 3 alternates five sliding-window layers with one global layer.
    assert len(info.swa_layers) == 15
    assert set(range(18)) - set(info.swa_layers) == {5, 11, 17}
    for layer in info.layers:
        assert (layer.n_head, layer.n_head_kv, layer.head_dim_k, layer.head_dim_v) == (4, 1, 256, 256)
        assert layer.n_embd_k_gqa == layer.n_embd_v_gqa == 256
        assert layer.has_kv


def test_repr_names_the_model(smollm2):
    assert str(smollm2.path) in repr(smollm2)
    assert "llama" in repr(smollm2)


# -- tokenizer -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_tokenize_detokenize_round_trip(request, name):
    model = request.getfixturevalue(name)
    ids = model.tokenize(TEXT, add_special=False)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert 10 < len(ids) < len(TEXT)
    assert model.detokenize(ids) == TEXT
    assert model.detokenize(ids.tolist()) == TEXT
    assert b"".join(model.token_to_bytes(t) for t in ids).decode() == TEXT
    with_special = model.tokenize(TEXT)
    assert model.detokenize(with_special) == TEXT
    if model.add_bos:
        assert with_special[0] != ids[0] and np.array_equal(with_special[1:], ids)
    else:
        assert np.array_equal(with_special, ids)


def test_bos(smollm2, gemma3):
    assert not smollm2.add_bos
    assert gemma3.add_bos
    assert gemma3.detokenize(gemma3.tokenize("Hi"), special=True) == "<bos>Hi"


def test_unicode_round_trip(smollm2, gemma3):
    text = "Grüße, 東京! naïve café — ✓"
    for model in (smollm2, gemma3):
        assert model.detokenize(model.tokenize(text, add_special=False)) == text


# -- chat template -------------------------------------------------------------


def test_smollm2_chat_template(smollm2):
    assert "<|im_start|>" in smollm2.chat_template
    text = smollm2.apply_chat_template(MESSAGES)
    assert text == "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    # The markers are special tokens, one id each.
    (im_start,) = smollm2.tokenize("<|im_start|>", add_special=False).tolist()
    (im_end,) = smollm2.tokenize("<|im_end|>", add_special=False).tolist()
    ids = smollm2.tokenize(text).tolist()
    assert ids[0] == im_start
    assert ids.count(im_start) == 2 and ids.count(im_end) == 1
    assert smollm2.is_end_of_generation(im_end)
    without = smollm2.apply_chat_template(MESSAGES, add_generation_prompt=False)
    assert without == "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"


def test_gemma3_has_no_template_but_the_builtin_gemma_one_applies(gemma3):
    # The Gemma 3 270M GGUF (a base model) carries no tokenizer.chat_template.
    assert gemma3.chat_template is None
    with pytest.raises(pykvd.PromptError):
        gemma3.apply_chat_template(MESSAGES)
    text = gemma3.apply_chat_template(MESSAGES, template="gemma")
    assert text == "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
    start_of_turn = gemma3.tokenize("<start_of_turn>", add_special=False).tolist()
    end_of_turn = gemma3.tokenize("<end_of_turn>", add_special=False).tolist()
    assert len(start_of_turn) == len(end_of_turn) == 1
    ids = gemma3.tokenize(text).tolist()
    assert ids.count(start_of_turn[0]) == 2 and ids.count(end_of_turn[0]) == 1
    assert gemma3.is_end_of_generation(end_of_turn[0])


def test_a_named_builtin_template_and_roles(smollm2):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    chatml = smollm2.apply_chat_template(messages)
    assert chatml.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    assert "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye" in chatml
    assert smollm2.apply_chat_template(messages, template="chatml") == chatml


# -- runtime profile -----------------------------------------------------------


def test_exact_profile_is_the_default(smollm2, gemma3):
    assert smollm2.profile.is_exact
    assert gemma3.profile.is_exact
    with open_session(smollm2, n_ctx=64) as session:
        assert session.profile.is_exact
    with open_session(smollm2, n_ctx=64, exact=False) as session:
        assert not session.profile.is_exact


@pytest.mark.skipif(not REPACK_ALIKE_TYPES, reason="no repacked type sums alike off x86")
def test_exact_profile_repacks_where_single_rows_cost_nothing(smollm2, gemma3):
    types = {name: t for t, name in GGML_TYPE_NAMES.items()}
    assert gemma3.profile.extra_bufts  # Q4_K_M: its repacked weights are Q4_K, whose gemv sums like gemm
    assert not smollm2.profile.extra_bufts  # Q4_1 and Q8_0: nothing to repack
    mostly_q2_k = {types["Q2_K"]: 3 << 20, types["Q4_K"]: 1 << 20, types["Q8_0"]: 8 << 20}
    assert not pykvd.RuntimeProfile.for_weights(True, mostly_q2_k).extra_bufts  # Q2_K would pad single rows
    assert pykvd.RuntimeProfile.for_weights(False, mostly_q2_k).extra_bufts  # the fast profile always repacks


def test_fast_profile_is_not_exact(smollm2_path):
    with pykvd.Model(smollm2_path, exact=False) as model:
        assert not model.profile.is_exact
        assert model.profile == pykvd.RuntimeProfile.fast()
        with open_session(model, n_ctx=64) as session:
            assert not session.profile.is_exact
            assert len(session.generate("Hello", max_tokens=2, stop_at_eog=False).tokens) == 2


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_real_model_prefill_is_batch_invariant(request, name):
    """The exact profile's promise on real quantized weights: batch shape never changes a logit."""
    model = request.getfixturevalue(name)
    prompt = model.tokenize("The quick brown fox jumps over the lazy dog. Once upon a time, in a land far away")

    def run(n_batch: int):
        with open_session(model, n_ctx=128, n_batch=n_batch) as session:
            session.feed(prompt)
            logits = session.logits().copy()
            tokens = session.generate(max_tokens=4, stop_at_eog=False).tokens
            return logits, tokens

    whole = run(512)
    for n_batch in (5, 1):
        logits, tokens = run(n_batch)
        assert np.array_equal(whole[0], logits)
        assert whole[1] == tokens


# -- lifetime ------------------------------------------------------------------


def test_close_makes_the_model_unusable(smollm2_path):
    model = pykvd.Model(smollm2_path)
    assert not model.closed
    model.close()
    assert model.closed
    for use in (
        lambda: model.tokenize("Hi"),
        lambda: model.detokenize([1, 2]),
        lambda: model.token_to_bytes(1),
        lambda: model.is_end_of_generation(2),
        lambda: model.add_bos,
        lambda: model.chat_template,
        lambda: model.apply_chat_template(MESSAGES),
        lambda: open_session(model, n_ctx=64),
    ):
        with pytest.raises(SessionClosedError):
            use()
    model.close()  # twice is harmless
    assert model.closed
    assert model.info.n_layer == 30  # the metadata stays readable
    assert "closed" in repr(model)


def test_context_manager_closes(smollm2_path):
    with pykvd.Model(smollm2_path) as model:
        assert model.tokenize("Hi").size > 0
    assert model.closed
    with pytest.raises(SessionClosedError):
        model.tokenize("Hi")


def test_context_manager_closes_on_error(smollm2_path):
    with pytest.raises(KeyError):
        with pykvd.load(smollm2_path) as model:
            raise KeyError("boom")
    assert model.closed


def test_a_session_outlives_its_closed_model(smollm2, smollm2_path):
    with open_session(smollm2, n_ctx=128) as reference:
        expected = reference.generate("The capital of France is", max_tokens=6, stop_at_eog=False)

    model = pykvd.Model(smollm2_path)
    session = open_session(model, n_ctx=128)
    other = open_session(model, n_ctx=128)
    model.close()
    assert model.closed and not session.closed
    with pytest.raises(SessionClosedError):
        model.tokenize("Hi")
    # Text prompts, sampling, detokenizing and chat all still work in the session.
    result = session.generate("The capital of France is", max_tokens=6, stop_at_eog=False)
    assert result.tokens == expected.tokens and result.text == expected.text
    assert other.chat("Say hi.", max_tokens=4)
    assert session.stats.n_tokens > 0
    session.close()
    assert len(other.generate(max_tokens=2, stop_at_eog=False).tokens) == 2
    other.close()
    with pytest.raises(SessionClosedError):
        other.generate("Hi", max_tokens=1)


def test_closing_sessions_does_not_close_the_model(smollm2):
    session = open_session(smollm2, n_ctx=64)
    session.close()
    session.close()
    assert not smollm2.closed
    assert smollm2.tokenize("Hi").size > 0


def test_chat_template_override_enables_chat_on_gemma3(gemma3_path):
    with pykvd.Model(gemma3_path, chat_template="gemma") as model:
        assert model.chat_template == "gemma"
        with model.session(n_ctx=512, n_threads=1) as session:
            session.chat("Hello", max_tokens=4)
            assert [m["role"] for m in session.messages] == ["user", "assistant"]
            assert "<start_of_turn>" in model.detokenize(session.tokens, special=True)
