"""``celery -A proj schedule ...``: see and steer the schedule from a terminal.

A thin click layer over :class:`~celery_fork_scheduler.Manager`, registered through the
``celery.commands`` entry-point group. Every command takes ``--json``; tables use colour only
on a terminal (and never with ``celery --no-color``).

Exit codes: ``0`` done; ``1`` the operation failed (no such entry, stale version, aborted,
a stored record that cannot be read, ``validate`` found problems); ``2`` bad input (a schedule,
a definition, a usage mistake); ``3`` Redis is not configured or cannot be reached (or, for
``trigger`` and ``backfill``, the broker). Errors are one line on stderr.
"""

from __future__ import annotations

import click

from . import backfill, edit, inspection, validate, web
from .session import ScheduleGroup

__all__ = ["schedule"]


@click.group(cls=ScheduleGroup)
def schedule() -> None:
    """See and steer the fork scheduler's schedule (every beat replica, through Redis)."""


for command in (
    inspection.list_,
    inspection.show,
    inspection.next_,
    edit.add,
    edit.remove,
    edit.pause,
    edit.resume,
    edit.trigger,
    backfill.backfill,
    inspection.history,
    inspection.replicas,
    validate.validate,
    web.web,
):
    schedule.add_command(command)
