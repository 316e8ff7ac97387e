"""Helpers of the runtime-edit adversary rounds (39-41): instants from 10:00:00, entry names of a
chosen owner, replicas ticked in turn on the fake clock, what they sent (the skips signalled:
the ``skipped`` fixture of conftest.py)."""

from __future__ import annotations

from datetime import datetime, timedelta

from replica_helpers import START

from celery_fork_scheduler import Scheduler
from celery_fork_scheduler.ownership import owner_of
from celery_fork_scheduler.testing import FakeClock

START_AT = datetime.fromisoformat(START).replace(microsecond=0)  # 10:00:00
IDS = ("replica-a", "replica-b")


def at(seconds: float) -> datetime:
    """10:00:00 plus ``seconds``."""
    return START_AT + timedelta(seconds=seconds)


def owned_by(owner: str, prefix: str, ids: tuple[str, ...] = IDS) -> str:
    """An entry name that rendezvous hashing gives to ``owner`` among ``ids``."""
    return next(f"{prefix}-{i}" for i in range(10_000) if owner_of(f"{prefix}-{i}", ids) == owner)


def tick_until(
    replicas: list[Scheduler], clock: FakeClock, until: datetime, step: float = 0.05
) -> None:
    """Tick every replica (in turn) every ``step`` s of the fake clock until ``until``."""
    while clock() < until:
        for replica in replicas:
            replica.tick()
        clock.advance(step)


def slots_of(name: str, *replicas: Scheduler) -> list[datetime]:
    """The slots of entry ``name`` the replicas sent, in order."""
    return sorted(
        o.slot
        for r in replicas
        for o in r.publisher.occurrences  # type: ignore[attr-defined]
        if o.entry == name
    )


def reasons(skips: list[tuple[str, datetime, str]], name: str, slot: datetime) -> list[str]:
    """The skip reasons signalled for one slot."""
    return [reason for n, s, reason in skips if n == name and s == slot]


def times(slots: list[datetime]) -> list[str]:
    """The slots as wall times (for messages)."""
    return [s.time().isoformat() for s in slots]
