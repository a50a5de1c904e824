"""The Starlette application: routes (with llama-server's unprefixed aliases), the API key, and errors
in OpenAI's JSON shape for everything, 404 and 405 included."""

from __future__ import annotations

import contextlib
import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from . import routes
from .auth import RequireApiKey
from .engine import Engine
from .errors import INVALID_REQUEST, APIError, server_error

log = logging.getLogger("pykvd.server")


def create_app(engine: Engine) -> Starlette:
    api_key = engine.config.api_key
    app = Starlette(
        routes=_routes(),
        middleware=[Middleware(RequireApiKey, key=api_key)] if api_key else [],
        exception_handlers={APIError: _api_error, HTTPException: _http_error, Exception: _unexpected},
        lifespan=_lifespan,
    )
    app.state.engine = engine
    return app


def _routes() -> list[Route]:
    table = [
        ("/health", routes.health, "GET"),
        ("/v1/health", routes.health, "GET"),
        ("/v1/models", routes.models, "GET"),
        ("/models", routes.models, "GET"),
        ("/v1/chat/completions", routes.chat_completions, "POST"),
        ("/chat/completions", routes.chat_completions, "POST"),
        ("/v1/completions", routes.completions, "POST"),
        ("/completions", routes.completions, "POST"),
        ("/slots", routes.slots, "GET"),
    ]
    return [Route(path, endpoint, methods=[method]) for path, endpoint, method in table]


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette):
    yield
    # Generations still running when the server stops end at their next token.
    app.state.engine.cancel_all()


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    kind = "not_found_error" if exc.status_code == 404 else INVALID_REQUEST
    message = f"{request.method} {request.url.path}: {exc.detail}"
    error = APIError(exc.status_code, message, type=kind, code=str(exc.status_code))
    return JSONResponse(error.body(), status_code=exc.status_code, headers=exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected error serving %s %s", request.method, request.url.path, exc_info=exc)
    error = server_error(f"{type(exc).__name__}: {exc}")
    return JSONResponse(error.body(), status_code=error.status)
