"""P2 refill and P3 partial-depth forward: K/V rebuilt from the residual stream are bit-exact."""

from __future__ import annotations

import numpy as np
import pytest

from pykvd.verify import cacheless, greedy_steps, recoverability, restore

PROMPT = "Keys and values are projections of the residual stream, so an evicted cache can come back."


def greedy(session, n_steps):
    """Greedy tokens and the logits each was chosen from, stacked."""
    tokens, logits = greedy_steps(session, n_steps)
    return tokens, np.stack(logits)


def kv_rows(session, layers, positions):
    return {(layer, pos): session.read_kv(layer, pos) for layer in layers for pos in positions}


def same_rows(a, b):
    return all(np.array_equal(a[key][0], b[key][0]) and np.array_equal(a[key][1], b[key][1]) for key in a)


def captured_session(model, layers, prompt=PROMPT, **kwargs):
    kwargs.setdefault("n_ctx", 256)
    session = model.session(**kwargs)
    with session.capture(layers) as capture:
        session.feed(prompt)
    return session, capture


# -- recoverability: every layer, both real models, every synthetic architecture -------


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_recoverability_real_models(request, name):
    model = request.getfixturevalue(name)
    checks = recoverability(model, PROMPT, n_decode=8)
    assert [c.layer for c in checks] == list(range(model.info.n_layer))
    assert all(c.max_dk == 0 and c.max_dv == 0 for c in checks), [c for c in checks if c.max_dk or c.max_dv]
    kinds = {c.kind for c in checks}
    assert kinds == ({"global", "sliding"} if name == "gemma3" else {"global"})


def test_recoverability_synthetic(tiny_model):
    # The prompt is longer than tiny gemma3's 32-token window: sliding layers are rebuilt too.
    checks = recoverability(tiny_model, PROMPT, n_decode=8)
    assert all(c.max_dk == 0 and c.max_dv == 0 for c in checks)


def test_cacheless_and_restore_synthetic(tiny_model):
    assert cacheless(tiny_model, PROMPT, n_steps=12).ok
    checks = restore(tiny_model, PROMPT, n_steps=8)
    assert len(checks) >= 4 and all(c.ok for c in checks), checks


# -- what the primitives write, and where -----------------------------------------------


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_refill_overwrites_only_its_layers_in_place(request, name):
    model = request.getfixturevalue(name)
    n_layer = model.info.n_layer
    session, capture = captured_session(model, range(n_layer))
    other, other_capture = captured_session(model, range(n_layer), prompt=PROMPT.upper())
    n = min(len(session.tokens), len(other.tokens))
    positions = list(range(3, n - 2))
    before = kv_rows(session, range(n_layer), range(len(session.tokens)))
    # The same residuals again: nothing changes.
    session.refill(capture, positions=positions, layers=range(2, 5))
    assert same_rows(before, kv_rows(session, range(n_layer), range(len(session.tokens))))
    # Another prompt's residuals at layer 3: only layer 3 at those positions changes.
    session.refill(other_capture.stack(range(3, 4), positions), positions=positions, layers=range(3, 4))
    after = kv_rows(session, range(n_layer), range(len(session.tokens)))
    changed = {key for key in before if not np.array_equal(before[key][0], after[key][0])}
    assert changed == {(3, pos) for pos in positions}
    want = kv_rows(other, [3], positions)
    assert all(np.array_equal(want[key][0], after[key][0]) for key in want)
    session.close()
    other.close()


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_evicted_middle_tokens_come_back_exactly(request, name):
    model = request.getfixturevalue(name)
    n_layer = model.info.n_layer
    with model.session(n_ctx=256) as never:
        never.feed(PROMPT)
        ref_tokens, ref_logits = greedy(never, 6)
    session, capture = captured_session(model, range(n_layer))
    original = kv_rows(session, range(n_layer), range(len(session.tokens)))
    middle = range(4, 11)
    session.evict(middle)
    with pytest.raises(KeyError):
        session.read_kv(0, 5)
    session.refill(capture, positions=middle)
    assert same_rows(original, kv_rows(session, range(n_layer), range(len(session.tokens))))
    tokens, logits = greedy(session, 6)
    assert tokens == ref_tokens and np.array_equal(logits, ref_logits)
    session.close()


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_forward_returns_the_residual_and_logits(request, name):
    model = request.getfixturevalue(name)
    n_layer = model.info.n_layer
    session, capture = captured_session(model, range(n_layer + 1), n_batch=512)
    h = capture.residuals
    positions = capture.positions
    last_logits = session.logits().copy()
    c = n_layer // 2
    # Layers c..c+2 rebuilt in place from h^(c): h^(c+3) as captured, cache unchanged.
    before = kv_rows(session, range(n_layer), positions[::5].tolist())
    assert np.array_equal(session.forward_layers(h[c], positions, c, c + 3), h[c + 3])
    assert same_rows(before, kv_rows(session, range(n_layer), positions[::5].tolist()))
    # To the top, with the output head: the prefill's last logits; the session's own are untouched.
    h_top, logits = session.forward_layers(h[c], positions, c, n_layer, logits=True)
    assert np.array_equal(h_top, h[n_layer])
    assert logits.shape == (len(positions), model.info.n_vocab)
    assert np.array_equal(logits[-1], last_logits)
    assert np.array_equal(session.logits(), last_logits)
    session.close()


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_residual_patching_is_deterministic(request, name):
    """Putting the last token's own residual back at layer l and re-running l..L-1 gives its logits
    bit for bit; another prompt's residual moves them (the consistency check of bench/consistency.py)."""
    model = request.getfixturevalue(name)
    n_layer = model.info.n_layer
    a_ids = model.tokenize("The lighthouse keeper climbed the stairs to light the lamp")
    b_ids = model.tokenize("A young baker rose before dawn to knead the bread for market")
    n = min(len(a_ids), len(b_ids))
    donor, a_cap = captured_session(model, range(n_layer), prompt=a_ids[:n])
    recipient, b_cap = captured_session(model, range(n_layer), prompt=b_ids[:n])
    own = recipient.logits().copy()
    moved = []
    for layer in range(0, n_layer, 3):
        _, again = recipient.forward_layers(b_cap.residuals[layer][-1:], [n - 1], layer, n_layer, logits=True)
        assert np.array_equal(again[0], own), layer
        _, patched = recipient.forward_layers(a_cap.residuals[layer][-1:], [n - 1], layer, n_layer, logits=True)
        moved.append(not np.array_equal(patched[0], own))
    assert all(moved)
    donor.close()
    recipient.close()


def test_fresh_session_rebuilt_from_a_checkpoint_continues_exactly(smollm2):
    n_layer = smollm2.info.n_layer
    session, capture = captured_session(smollm2, range(n_layer))
    ref_tokens, _ = greedy(session, 5)
    with smollm2.session(n_ctx=256) as rebuilt:
        rebuilt.refill(capture)  # adopts the captured token ids
        assert rebuilt.tokens == capture.tokens.tolist()
        # A refill computes no logits: feeding the first greedy token continues the sequence.
        rebuilt.feed([ref_tokens[0]])
        tokens, _ = greedy(rebuilt, 4)
    assert tokens == ref_tokens[1:]
    session.close()


def test_gemma3_global_and_sliding_layers_separately(gemma3):
    n_layer = gemma3.info.n_layer
    swa = set(gemma3.info.swa_layers)
    session, capture = captured_session(gemma3, range(n_layer))
    original = kv_rows(session, range(n_layer), range(len(session.tokens)))
    session.evict(range(len(session.tokens)))
    # Layer by layer, whichever cache holds it; after the last one every row is back.
    for layer in sorted(range(n_layer), key=lambda layer: (layer not in swa, layer)):
        session.refill(capture, layers=range(layer, layer + 1))
    assert same_rows(original, kv_rows(session, range(n_layer), range(len(session.tokens))))
    session.close()


def test_the_c_api_is_callable_with_ctypes():
    import ctypes

    from pykvd import paths

    lib = ctypes.CDLL(str(paths.lib_dir() / "libllama.so"))
    lib.llama_kvd_refill.restype = ctypes.c_int32
    lib.llama_kvd_forward.restype = ctypes.c_int32
    # A NULL context is a bad argument (-1), not a crash.
    assert lib.llama_kvd_refill(None, 0, None, 0, 0, 1, None) == -1
    assert lib.llama_kvd_forward(None, 0, None, 0, 0, 1, None, None, None) == -1
    assert (paths.include_dir() / "llama-kvd.h").read_text().count("LLAMA_KVD_NO_ROOM") == 1


def test_the_c_api_compiles_and_runs_from_c(tmp_path):
    import shutil
    import subprocess

    from pykvd import paths

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler")
    source = tmp_path / "kvd.c"
    source.write_text(
        '#include "llama-kvd.h"\n#include <stdio.h>\n'
        "int main(void) {\n"
        "    llama_pos pos[1] = {0}; float h[1] = {0}; float out[1];\n"
        "    int a = llama_kvd_refill(NULL, 0, pos, 1, 0, 1, h);\n"
        "    int b = llama_kvd_forward(NULL, 0, pos, 1, 0, 1, h, out, NULL);\n"
        '    printf("%d %d %d\\n", a, b, LLAMA_KVD_NO_ROOM);\n'
        "    return 0;\n}\n"
    )
    binary = tmp_path / "kvd"
    lib = paths.lib_dir()
    subprocess.run(
        [
            compiler,
            "-std=c11",
            str(source),
            "-I",
            str(paths.include_dir()),
            "-L",
            str(lib),
            "-lllama",
            f"-Wl,-rpath,{lib}",
            "-o",
            str(binary),
        ],
        check=True,
        capture_output=True,
    )
    assert subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout.split() == [
        "-1",
        "-1",
        "-2",
    ]
