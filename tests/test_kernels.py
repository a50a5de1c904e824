"""Batch invariance of ggml's CPU matmul and flash-attention kernels (patches 0007-0010, 0014).

pykvd-batch-invariance (native/kernels/batch_invariance.c) multiplies a random
weight matrix of one ggml type by 600 random activation rows at once, then by
every window of n rows for n = 1..600, and names the batch sizes whose rows
differ from the full product in any bit. In batch-invariant mode there must be
none, for every type the CPU backend multiplies by, in ggml's own layout and
repacked, and with other thread counts. Without the mode ggml's kernel choice
shows through (tinyBLAS from 2 rows, the tiled K-quant kernel from 8, repacked
gemv for rows outside full groups of 4), which is what the check catches.

With ``--op flash_attn`` it does the same for ggml_flash_attn_ext over a causal
mask: in batch-invariant mode every batch size takes the tiled kernel; without
it, fewer than 64 query rows take the one-row kernel.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from pykvd import paths
from pykvd.gguf_file import GGML_TYPE_NAMES
from pykvd.model_checks import WEIGHT_TYPES

TYPES = sorted(GGML_TYPE_NAMES[t] for t in WEIGHT_TYPES)
# What the CPU repacks on x86 (AVX2 and up); elsewhere the program says so and the case is skipped.
REPACKED = ("Q4_0", "Q4_K", "Q2_K", "IQ4_NL", "MXFP4")
NOT_REPACKED_HERE = 3


def check(type_name: str, *, invariant: bool = True, repack: bool = False, threads: int = 2, shape=(128, 512)) -> dict:
    command = [
        str(paths.batch_invariance_program()),
        "--type",
        type_name,
        "--invariant",
        str(int(invariant)),
        "--repack",
        str(int(repack)),
        "--threads",
        str(threads),
        "--rows",
        str(shape[0]),
        "--cols",
        str(shape[1]),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode == NOT_REPACKED_HERE:
        pytest.skip(done.stderr.strip())
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("type_name", TYPES)
def test_every_batch_size_gives_the_same_rows(type_name):
    result = check(type_name)
    assert result["batch_sizes"] == 600
    assert result["differing_batch_sizes"] == []


@pytest.mark.parametrize(
    ("type_name", "shape"),
    # rows not a multiple of tinyBLAS's 4, rows not a multiple of 16 floats: every batch size must
    # still take one kernel, whichever it is
    [("F32", (122, 520)), ("F16", (122, 512)), ("F16", (128, 520)), ("BF16", (122, 520))]
    + [(t, (122, 768)) for t in ("Q8_0", "Q4_0", "IQ4_NL", "Q4_K", "Q6_K", "IQ2_XXS")],
)
def test_odd_shapes_give_the_same_rows(type_name, shape):
    assert check(type_name, shape=shape)["differing_batch_sizes"] == []


@pytest.mark.parametrize("type_name", REPACKED)
def test_repacked_weights_give_the_same_rows(type_name):
    result = check(type_name, repack=True)
    assert result["repacked"]
    assert result["differing_batch_sizes"] == []


@pytest.mark.parametrize("type_name", ["F16", "Q8_0", "Q4_K", "Q6_K"])
@pytest.mark.parametrize("threads", [1, 3])
def test_other_thread_counts_give_the_same_rows(type_name, threads):
    assert check(type_name, threads=threads)["differing_batch_sizes"] == []


@pytest.mark.parametrize(
    ("type_name", "repack", "variant"),
    [
        ("F16", False, [1]),  # vec_dot for one row, tinyBLAS from two
        ("Q4_K", False, list(range(1, 8))),  # vec_dot below 8 rows, the tiled kernel from 8
        ("Q6_K", False, list(range(1, 8))),
    ],
)
def test_without_the_mode_the_check_sees_the_kernel_change(type_name, repack, variant):
    differing = check(type_name, invariant=False, repack=repack)["differing_batch_sizes"]
    assert differing[: len(variant)] == variant


def test_repacked_k_quants_differ_without_the_mode():
    differing = check("Q4_K", invariant=False, repack=True)["differing_batch_sizes"]
    # every batch size that leaves rows outside full groups of 4 takes gemv for them
    assert differing and all(n % 4 != 0 for n in differing) and 1 in differing


def check_attention(type_name: str, head_size: int, heads: int, *, invariant: bool = True, threads: int = 2) -> dict:
    command = [str(paths.batch_invariance_program()), "--op", "flash_attn", "--type", type_name]
    command += ["--cols", str(head_size), "--rows", str(heads), "--invariant", str(int(invariant))]
    command += ["--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize(
    ("type_name", "head_size", "heads", "threads"),
    [
        ("F16", 64, 4, 2),  # SmolLM2's and the sized models' head size
        ("F16", 256, 8, 2),  # Gemma 3's
        ("F16", 80, 6, 2),  # a head size the 16-wide K packing does not divide
        ("F16", 128, 2, 2),  # one K/V head: a decode splits its group of query heads between the threads
        ("F32", 64, 4, 2),
        ("F16", 64, 4, 1),
        ("F16", 64, 4, 3),
    ],
)
def test_flash_attention_gives_the_same_rows_at_every_batch_size(type_name, head_size, heads, threads):
    """Each window of query rows also sees another number of keys (its n_kv, padded to 256)."""
    result = check_attention(type_name, head_size, heads, threads=threads)
    assert result["batch_sizes"] == 600
    assert result["differing_batch_sizes"] == []


def test_flash_attention_without_the_mode_takes_another_kernel_below_a_tile():
    differing = check_attention("F16", 64, 4, invariant=False)["differing_batch_sizes"]
    # the one-row kernel below 64 query rows (it also sums V in F16), the tiled kernel from 64
    assert differing[:63] == list(range(1, 64))
