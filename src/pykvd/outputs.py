"""Which rows of a decode produce logits. The values are the binding's own codes."""

from __future__ import annotations

import enum

import numpy as np


class Outputs(enum.IntEnum):
    NONE = 0  # no logits: a prompt chunk that is not the last
    LAST = 1  # logits for the last row only: the end of a prompt, or a decode step
    ALL = 2  # logits for every row (needed to capture h^(n_layer), which exists only for output rows)

    def flags(self, n: int) -> np.ndarray | None:
        """One int8 flag per row for a call that takes flags (None: every row). A call must return at
        least one row, so NONE asks for the last, the cheapest to compute and to ignore."""
        if self is Outputs.ALL:
            return None
        flags = np.zeros(n, dtype=np.int8)
        flags[-1] = 1
        return flags
