"""Prompt reuse (llama-server's cache_prompt): a slot keeps its tokens between requests, and a new
prompt is processed only from where it departs from them.

A chat client resends the whole conversation every turn, so the previous turn's prompt and reply are
normally a prefix of the new prompt. Not always token for token: the reply's text, re-rendered by the
chat template and tokenized again, can split differently from the tokens that were generated, and a
stop string cuts the text short. So the comparison is on token ids, and the session is rewound to
the longest common prefix; under full and kvdirect that rewind is exact, under a lossy policy the
slot continues the same session, as its policy left it.
"""

from __future__ import annotations

from typing import Sequence

from .session import Session
from .session.core import common_prefix

__all__ = ["common_prefix", "continue_from"]


def continue_from(session: Session, prompt: Sequence[int]) -> list[int] | None:
    """Rewind the session to the longest prefix it shares with prompt; return the prompt's tokens still to
    process, or None when the session holds all of them (then the next call processes at most the last
    kept token again, for the logits the next token is sampled from)."""
    n = common_prefix(session.tokens, prompt)
    session.rewind(n)
    return list(prompt[n:]) or None
