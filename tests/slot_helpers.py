"""Instants written as UTC text, for the schedule tests that check slots worked out by hand."""

from __future__ import annotations

from datetime import datetime

from celery_fork_scheduler.schedules import SlotSchedule


def utc(text: str) -> datetime:
    """``2026-03-29T01:00:00Z`` as an aware datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def first_slots(schedule: SlotSchedule, after: str, count: int) -> list[str]:
    """The first ``count`` slots after ``after``, as UTC text to the second."""
    found: list[str] = []
    moment = utc(after)
    for _ in range(count):
        following = schedule.next_slot(moment)
        assert following is not None
        found.append(following.strftime("%Y-%m-%dT%H:%M:%SZ"))
        moment = following
    return found
