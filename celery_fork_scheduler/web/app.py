"""The Flask application of the dashboard: one :class:`~celery_fork_scheduler.Manager` for
the process, the pages, the JSON API, and one place that turns failures into answers."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

import redis
from flask import Flask, render_template, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException

from ..backends.redis_connection import scrub_secrets
from ..cli.output import safe
from ..errors import BackendUnavailableError, ConfigError, ForkSchedulerError, ScheduleError
from ..manager import (
    BrokerUnavailableError,
    JobNotFoundError,
    Manager,
    RedisRequiredError,
    StoredRecordError,
)
from ..store import StaleVersionError
from . import api, pages, security
from .context import Dashboard
from .security import WebConfig

__all__ = ["create_app", "failure"]

logger = logging.getLogger("celery_fork_scheduler.web")


def create_app(
    celery_app: Any, config: WebConfig | None = None, *, manager: Manager | None = None
) -> Flask:
    """The dashboard of ``celery_app`` (a WSGI application); ``config``: token, read-only,
    bound host (default: loopback, read-only as no token is given)."""
    config = config or WebConfig()
    app = Flask(__name__)
    app.json = CliJSON(app)
    app.extensions["fork_scheduler"] = Dashboard(
        manager or Manager(celery_app, clock=lambda: datetime.now(timezone.utc)), config
    )
    security.install(app, config)
    app.jinja_env.filters["shown"] = _shown
    app.jinja_env.globals["csrf_token"] = security.csrf_token
    app.register_blueprint(pages.blueprint)
    app.register_blueprint(api.blueprint, url_prefix="/api")
    app.register_error_handler(Exception, _failed)
    return app


def _shown(text: str) -> str:
    """Stored text as a page shows it: passwords in URLs masked, control characters escaped."""
    return safe(scrub_secrets(text))


class CliJSON(DefaultJSONProvider):
    """JSON as the CLI's ``--json`` writes it: a value JSON has no form for (a ``datetime``
    in a static entry's args) is its ``str()``, not Flask's HTTP date."""

    default = staticmethod(str)


def failure(exc: BaseException) -> tuple[int, str, str | None]:
    """The HTTP status, the message (passwords masked) and the field it is about of a
    failure; anything unknown is a 500 whose details stay in the server log."""
    status: int
    if isinstance(exc, HTTPException):
        status = exc.code or 500
        return status, str(exc.description or exc.name), None
    if isinstance(exc, JobNotFoundError):
        status = 404
    elif isinstance(exc, (StaleVersionError, StoredRecordError)):
        status = 409
    elif isinstance(exc, (ConfigError, ScheduleError, ValueError, TypeError)):
        status = 400
    elif isinstance(
        exc,
        (RedisRequiredError, BrokerUnavailableError, redis.RedisError, BackendUnavailableError),
    ):
        status = 503
    elif isinstance(exc, ForkSchedulerError):
        status = 400
    else:
        logger.error("fork scheduler web: %s %s failed", request.method, request.path, exc_info=exc)
        return 500, "internal error (the dashboard's log has the details)", None
    if isinstance(exc, (redis.RedisError, BackendUnavailableError)):
        message = f"cannot reach Redis: {exc}"
    else:
        message = str(exc)
    return status, safe(scrub_secrets(message)), getattr(exc, "field", None)


def _failed(exc: Exception) -> Any:
    status, message, field = failure(exc)
    if request.path.startswith("/api/"):
        body: dict[str, Any] = {"error": message}
        if field is not None:
            body["field"] = field
        return body, status
    return render_template("error.html", status=status, message=message), status
