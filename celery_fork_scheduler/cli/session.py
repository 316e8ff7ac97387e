"""What every ``schedule`` command runs in: the app and its clock, one-line errors, exit codes."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

import click
import redis

from ..backends.factory import redis_url_for
from ..backends.redis import CLUSTER_REDIRECTS, CONNECTION_ERRORS
from ..backends.redis_connection import mask_url, scrub_secrets
from ..config import read_settings
from ..errors import BackendUnavailableError, ConfigError, ForkSchedulerError, ScheduleError
from ..manager import (
    BrokerUnavailableError,
    JobNotFoundError,
    Manager,
    RedisRequiredError,
    StoredRecordError,
)
from ..store import StaleVersionError
from .output import safe

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_NO_REDIS = 3

F = TypeVar("F", bound=Callable[..., Any])


class CommandError(click.ClickException):
    """A user-facing failure: one line on stderr (passwords masked), exit code 1."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str) -> None:
        super().__init__(safe(scrub_secrets(message)))


class BadInputError(CommandError):
    """A bad schedule, definition or usage: exit code 2."""

    exit_code = EXIT_BAD_INPUT


class RedisUnavailableError(CommandError):
    """Redis is not configured or cannot be reached (or the broker, to send a run): exit 3."""

    exit_code = EXIT_NO_REDIS


def redis_location(app: Any) -> str:
    try:
        url = redis_url_for(app, read_settings(app.conf))
    except ConfigError:
        url = None
    return f"Redis at {mask_url(url)}" if url else "Redis"


def _translate(app: Any, exc: Exception) -> CommandError | None:
    """The one-line error for a known failure, or ``None`` to let it propagate."""
    if isinstance(exc, (JobNotFoundError, StaleVersionError, StoredRecordError)):
        return CommandError(str(exc))
    if isinstance(exc, (ScheduleError, ConfigError)):
        return BadInputError(str(exc))
    if isinstance(exc, (RedisRequiredError, BrokerUnavailableError)):
        return RedisUnavailableError(str(exc))
    if isinstance(exc, ForkSchedulerError) and not isinstance(exc, BackendUnavailableError):
        return CommandError(str(exc))
    return redis_failure(app, exc)


#: Redis failures that mean it cannot be reached (or is no writable master just now): exit 3.
UNREACHABLE = (*CONNECTION_ERRORS, *CLUSTER_REDIRECTS, redis.ReadOnlyError)


def redis_failure(app: Any, exc: Exception) -> CommandError | None:
    """The one-line error of a Redis failure: exit 3 when Redis cannot be reached; exit 1 when
    it answered with an error (a key of the wrong type: one entry's data, not the server's
    reach); ``None`` for any other exception."""
    if isinstance(exc, (*UNREACHABLE, BackendUnavailableError)):
        return RedisUnavailableError(f"cannot reach {redis_location(app)}: {exc}")
    if isinstance(exc, redis.RedisError):
        reply = _SCRIPT_LOCATION.sub("", str(exc))
        return CommandError(f"{redis_location(app)} refused the command: {reply}")
    return None


#: Where in a Lua script an error reply was raised (Redis 7: `` script: <sha>, on
#: @user_script:12``; Redis 6.2: ``Error running script (call to f_<sha>): @user_script:12: ``):
#: the script's hash and line mean nothing to the user of a command.
_SCRIPT_LOCATION = re.compile(
    r" script: [0-9a-f]{40}, on @user_script:\d+"
    r"|Error running script \(call to f_[0-9a-f]{40}\): @user_script:\d+: "
)


def entry_redis_failure(app: Any, exc: Exception, name: str, after: str = "") -> CommandError:
    """:func:`redis_failure` of a command about entry ``name``: an error Redis answered is
    that entry's data, so the line names it; ``after`` ends the line (``"; nothing was sent"``)."""
    failure = redis_failure(app, exc)
    if failure is None:
        raise exc
    if type(failure) is CommandError:
        return CommandError(f"entry {name!r}: {failure.message}{after}")
    return RedisUnavailableError(f"{failure.message}{after}")


class _OnceHandler(logging.Handler):
    """Prints each distinct warning the package logs once, as a ``warning:`` line. Its errors
    are about stored records that the commands report themselves, one line each."""

    def __init__(self, no_color: bool) -> None:
        super().__init__(logging.WARNING)
        self.no_color = no_color
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno < logging.ERROR and message not in self.seen:
            self.seen.add(message)
            text = click.style(f"warning: {safe(scrub_secrets(message))}", fg="yellow")
            click.echo(text, err=True, color=False if self.no_color else None)


@contextlib.contextmanager
def _logs_as_warnings(ctx: click.Context) -> Iterator[None]:
    """While a command runs, the package's log records do not reach the logging set-up (which,
    unset, prints them on stderr): its warnings are ``warning:`` lines, once each, escaped,
    passwords masked; a bad stored record is the one line its command prints."""
    logger = logging.getLogger("celery_fork_scheduler")
    handler = _OnceHandler(bool(getattr(ctx.find_root().obj, "no_color", False)))
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


class ScheduleGroup(click.Group):
    """The ``schedule`` group: turns known failures and usage mistakes into one-line errors."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with _logs_as_warnings(ctx):
                return super().invoke(ctx)
        except CommandError:
            raise
        except click.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
            raise BadInputError(f"{exc.format_message()} (see '{command} --help')") from None
        except Exception as exc:
            error = _translate(_app(ctx), exc)
            if error is None:
                raise
            raise error from None


@dataclass(frozen=True, kw_only=True)
class Session:
    """What one command runs with: the app, the moment it started, how to print."""

    app: Any
    now: datetime
    no_color: bool
    as_json: bool

    def manager(self) -> Manager:
        return Manager(self.app, clock=lambda: self.now)

    def emit(self, data: Any, render: Callable[[], str]) -> None:
        """Print ``data`` as JSON with ``--json``, else the text ``render`` builds."""
        if self.as_json:
            click.echo(json.dumps(data, indent=2, default=str))
        else:
            click.echo(render(), color=False if self.no_color else None)

    def warn(self, message: str) -> None:
        click.echo(
            click.style(f"warning: {safe(scrub_secrets(message))}", fg="yellow"),
            err=True,
            color=False if self.no_color else None,
        )


def _app(ctx: click.Context) -> Any:
    obj = ctx.find_root().obj
    app = getattr(obj, "app", None)
    if app is None:
        from celery import current_app

        app = current_app
    return app


def session_for(ctx: click.Context, as_json: bool) -> Session:
    obj = ctx.find_root().obj
    return Session(
        app=_app(ctx),
        now=datetime.now(timezone.utc),
        no_color=bool(getattr(obj, "no_color", False)),
        as_json=as_json,
    )


def json_option(function: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(
        function
    )
