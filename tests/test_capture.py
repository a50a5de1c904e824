"""P1: residual-stream capture h^(l), l = 0..n_layer, for every token of every decode."""

from __future__ import annotations

import numpy as np
import pytest

PROMPT = "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog."


def capture_run(model, layers, **session_args):
    """Prefill PROMPT and generate 3 tokens inside a capture; return (capture, session tokens)."""
    session_args.setdefault("n_threads", 1)
    with model.session(n_ctx=512, **session_args) as session:
        with session.capture(layers) as cap:
            session.feed(PROMPT)
            session.generate(max_tokens=3, stop_at_eog=False)
        return cap, session.tokens


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_every_layer_every_token_any_batching(request, name):
    model = request.getfixturevalue(name)
    n_layer, n_embd = model.info.n_layer, model.info.n_embd
    layers = range(n_layer + 1)
    whole, tokens = capture_run(model, layers)
    # Chunks of 8 split into ubatches of 3, and token by token: the same bits.
    chunked, _ = capture_run(model, layers, n_batch=8, n_ubatch=3)
    single, _ = capture_run(model, layers, n_batch=1)
    n_decoded = len(tokens) - 1  # the last sampled token is never decoded
    assert whole.layers == tuple(layers)
    assert np.array_equal(whole.positions, np.arange(n_decoded))
    for layer in layers:
        rows = whole.residuals[layer]
        assert rows.shape == (n_decoded, n_embd) and rows.dtype == np.float32
        assert np.isfinite(rows).all()
        assert np.array_equal(rows, chunked.residuals[layer]), layer
        assert np.array_equal(rows, single.residuals[layer]), layer


def test_h0_depends_only_on_the_token(smollm2):
    cap, tokens = capture_run(smollm2, [0, 1])
    h0, h1 = cap.residuals[0], cap.residuals[1]
    ids = np.asarray(tokens[: len(h0)])
    first, again = [int(i) for i in np.flatnonzero(ids == ids[2])[:2]]
    assert first != again
    assert np.array_equal(h0[first], h0[again])  # the embedding has no position
    assert not np.array_equal(h1[first], h1[again])  # layer 0 attended to different contexts


def test_every_synthetic_architecture(tiny_model):
    n_layer = tiny_model.info.n_layer
    with tiny_model.session(n_ctx=256, n_batch=4, n_threads=1) as session:
        with session.capture(range(n_layer + 1)) as cap:
            session.feed("Hello world, 123! abc")
        n_tokens = len(session.tokens)
    for layer in range(n_layer + 1):
        assert cap.residuals[layer].shape == (n_tokens, tiny_model.info.n_embd)
        assert np.isfinite(cap.residuals[layer]).all()


def test_capture_does_not_change_the_output(smollm2):
    with smollm2.session(n_ctx=512, n_threads=1) as plain:
        expected = plain.generate(PROMPT, max_tokens=8).tokens
        expected_logits = plain.logits().copy()
    with smollm2.session(n_ctx=512, n_threads=1) as captured:
        with captured.capture([0, smollm2.info.n_layer]):
            got = captured.generate(PROMPT, max_tokens=8).tokens
        assert got == expected
        assert np.array_equal(captured.logits(), expected_logits)


def test_capture_ends_with_the_block(smollm2):
    with smollm2.session(n_ctx=512, n_threads=1) as session:
        with session.capture([3]) as cap:
            session.feed("One two three")
        n_rows = len(cap.residuals[3])
        session.feed(" four five")
        assert len(cap.residuals[3]) == n_rows
        with pytest.raises(ValueError):
            session._ctx.captured(3)


@pytest.mark.parametrize("layers", [[-1], [31], ["0"], [1.0], [True]])
def test_bad_layers(smollm2, layers):
    with smollm2.session(n_ctx=256, n_threads=1) as session:
        with pytest.raises(IndexError):
            with session.capture(layers):
                pass
        assert session.generate("Hi", max_tokens=2, stop_at_eog=False).tokens  # still usable


def test_no_layers_and_nested_captures(smollm2):
    with smollm2.session(n_ctx=256, n_threads=1) as session:
        with pytest.raises(ValueError):
            with session.capture([]):
                pass
        with session.capture([0]):
            with pytest.raises(RuntimeError):
                with session.capture([1]):
                    pass
