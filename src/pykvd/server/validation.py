"""Request bodies of /v1/chat/completions and /v1/completions, checked field by field.

A body becomes a GenerationRequest or an APIError (400) naming the field at fault. Only what pykvd
can honour is accepted: n > 1, tools, logprobs and the other features it lacks are refused by name
rather than silently ignored. Unknown fields are ignored, as llama-server does. Besides OpenAI's
parameters, llama-server's top_k, min_p, repeat_penalty, repeat_last_n and ignore_eos are accepted.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, List, Union

from ..errors import SamplingError
from ..integers import is_plain_number
from ..sampling import SamplingParams
from .errors import APIError, invalid, missing, unsupported, wrong_type

Prompt = Union[str, List[int]]

# llama.cpp's chat templates know these roles; OpenAI's newer "developer" is a system message.
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}

# Sampling fields of a request and the SamplingParams field each sets.
_SAMPLING_FIELDS = {
    "temperature": ("temperature", "a number"),
    "top_p": ("top_p", "a number"),
    "top_k": ("top_k", "an integer"),
    "min_p": ("min_p", "a number"),
    "repeat_penalty": ("repeat_penalty", "a number"),
    "repeat_last_n": ("repeat_last_n", "an integer"),
    "seed": ("seed", "an integer"),
}


@dataclass(frozen=True)
class GenerationRequest:
    """What one completion request asks for, checked; exactly one of messages and prompt is set."""

    messages: list[dict] | None
    prompt: Prompt | None
    max_tokens: int | None  # None: until end of generation or the context is full
    sampling: SamplingParams
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    stop_at_eog: bool


def parse_json(raw: bytes) -> dict:
    """The body as a JSON object, else 400."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, absurd nesting
        raise invalid(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object", code="invalid_json")
    return body


def parse_chat(body: dict, defaults: SamplingParams) -> GenerationRequest:
    if "messages" not in body:
        raise missing("messages")
    _refuse_tools(body)
    return _common(body, defaults, messages=_messages(body["messages"]), prompt=None)


def parse_completion(body: dict, defaults: SamplingParams) -> GenerationRequest:
    if "prompt" not in body:
        raise missing("prompt")
    if _get(body, "echo", bool, "a boolean", False):
        raise unsupported("echo", "echo is not supported")
    if _get(body, "suffix", str, "a string", None):
        raise unsupported("suffix", "suffix (fill-in-the-middle) is not supported")
    if _get(body, "best_of", int, "an integer", 1) != 1:
        raise unsupported("best_of", "best_of other than 1 is not supported")
    return _common(body, defaults, messages=None, prompt=_prompt(body["prompt"]))


# -- the fields both endpoints share ---------------------------------------------------------------


def _common(body: dict, defaults: SamplingParams, *, messages, prompt) -> GenerationRequest:
    _get(body, "model", str, "a string", None)  # any name: the server serves its one model
    if _get(body, "n", int, "an integer", 1) != 1:
        raise unsupported("n", "n other than 1 is not supported: send one request per completion")
    if body.get("logprobs") not in (None, False) or body.get("top_logprobs") not in (None, 0):
        raise unsupported("logprobs", "logprobs are not supported")
    if _get(body, "logit_bias", dict, "an object", None):
        raise unsupported("logit_bias", "logit_bias is not supported")
    _refuse_penalty(body, "presence_penalty")
    _refuse_penalty(body, "frequency_penalty")
    _check_response_format(body)
    stream = _get(body, "stream", bool, "a boolean", False)
    options = _get(body, "stream_options", dict, "an object", None) or {}
    include_usage = _get(options, "include_usage", bool, "a boolean", False, name="stream_options.include_usage")
    return GenerationRequest(
        messages=messages,
        prompt=prompt,
        max_tokens=_max_tokens(body),
        sampling=_sampling(body, defaults),
        stop=_stop(body.get("stop")),
        stream=stream,
        include_usage=include_usage,
        stop_at_eog=not _get(body, "ignore_eos", bool, "a boolean", False),
    )


def _max_tokens(body: dict) -> int | None:
    # max_completion_tokens replaces the deprecated max_tokens; n_predict is llama-server's name.
    for name in ("max_completion_tokens", "max_tokens", "n_predict"):
        value = _get(body, name, int, "an integer", None)
        if value is not None:
            if name == "n_predict" and value == -1:
                return None
            if value < 0:
                raise invalid(f"{name} must be >= 0, not {value}", param=name)
            return value
    return None


def _sampling(body: dict, defaults: SamplingParams) -> SamplingParams:
    """The server's defaults with the request's values, set one by one so an error names its field."""
    params = defaults
    for name, (field, expected) in _SAMPLING_FIELDS.items():
        value = body.get(name)
        if value is None:
            continue
        if not is_plain_number(value) or (expected == "an integer" and not isinstance(value, int)):
            raise wrong_type(name, expected, value)
        if name == "seed" and value == -1:  # llama-server's "random seed"
            value = None
        try:
            change: dict[str, Any] = {field: value}
            params = dataclasses.replace(params, **change)
        except SamplingError as exc:
            raise invalid(str(exc), param=name) from None
    return params


def _stop(value) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise wrong_type("stop", "a string or an array of strings", value)
    return tuple(s for s in stops if s)


def _refuse_penalty(body: dict, name: str) -> None:
    # The sampler chain pykvd builds has llama.cpp's repeat penalty only; 0 (OpenAI's default) is no penalty.
    value = body.get(name)
    if value is None:
        return
    if not is_plain_number(value):
        raise wrong_type(name, "a number", value)
    if value != 0:
        raise unsupported(name, f"{name} is not supported (only 0): use repeat_penalty, llama.cpp's penalty")


def _refuse_tools(body: dict) -> None:
    for name in ("tools", "functions"):
        if body.get(name):
            raise unsupported(name, f"{name} (function calling) are not supported")
    choice = body.get("tool_choice", body.get("function_call"))
    if choice not in (None, "none"):
        raise unsupported("tool_choice", "tool_choice is not supported: tools are not")


def _check_response_format(body: dict) -> None:
    fmt = _get(body, "response_format", dict, "an object", None)
    if fmt is not None and fmt.get("type", "text") != "text":
        raise unsupported("response_format", f"response_format {fmt.get('type')!r} is not supported (only 'text')")


# -- messages and prompts ----------------------------------------------------------------------------


def _messages(value) -> list[dict]:
    if not isinstance(value, list):
        raise wrong_type("messages", "an array of messages", value)
    if not value:
        raise invalid("messages must not be empty", param="messages")
    return [_message(m, f"messages[{i}]") for i, m in enumerate(value)]


def _message(message, where: str) -> dict:
    if not isinstance(message, dict):
        raise wrong_type(where, "an object", message)
    if "role" not in message:
        raise missing(f"{where}.role")
    role = message["role"]
    if not isinstance(role, str):
        raise wrong_type(f"{where}.role", "a string", role)
    if role in ("tool", "function") or message.get("tool_calls"):
        raise unsupported(f"{where}.role", "tool messages and tool calls are not supported: tools are not")
    if role not in ROLES:
        raise invalid(f"{where}.role must be one of {', '.join(ROLES)}, not {role!r}", param=f"{where}.role")
    if "content" not in message:
        raise missing(f"{where}.content")
    return {"role": ROLES[role], "content": _content(message["content"], f"{where}.content")}


def _content(content, where: str) -> str:
    """A message's text: a string, or an array of text parts (joined by newlines)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise wrong_type(where, "a string or an array of text parts", content)
    texts = []
    for i, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise unsupported(f"{where}[{i}]", "only text content parts ({'type': 'text', 'text': ...}) are supported")
        texts.append(part["text"])
    return "\n".join(texts)


def _prompt(value) -> Prompt:
    """A completion prompt: a string or token ids, or an array holding one of them (one prompt only)."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
        value = value[0]
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return value
    if isinstance(value, list) and value and all(isinstance(p, (str, list)) for p in value):
        raise unsupported("prompt", "more than one prompt per request is not supported")
    raise wrong_type("prompt", "a string or an array of token ids", value)


# -- field access ----------------------------------------------------------------------------------------


def _get(body: dict, key: str, kind: type, expected: str, default, *, name: str | None = None):
    """body[key] if it has type kind (null or absent: default), else 400 naming the field."""
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise wrong_type(name or key, expected, value)
    return value


__all__ = ["APIError", "GenerationRequest", "parse_chat", "parse_completion", "parse_json"]
