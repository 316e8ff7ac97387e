"""``celery schedule backfill``: publish the past slots of an entry that were never published."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import click
import redis
from celery.bin.base import CeleryCommand

from ..backfill import DEFAULT_LIMIT, DEFAULT_RATE, MIN_RATE, BackfillSlot
from ..errors import BackendUnavailableError
from .output import plural
from .session import (
    BadInputError,
    CommandError,
    entry_redis_failure,
    json_option,
    session_for,
)


def _moment(ctx: click.Context, param: click.Parameter, value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadInputError(
            f"{param.opts[0]}: not an ISO-8601 time: {value!r} (e.g. 2026-11-27T14:00:00+00:00)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _rate(ctx: click.Context, param: click.Parameter, value: str) -> float:
    text = value[: -len("/s")] if value.endswith("/s") else value
    try:
        rate = float(text)
    except ValueError:
        rate = 0.0
    if not MIN_RATE <= rate < float("inf"):
        raise BadInputError(
            f"--rate: expected publishes per second from {MIN_RATE:.3g} (one a day), "
            f"e.g. 10/s: {value!r}"
        )
    return rate


@click.command("backfill", cls=CeleryCommand)
@click.argument("name")
@click.option("--from", "start", required=True, callback=_moment, help="First instant (ISO).")
@click.option("--to", "end", required=True, callback=_moment, help="Last instant (ISO).")
@click.option(
    "--overlap",
    type=click.Choice(["allow", "skip", "buffer_one"]),
    help="Overlap policy for the backfilled runs (default: the entry's).",
)
@click.option(
    "--rate", default=f"{DEFAULT_RATE:g}/s", show_default=True, callback=_rate, help="N/s."
)
@click.option(
    "--limit",
    default=DEFAULT_LIMIT,
    show_default=True,
    type=click.IntRange(1),
    help="Refuse a range holding more slots than this.",
)
@click.option("--dry-run", is_flag=True, help="Say what would be sent; send nothing.")
@click.option(
    "--force",
    is_flag=True,
    help=(
        "Also slots whose history may be lost (older than it remembers, or due in the hour "
        "before Redis last started), and a paused or disabled entry's slots."
    ),
)
@json_option
@click.pass_context
def backfill(
    ctx: click.Context,
    name: str,
    start: datetime,
    end: datetime,
    overlap: Any,
    rate: float,
    limit: int,
    dry_run: bool,
    force: bool,
    as_json: bool,
) -> None:
    """Publish each slot of NAME between --from and --to (inclusive, naive = UTC) that was
    never published: once across the cluster, oldest first, at most --rate per second.
    One line per slot: slot, outcome, task id."""
    session = session_for(ctx, as_json)
    if start > end:
        raise BadInputError(f"--from {start.isoformat()} is after --to {end.isoformat()}")
    try:
        results = session.manager().backfill(
            name,
            start,
            end,
            overlap=overlap,
            rate=rate,
            limit=limit,
            dry_run=dry_run,
            force=force,
        )
    except (redis.RedisError, BackendUnavailableError) as exc:
        raise entry_redis_failure(session.app, exc, name) from None
    session.emit(
        {"name": name, "dry_run": dry_run, "slots": [r.to_dict() for r in results]},
        lambda: _text(results),
    )
    failed = [r for r in results if r.outcome == "failed"]
    if failed:
        raise CommandError(f"publishing {failed[0].slot.isoformat()} failed: {failed[0].detail}")


def _text(results: list[BackfillSlot]) -> str:
    lines = [f"{r.slot.isoformat()}  {r.outcome:<22} {r.task_id}" for r in results]
    sent = sum(r.outcome == "sent" for r in results)
    lines.append(f"{plural(len(results), 'slot')}, {sent} sent")
    return "\n".join(lines)
