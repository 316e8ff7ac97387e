"""The ``web`` command: serve the schedule dashboard (the ``web`` extra)."""

from __future__ import annotations

import click
from celery.bin.base import CeleryCommand

from ..config import read_settings
from .session import BadInputError, session_for

#: The one line printed when the extra is not installed.
MISSING_EXTRA = (
    "the dashboard needs its extra: pip install 'celery-fork-scheduler[web]' (missing: {name})"
)


@click.command("web", cls=CeleryCommand)
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to bind.")
@click.option(
    "--port", default=8555, show_default=True, type=click.IntRange(0, 65_535), help="TCP port."
)
@click.option(
    "--token",
    envvar="FORK_SCHEDULER_WEB_TOKEN",
    help="The token every write needs (default: the fork_scheduler_web_token setting, or the "
    "FORK_SCHEDULER_WEB_TOKEN variable). Without one the dashboard is read-only.",
)
@click.option("--read-only", is_flag=True, help="Hide and refuse every write.")
@click.pass_context
def web(ctx: click.Context, host: str, port: int, token: str | None, read_only: bool) -> None:
    """Serve the schedule dashboard: entries, runs, replicas, skips, and (with the token)
    pause, resume, trigger, add and edit. Binds to this host only unless --host says."""
    try:
        from ..web import WebConfig, serve
        from ..web.security import is_loopback
    except ImportError as exc:
        raise BadInputError(MISSING_EXTRA.format(name=exc.name or exc)) from None
    session = session_for(ctx, as_json=False)
    token = token or read_settings(session.app.conf).web_token
    if token is not None and len(token) < 8:
        raise BadInputError("--token: use at least 8 characters (a long random one is best)")
    config = WebConfig(token=token, read_only=read_only, host=host)
    if not config.writable:
        session.warn(config.why_read_only.replace("this dashboard is ", "", 1))
    if not is_loopback(host):
        session.warn(
            f"serving on {host}: anyone who reaches it reads the schedule, and the token "
            "crosses the network in clear; put a TLS proxy in front"
        )
    serve(session.app, config, port, announce=lambda line: click.echo(line, err=True))
