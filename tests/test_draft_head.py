"""The draft's candidate head: llama_kvd_forward_tokens runs the layers as a decode does, and the head
picks the output head's argmax among its candidates, within bounded memory."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from pykvd import SamplingParams, SessionClosedError
from pykvd._llama import native
from pykvd.draft_head import MAX_CANDIDATES, MIN_SHARE, CandidateHead, HeadWeights
from pykvd.gguf_file import read_header

PROMPT = "A lighthouse keeper kept a log of every ship that passed the rocks, and of the weather."


def native_context(model, n_ctx=256):
    return native.Context(
        model._handle(),
        n_ctx=n_ctx,
        n_batch=128,
        n_ubatch=128,
        n_threads=2,
        n_threads_batch=2,
        flash_attn=model.profile.flash_attn,
        batch_invariant=model.profile.batch_invariant,
    )


def last_layer_of_a_decode(model, ids):
    """h^(n_layer) and the logits of the last token, decoded after the others, and its K/V."""
    n_layer = model.info.n_layer
    ctx = native_context(model)
    ctx.decode(ids[:-1], 0, outputs=1)
    ctx.set_capture([n_layer])
    ctx.decode(ids[-1:], len(ids) - 1, outputs=2)
    kv = [ctx.read_kv(il, len(ids) - 1) for il in range(n_layer)]
    out = ctx.captured(n_layer)[-1].copy(), ctx.logits(-1).copy(), kv
    ctx.close()
    return out


def check_forward_tokens(model):
    ids = model.tokenize(PROMPT)
    h_ref, _, kv_ref = last_layer_of_a_decode(model, ids)
    n_layer = model.info.n_layer
    ctx = native_context(model)
    ctx.decode(ids[:-1], 0, outputs=1)
    h = ctx.forward_tokens(ids[-1:], np.array([len(ids) - 1], np.int32), n_layer)
    assert h.shape == (1, model.info.n_embd)
    assert np.array_equal(h[0], h_ref)
    for il in range(n_layer):
        k, v = ctx.read_kv(il, len(ids) - 1)
        assert np.array_equal(k, kv_ref[il][0]) and np.array_equal(v, kv_ref[il][1])
    ctx.close()


# -- llama_kvd_forward_tokens ----------------------------------------------------------


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_forward_tokens_runs_the_layers_as_a_decode_does(request, name):
    check_forward_tokens(request.getfixturevalue(name))


def test_forward_tokens_on_every_synthetic_architecture(tiny_model):
    check_forward_tokens(tiny_model)


def test_forward_tokens_refuses_bad_arguments(tiny_llama):
    ctx = native_context(tiny_llama)
    ids = tiny_llama.tokenize(PROMPT)
    ctx.decode(ids, 0, outputs=1)
    pos = np.array([len(ids)], np.int32)
    n_layer, n_vocab = tiny_llama.info.n_layer, tiny_llama.info.n_vocab
    for tokens, positions, end in [
        (np.array([n_vocab], np.int32), pos, n_layer),  # no such token
        (np.array([-1], np.int32), pos, n_layer),
        (ids[:2], pos, n_layer),  # lengths differ
        (np.zeros(0, np.int32), np.zeros(0, np.int32), n_layer),
        (ids[:1], pos, 0),  # no layer
        (ids[:1], pos, n_layer + 1),
        (ids[:1], np.array([-3], np.int32), n_layer),
    ]:
        with pytest.raises(ValueError):
            ctx.forward_tokens(tokens, positions, end)
    with pytest.raises(ValueError):
        ctx.forward_tokens(ids[:1].reshape(1, 1), pos, n_layer)
    # still usable, and exact: the next decode's logits are a fresh context's
    ctx.decode(ids[:1], len(ids), outputs=1)
    fresh = native_context(tiny_llama)
    fresh.decode(np.concatenate([ids, ids[:1]]), 0, outputs=1)
    assert np.array_equal(ctx.logits(-1), fresh.logits(-1))
    fresh.close()
    ctx.close()
    with pytest.raises(SessionClosedError):
        ctx.forward_tokens(ids[:1], pos, n_layer)


# -- the candidate head ----------------------------------------------------------------


def test_the_head_is_used_where_the_output_matrix_is_most_of_the_weights(gemma3, smollm2, tiny_llama):
    assert gemma3.head_weights.share > MIN_SHARE > smollm2.head_weights.share > tiny_llama.head_weights.share
    for model, used in ((gemma3, True), (smollm2, False), (tiny_llama, False)):
        with model.session(kv_budget=32, policy="kvdirect") as session:
            assert (session._policy.draft_head is not None) is used
        with model.session(kv_budget=32, policy="streaming") as session:
            assert session._policy.draft_head is None  # nothing to verify drafts against


@pytest.mark.parametrize("name", ["gemma3", "tiny_llama"])
def test_the_head_picks_the_output_heads_argmax(request, name):
    model = request.getfixturevalue(name)
    head = CandidateHead(model.head_weights)
    assert head.argmax(np.zeros(model.info.n_embd, np.float32)) is None  # no candidates yet
    ids = model.tokenize(PROMPT)
    for n in range(len(ids) - 6, len(ids) + 1):
        h_top, logits, _ = last_layer_of_a_decode(model, ids[:n])
        head.observe(ids[:n], logits)  # the context and the top of the exact row
        assert head.argmax(h_top) == int(np.argmax(logits))
    assert head.n_scored == 7


def test_candidates_stay_bounded_and_the_recent_ones_stay(gemma3):
    head = CandidateHead(gemma3.head_weights)
    n_embd = gemma3.info.n_embd
    for first in range(0, MAX_CANDIDATES + 3000, 1000):
        head.observe(np.arange(first, first + 1000), None)
    assert head.n_candidates == MAX_CANDIDATES
    assert head.nbytes <= MAX_CANDIDATES * (4 * n_embd + 16)
    newest = MAX_CANDIDATES + 2999
    assert newest in head and 0 not in head
    # a candidate's row is the output matrix's: scoring its own row direction picks it
    assert head.argmax(head._rows[head._slot[newest]] / head._scale) == newest


def test_logits_rows_of_any_width_give_their_top_tokens(tiny_llama):
    head = CandidateHead(tiny_llama.head_weights)
    head.observe((), np.arange(8, dtype=np.float32))  # fewer entries than the top it takes
    assert head.n_candidates == 8
    head.observe((), np.zeros((2, 0), np.float32))
    head.observe([tiny_llama.info.n_vocab, -1], None)  # no such tokens: ignored
    assert head.n_candidates == 8


def test_a_changed_file_leaves_the_draft_without_candidates(tiny_llama_path, tmp_path):
    copy = tmp_path / "copy.gguf"
    shutil.copyfile(tiny_llama_path, copy)
    weights = HeadWeights.of(read_header(copy))
    with open(copy, "r+b") as f:
        f.truncate(weights.data_offset + weights.output.offset + 10)
    head = CandidateHead(weights)
    head.observe([1, 2, 3], None)
    assert head.n_candidates == 0 and head.argmax(np.ones(weights.output.shape[0], np.float32)) is None
    copy.unlink()
    head.observe([4], None)
    assert head.n_candidates == 0


@pytest.mark.parametrize("checkpoint", ["tokens", "residuals"])
@pytest.mark.parametrize("sampling", [SamplingParams(temperature=0.0), SamplingParams(temperature=0.9, seed=3)])
def test_drafting_with_the_head_on_every_synthetic_architecture(tiny_model, sampling, checkpoint):
    """The head is forced on (the tiny models' output matrices are a tenth of their weights)."""
    prompt = " ".join([PROMPT] * 3)
    with (
        tiny_model.session(sampling=sampling) as full,
        tiny_model.session(kv_budget=16, policy="kvdirect", checkpoint=checkpoint, draft=3, sampling=sampling) as b,
    ):
        b._policy.draft_head = head = CandidateHead(tiny_model.head_weights)
        want = full.generate(prompt, max_tokens=20, stop_at_eog=False).tokens
        assert b.generate(prompt, max_tokens=20, stop_at_eog=False).tokens == want
        assert np.array_equal(b.logits(), full.logits())
        assert head.n_scored > 0 and b.stats.n_verifies > 0


def test_dequantize_refuses_what_it_cannot_convert():
    raw = np.zeros(34, np.uint8)  # one Q8_0 block: 32 values
    assert native.dequantize(8, raw, 32).shape == (32,)
    for ggml_type, data, n in [(8, raw, 31), (8, raw[:33], 32), (999, raw, 32), (-1, raw, 32), (8, raw, 0)]:
        with pytest.raises(ValueError):
            native.dequantize(ggml_type, data, n)
