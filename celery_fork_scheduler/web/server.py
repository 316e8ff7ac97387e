"""Serving the dashboard with waitress (a pure-Python, production-grade WSGI server)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from waitress.server import create_server

from .app import create_app
from .security import WebConfig

__all__ = ["serve"]

#: Threads answering requests (each page is a few Redis round trips).
THREADS = 4


def serve(
    celery_app: Any, config: WebConfig, port: int, *, announce: Callable[[str], None] = print
) -> None:
    """Serve the dashboard of ``celery_app`` on ``config.host``:``port`` until interrupted;
    ``announce`` gets the line saying where (port 0: a free port, named in that line)."""
    server = create_server(
        create_app(celery_app, config),
        host=config.host,
        port=port,
        threads=THREADS,
        ident="fork-scheduler",
        clear_untrusted_proxy_headers=True,
    )
    host = config.host if ":" not in config.host else f"[{config.host}]"
    port_number = getattr(server, "effective_port", port)
    announce(f"serving the schedule dashboard on http://{host}:{port_number}/")
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
