"""The JSON the OpenAI API answers with: completions, their streamed chunks, usage, the model list.

Plain dicts built in one place, so every endpoint answers in the shape the `openai` client parses.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from .. import __version__

FINGERPRINT = f"pykvd-{__version__}"


@dataclass(frozen=True)
class Reply:
    """What identifies one completion in all of its chunks."""

    id: str
    model: str
    created: int
    chat: bool  # chat.completion(s) or text_completion

    @classmethod
    def new(cls, model: str, *, chat: bool) -> Reply:
        prefix = "chatcmpl" if chat else "cmpl"
        return cls(f"{prefix}-{secrets.token_hex(12)}", model, int(time.time()), chat)

    def _head(self, object_name: str) -> dict:
        return {
            "id": self.id,
            "object": object_name,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
        }

    def whole(self, text: str, finish_reason: str, usage: dict) -> dict:
        """The non-streamed answer."""
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None}
            head = self._head("chat.completion")
        else:
            choice = {"index": 0, "text": text, "logprobs": None}
            head = self._head("text_completion")
        return {**head, "choices": [{**choice, "finish_reason": finish_reason}], "usage": usage}

    def first_chunk(self) -> dict | None:
        """A chat stream opens with the assistant's role and no text, as OpenAI's does."""
        return self._chunk({"role": "assistant", "content": ""}, None) if self.chat else None

    def text_chunk(self, text: str) -> dict:
        return self._chunk({"content": text} if self.chat else text, None)

    def last_chunk(self, finish_reason: str) -> dict:
        return self._chunk({} if self.chat else "", finish_reason)

    def usage_chunk(self, usage: dict) -> dict:
        """After the last chunk when the client asked for stream_options.include_usage: no choices."""
        object_name = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._head(object_name), "choices": [], "usage": usage}

    def _chunk(self, delta, finish_reason: str | None) -> dict:
        if self.chat:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": 0, "text": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**self._head("text_completion"), "choices": [choice]}


def usage(n_prompt: int, n_cached: int, n_completion: int) -> dict:
    return {
        "prompt_tokens": n_prompt,
        "completion_tokens": n_completion,
        "total_tokens": n_prompt + n_completion,
        "prompt_tokens_details": {"cached_tokens": n_cached},
    }


def model_list(model_id: str, created: int, meta: dict) -> dict:
    return {
        "object": "list",
        "data": [{"id": model_id, "object": "model", "created": created, "owned_by": "pykvd", "meta": meta}],
    }
