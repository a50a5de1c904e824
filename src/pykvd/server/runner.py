"""Starting the server: bind the port, load the model and its slots, say so, serve until stopped.

The socket is bound first, so a port in use fails at once (and --port 0 picks a free one); it starts
listening only once the model is loaded, so a client polling /health sees a refused connection until
the server can answer, then 200.
"""

from __future__ import annotations

import socket
from typing import Callable

from ..memory import format_bytes
from .config import ServerConfig
from .engine import Engine

GRACEFUL_SHUTDOWN_S = 3  # for streams still open when asked to stop; then they are cancelled


def serve(config: ServerConfig, progress: Callable[[str], None]) -> None:
    """Run the server in this thread until it is stopped (SIGINT or SIGTERM)."""
    import uvicorn

    from .app import create_app

    sock = bind(config.host, config.port)
    try:
        engine = Engine.load(config, progress)
        try:
            report_slots(engine, progress)
            problem = engine.chat_template_problem()
            if problem:
                progress(f"warning: {problem}")
            host, port = sock.getsockname()[:2]
            server = uvicorn.Server(
                uvicorn.Config(
                    create_app(engine),
                    log_config=None,  # uvicorn's messages stay off stdout; pykvd reports on stderr
                    log_level="info" if config.verbose else "warning",
                    access_log=config.verbose,
                    timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                )
            )
            progress(f"listening on http://{_url_host(host)}:{port}")
            server.run(sockets=[sock])
        finally:
            engine.close()
    finally:
        sock.close()


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (not yet listening), or OSError with a one-line reason."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def report_slots(engine: Engine, progress: Callable[[str], None]) -> None:
    report = engine.slots_report()
    first = report["slots"][0]
    budget = report["kv_budget_tokens"]
    cells = f"a KV budget of {budget} tokens" if budget is not None else f"{first['n_ctx']} cells"
    checkpoint = f", checkpoint {first['checkpoint']}" if first["checkpoint"] else ""
    progress(
        f"{report['n_slots']} slot(s), policy {first['policy']}{checkpoint}, {cells} each: "
        f"KV {report['n_slots']} x {format_bytes(first['kv_bytes'])} = {format_bytes(report['kv_bytes_total'])} "
        f"in total; sequences up to {report['context_limit']} tokens; queue {report['queue_limit']}"
    )


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
