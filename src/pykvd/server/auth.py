"""--api-key: every endpoint but /health answers 401 to a request without the key.

An ASGI middleware rather than a check in each route, so no route can forget it. The key is accepted
as `Authorization: Bearer KEY` (what the openai client sends) or `X-Api-Key: KEY`, as llama-server does.
"""

from __future__ import annotations

import hmac

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import unauthorized

OPEN_PATHS = frozenset({"/health", "/v1/health"})  # for readiness probes, as llama-server leaves them open


class RequireApiKey:
    def __init__(self, app: ASGIApp, key: str):
        self.app = app
        self._key = key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS and not self._authorized(scope):
            error = unauthorized()
            response = JSONResponse(error.body(), status_code=error.status, headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        headers = dict(scope.get("headers") or ())
        given = headers.get(b"x-api-key")
        bearer = headers.get(b"authorization", b"")
        scheme, _, token = bearer.partition(b" ")
        if scheme.lower() == b"bearer":
            given = token.strip()
        # A constant-time comparison: the time taken says nothing about how much of the key was right.
        return given is not None and hmac.compare_digest(given, self._key)
