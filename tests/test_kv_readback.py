"""Reading K/V rows back from llama.cpp's cache, for any layer, cache (iSWA) and V layout."""

from __future__ import annotations

import numpy as np
import pytest

PROMPT = "the cat and the cat and the cat sat on the mat"


def repeated_token_positions(tokens):
    seen = {}
    for pos, token in enumerate(tokens):
        if token in seen:
            return seen[token], pos
        seen[token] = pos
    raise AssertionError("the prompt has no repeated token")


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_stored_kv_is_batch_invariant(request, name):
    model = request.getfixturevalue(name)
    with model.session(n_ctx=512, n_threads=1) as whole, model.session(n_ctx=512, n_batch=1, n_threads=1) as single:
        whole.feed(PROMPT)
        single.feed(PROMPT)
        for layer in range(model.info.n_layer):
            info = model.info.layers[layer]
            for pos in range(len(whole.tokens)):
                k, v = whole.read_kv(layer, pos)
                assert k.shape == (info.n_embd_k_gqa,) and v.shape == (info.n_embd_v_gqa,)
                k1, v1 = single.read_kv(layer, pos)
                assert np.array_equal(k, k1) and np.array_equal(v, v1), (layer, pos)


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_layer0_values_depend_only_on_the_token(request, name):
    # V = W_v norm(h0) has no position in it; K carries RoPE of its position.
    model = request.getfixturevalue(name)
    with model.session(n_ctx=512, n_threads=1) as session:
        session.feed(PROMPT)
        first, again = repeated_token_positions(session.tokens)
        k_a, v_a = session.read_kv(0, first)
        k_b, v_b = session.read_kv(0, again)
    assert np.array_equal(v_a, v_b)
    assert not np.array_equal(k_a, k_b)


def test_every_synthetic_architecture(tiny_model):
    with tiny_model.session(n_ctx=256, n_threads=1) as session:
        session.feed("Hello world, hello world")
        for layer in range(tiny_model.info.n_layer):
            k, v = session.read_kv(layer, len(session.tokens) - 1)
            assert np.isfinite(k).all() and np.isfinite(v).all() and np.abs(v).sum() > 0


def test_sliding_layers_forget_outside_their_window(tiny_models):
    model = tiny_models["gemma3"]
    window = model.info.n_swa
    # llama.cpp sizes the sliding cache to the window plus a batch, padded to 256 cells: go well past it.
    with model.session(n_ctx=1024, n_batch=8, n_threads=1, swa_full=False) as session:
        session.feed([10 + i % 200 for i in range(max(700, 3 * window))])
        sliding = model.info.swa_layers[0]
        dense = next(layer for layer in range(model.info.n_layer) if layer not in model.info.swa_layers)
        session.read_kv(dense, 0)  # the global layer keeps every position
        with pytest.raises(KeyError):
            session.read_kv(sliding, 0)
        session.read_kv(sliding, len(session.tokens) - 1)


@pytest.mark.parametrize(
    "layer, pos, error",
    [(-1, 0, IndexError), (99, 0, IndexError), (0, -1, IndexError), (0, 10_000, KeyError), ("0", 0, IndexError)],
)
def test_bad_reads(smollm2, layer, pos, error):
    with smollm2.session(n_ctx=256, n_threads=1) as session:
        session.feed(PROMPT)
        with pytest.raises(error):
            session.read_kv(layer, pos)
        assert session.generate(max_tokens=2, stop_at_eog=False).tokens  # still usable
