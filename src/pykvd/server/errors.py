"""Errors as the OpenAI API reports them: an HTTP status and {"error": {"message", "type", "param", "code"}}.

Everything a request can do wrong becomes an APIError before or while it is served, so a bad
request gets a 4xx with this body and never reaches the server's 500 path.
"""

from __future__ import annotations

from ..errors import ContextOverflowError, PromptError, PykvdError, SamplingError, SessionBusyError

INVALID_REQUEST = "invalid_request_error"


class APIError(Exception):
    """A request that cannot be served, with the status and the error object to answer it with."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(message: str, *, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, type=INVALID_REQUEST, code=code, param=param)


def wrong_type(param: str, expected: str, value: object) -> APIError:
    return invalid(f"{param} must be {expected}, not {_json_type(value)}", param=param, code="invalid_type")


def missing(param: str) -> APIError:
    return invalid(f"{param} is required", param=param, code="missing_required_parameter")


def unsupported(param: str, message: str) -> APIError:
    return invalid(message, param=param, code="unsupported_parameter")


def unauthorized() -> APIError:
    return APIError(
        401,
        "invalid or missing API key: send it as 'Authorization: Bearer KEY'",
        type="authentication_error",
        code="invalid_api_key",
    )


def queue_full(n_slots: int, n_waiting: int) -> APIError:
    return APIError(
        503,
        f"the server is busy: all {n_slots} slots are in use and {n_waiting} requests are already waiting",
        type="unavailable_error",
        code="server_busy",
        headers={"Retry-After": "1"},  # the openai client (and others) wait this long before retrying
    )


def context_exceeded(n_prompt: int, limit: int) -> APIError:
    return invalid(
        f"the prompt has {n_prompt} tokens, more than the {limit} a slot's context holds",
        param="messages",
        code="context_length_exceeded",
    )


def from_pykvd(exc: PykvdError) -> APIError:
    """The API error for a pykvd error raised while serving: bad input is the client's (400), the rest ours."""
    if isinstance(exc, ContextOverflowError):
        return invalid(str(exc), code="context_length_exceeded")
    if isinstance(exc, SamplingError):
        return invalid(str(exc))
    if isinstance(exc, PromptError):
        return invalid(str(exc), code="invalid_prompt")
    if isinstance(exc, SessionBusyError):  # a slot is only ever handed to one request: a bug if seen
        return APIError(503, str(exc), type="unavailable_error", code="server_busy")
    return server_error(str(exc))


def server_error(message: str) -> APIError:
    return APIError(500, message or "internal error", type="server_error", code="internal_error")


def _json_type(value: object) -> str:
    """The JSON name of a decoded value's type, as a client wrote it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
