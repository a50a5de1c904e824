"""A self-speculative draft's output head, over a few candidate tokens instead of the vocabulary.

A draft only needs the argmax of its logits: whether the token counts is decided by the exact logits
of the verification. On a model whose output matrix is a large share of its weights, that matrix is
most of a one-token decode (Gemma 3 270M: 168M of its 268M parameters; a decode step measured
18-24 ms, the layers alone 7.5 ms), so a draft step runs the layers alone
(``Context.forward_tokens``, llama_kvd_forward_tokens) and scores only the candidates: every token of
the context so far and the top few tokens of the last exact logits row of each decode.

The candidates' rows of the output matrix are read from the GGUF file and converted to floats once,
by ggml's own conversion; at most MAX_CANDIDATES of them are kept (the least recently seen make
way). The final norm's scale is applied, its division by the RMS is not: it scales every candidate
alike, so the argmax is the same. Where the output matrix is a small share of the weights
(SmolLM2-135M: 0.21), the full head costs a draft step little and sees every token, so it is kept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._llama import native
from .gguf_file import GGUFHeader, TensorInfo

MIN_SHARE = 0.4  # the output matrix's share of the weight bytes from which a candidate head pays
TOP_PER_ROW = 16  # the highest-scoring tokens of each exact logits row that join the candidates
MAX_CANDIDATES = 4096  # rows kept: Gemma 3's 640 floats a row make this 10 MiB at most


@dataclass(frozen=True)
class HeadWeights:
    """Where the output matrix and the final norm's scale are in a GGUF file."""

    path: Path
    data_offset: int
    output: TensorInfo  # [n_embd, n_vocab]: output.weight, or token_embd.weight when tied
    norm: TensorInfo | None  # output_norm.weight
    share: float  # of the file's tensor bytes

    @classmethod
    def of(cls, header: GGUFHeader) -> HeadWeights | None:
        """The head of a checked header, or None when the file has no usable one."""
        tensors = {t.name: t for t in header.tensors}
        output = tensors.get("output.weight") or tensors.get("token_embd.weight")
        if output is None or len(output.shape) != 2 or not output.nbytes:
            return None
        norm = tensors.get("output_norm.weight")
        if norm is not None and (norm.shape != output.shape[:1] or not norm.nbytes):
            norm = None
        total = sum(t.nbytes or 0 for t in header.tensors)
        return cls(header.path, header.data_offset, output, norm, output.nbytes / max(total, 1))

    @property
    def worthwhile(self) -> bool:
        return self.share >= MIN_SHARE


class CandidateHead:
    """One session's draft head: the candidate tokens and their rows of the output matrix."""

    def __init__(self, weights: HeadWeights):
        self._weights = weights
        self.n_embd, self.n_vocab = weights.output.shape
        self._ids = np.zeros(0, np.int32)
        self._rows = np.zeros((0, self.n_embd), np.float32)
        self._last_seen = np.zeros(0, np.int64)
        self._slot: dict[int, int] = {}
        self._clock = 0
        self.n_scored = 0  # draft steps it chose a token for
        scale = self._read_rows(weights.norm, [0]) if weights.norm is not None else None
        self._scale = scale[0] if scale is not None else np.ones(self.n_embd, np.float32)

    @property
    def nbytes(self) -> int:
        return self._rows.nbytes + self._ids.nbytes + self._last_seen.nbytes

    @property
    def n_candidates(self) -> int:
        return len(self._slot)

    def __contains__(self, token: int) -> bool:
        return token in self._slot

    def observe(self, tokens, logits: np.ndarray | None) -> None:
        """Tokens of the context, and exact logits rows ([n, n_vocab] or [n_vocab]) whose top tokens join."""
        ids = [int(t) for t in np.asarray(tokens).ravel()]
        if logits is not None:
            rows = np.atleast_2d(logits)
            n_top = min(TOP_PER_ROW, rows.shape[1])
            top = np.argpartition(rows, -n_top, axis=1)[:, -n_top:] if n_top else rows[:, :0]
            ids.extend(int(t) for t in top.ravel())
        self._clock += 1
        fresh = []
        for token in dict.fromkeys(ids):
            if token in self._slot:
                self._last_seen[self._slot[token]] = self._clock
            elif 0 <= token < self.n_vocab:
                fresh.append(token)
        if fresh:
            self._admit(fresh[:MAX_CANDIDATES])

    def argmax(self, h: np.ndarray) -> int | None:
        """The best candidate for the last layer's output h (n_embd floats); None with no candidates."""
        if not self._slot:
            return None
        scores = self._rows[: len(self._slot)] @ (np.asarray(h, np.float32) * self._scale)
        self.n_scored += 1
        return int(self._ids[int(np.argmax(scores))])

    def _admit(self, tokens: list[int]) -> None:
        """New candidates take free slots, then those of the least recently seen; slots [0, n) stay full."""
        rows = self._read_rows(self._weights.output, tokens)
        if rows is None:  # the file changed under the model: the draft keeps what it has
            return
        n_old = len(self._slot)
        n_new = min(n_old + len(tokens), MAX_CANDIDATES)
        if n_new > len(self._ids):
            self._grow(max(n_new, min(2 * len(self._ids), MAX_CANDIDATES)))
        slots = list(range(n_old, n_new))
        if len(slots) < len(tokens):  # full
            stale = np.argsort(self._last_seen[:n_old], kind="stable")[: len(tokens) - len(slots)]
            for slot in stale:
                del self._slot[int(self._ids[slot])]
            slots.extend(int(s) for s in stale)
        for token, slot, row in zip(tokens, slots, rows):
            self._rows[slot] = row
            self._ids[slot] = token
            self._last_seen[slot] = self._clock
            self._slot[token] = slot

    def _grow(self, n: int) -> None:
        grown = np.zeros((n, self.n_embd), np.float32)
        grown[: len(self._rows)] = self._rows
        self._rows = grown
        self._ids = np.concatenate([self._ids, np.zeros(n - len(self._ids), np.int32)])
        self._last_seen = np.concatenate([self._last_seen, np.zeros(n - len(self._last_seen), np.int64)])

    def _read_rows(self, tensor: TensorInfo, rows: list[int]) -> np.ndarray | None:
        """Rows of a GGUF tensor as floats [len(rows), n_embd], or None if the file cannot give them."""
        row_bytes = tensor.nbytes // (tensor.n_elements // self.n_embd) if tensor.nbytes else 0
        start = self._weights.data_offset + tensor.offset
        try:
            with open(self._weights.path, "rb") as f:
                raw = b"".join(os.pread(f.fileno(), row_bytes, start + row * row_bytes) for row in rows)
        except OSError:
            return None
        if len(raw) != row_bytes * len(rows):
            return None
        try:
            floats = native.dequantize(tensor.ggml_type, np.frombuffer(raw, np.uint8), self.n_embd * len(rows))
        except ValueError:  # a type ggml cannot convert to floats: no candidates, the full head drafts
            return None
        return floats.reshape(len(rows), self.n_embd)
