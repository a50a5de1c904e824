"""Bad input to evict/refill/forward_layers: a specific exception, nothing changed, the session usable."""

from __future__ import annotations

import numpy as np
import pytest

from pykvd import ContextOverflowError, ResidualError, SessionClosedError

PROMPT = "Bad input must never cost the state of a session."


@pytest.fixture
def checkpointed(smollm2):
    """A session with every layer's residuals captured, its cache rows, and its greedy continuation."""
    n_layer = smollm2.info.n_layer
    session = smollm2.session(n_ctx=256)
    with session.capture(range(n_layer + 1)) as capture:
        session.feed(PROMPT)
    yield session, capture
    session.close()


def rows_of(session, n_layer):
    return [session.read_kv(layer, pos) for layer in range(n_layer) for pos in range(len(session.tokens))]


def assert_unchanged_and_usable(session, before, n_layer):
    after = rows_of(session, n_layer)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(before, after))
    assert len(session.generate(max_tokens=3, stop_at_eog=False).tokens) == 3


def bad_calls(capture, n_layer, n):
    h = capture.stack(range(n_layer), capture.positions)
    return [
        (IndexError, lambda s: s.refill(h, capture.positions, range(0, n_layer + 1))),  # layer out of range
        (IndexError, lambda s: s.refill(h[:1], capture.positions, range(-1, 0))),
        (IndexError, lambda s: s.refill(h[:0], capture.positions, range(3, 3))),  # empty range
        (IndexError, lambda s: s.refill(h[:2], capture.positions, range(0, 4, 2))),  # not consecutive
        (IndexError, lambda s: s.refill(h[:, :1], [n], range(0, n_layer))),  # past the sequence
        (IndexError, lambda s: s.refill(h[:, :1], [-1], range(0, n_layer))),
        (ResidualError, lambda s: s.refill(h[:, :2], [3, 2], range(0, n_layer))),  # not increasing
        (ResidualError, lambda s: s.refill(h[:, :2], [3, 3], range(0, n_layer))),
        (ResidualError, lambda s: s.refill(h[:, :2], [1.0, 2.0], range(0, n_layer))),
        (ResidualError, lambda s: s.refill(h[:, :2], [], range(0, n_layer))),
        (ResidualError, lambda s: s.refill(h, capture.positions[:-1], range(0, n_layer))),  # wrong shape
        (ResidualError, lambda s: s.refill(h[..., :-1], capture.positions, range(0, n_layer))),
        (ResidualError, lambda s: s.refill(h.astype(np.float64), capture.positions, range(0, n_layer))),
        (ResidualError, lambda s: s.refill(h.tolist(), capture.positions, range(0, n_layer))),
        (ResidualError, lambda s: s.refill(np.full_like(h, np.nan), capture.positions, range(0, n_layer))),
        (ResidualError, lambda s: s.refill(h, capture.positions)),  # an array needs layers
        (IndexError, lambda s: s.refill(capture, layers=range(0, n_layer + 1))),  # h^(n_layer) has no K/V
        (ResidualError, lambda s: s.refill(capture, positions=[n + 5])),  # not captured
        (IndexError, lambda s: s.forward_layers(h[0], capture.positions, 0, n_layer + 1)),
        (IndexError, lambda s: s.forward_layers(h[0], capture.positions, 5, 5)),
        (IndexError, lambda s: s.forward_layers(h[0], capture.positions, 0, 3, logits=True)),
        (ResidualError, lambda s: s.forward_layers(h, capture.positions, 0, 3)),  # 3-D
        (ResidualError, lambda s: s.forward_layers(h[0].astype(np.float16), capture.positions, 0, 3)),
        (IndexError, lambda s: s.forward_layers(h[0][:1], [n + 1], 0, 3)),
        (IndexError, lambda s: s.evict([n])),
        (ResidualError, lambda s: s.evict([2, 1])),
    ]


def test_bad_arguments_change_nothing(smollm2, checkpointed):
    session, capture = checkpointed
    n_layer, n = smollm2.info.n_layer, len(session.tokens)
    before = rows_of(session, n_layer)
    for error, call in bad_calls(capture, n_layer, n):
        with pytest.raises(error):
            call(session)
    assert_unchanged_and_usable(session, before, n_layer)


def test_residuals_of_another_model(smollm2, gemma3, tiny_llama, checkpointed):
    session, _ = checkpointed
    n_layer = smollm2.info.n_layer
    before = rows_of(session, n_layer)
    with tiny_llama.session(n_ctx=256) as tiny:
        with tiny.capture(range(tiny_llama.info.n_layer)) as tiny_capture:
            tiny.feed(PROMPT)
    with pytest.raises(ResidualError, match="different model"):
        session.refill(tiny_capture)
    with gemma3.session(n_ctx=256) as other:
        with other.capture([1]) as gemma_capture:
            other.feed(PROMPT)
    gemma_rows = gemma_capture.stack(range(1, 2))  # n_embd 640, not 576
    with pytest.raises(ResidualError, match="shape"):
        session.refill(gemma_rows[:, :3], [0, 1, 2], range(1, 2))
    assert_unchanged_and_usable(session, before, n_layer)


def test_a_capture_of_another_sequence(smollm2, checkpointed):
    session, _ = checkpointed
    with smollm2.session(n_ctx=256) as other:
        with other.capture(range(smollm2.info.n_layer)) as capture:
            other.feed("A different prompt entirely, with other tokens.")
    with pytest.raises(ResidualError, match="another token"):
        session.refill(capture, positions=[1, 2, 3])


def test_no_room_for_re_admitted_tokens(tiny_models):
    """swa_full=False gives tiny gemma3's sliding layers 256 cells: 300 evicted tokens do not fit."""
    model = tiny_models["gemma3"]
    ids = [10 + (i * 7) % 250 for i in range(300)]
    with model.session(n_ctx=512, n_batch=64, swa_full=False) as session:
        with session.capture(range(model.info.n_layer)) as capture:
            session.feed(ids)
        session.evict(range(300))
        with pytest.raises(ContextOverflowError, match="no free KV cells"):
            session.refill(capture)
        # Nothing was admitted; a refill that fits still works and the session goes on.
        with pytest.raises(KeyError):
            session.read_kv(5, 299)
        session.refill(capture, positions=range(100, 300))
        assert len(session.generate(max_tokens=2, stop_at_eog=False).tokens) == 2


def test_closed_session(smollm2):
    session = smollm2.session(n_ctx=256)
    with session.capture(range(2)) as capture:
        session.feed(PROMPT)
    session.close()
    for call in (
        lambda: session.refill(capture, layers=range(0, 2)),
        lambda: session.evict([0]),
        lambda: session.forward_layers(capture.residuals[0], capture.positions, 0, 1),
    ):
        with pytest.raises(SessionClosedError):
            call()
