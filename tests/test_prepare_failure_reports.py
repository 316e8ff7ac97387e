"""A slot whose claim cannot even be prepared (its entry's schedule raises while the tick works
out its due slots) is reported like any slot that fails before its claim: ``entry_failed``
and skipped with reason ``error`` (promise 1: every slot is published or reported skipped with
its reason); the entry stays scheduled and the other entries keep firing."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from replica_helpers import START, make_scheduler

from celery_fork_scheduler import scheduler as scheduler_module
from celery_fork_scheduler.testing import FakeClock


def test_a_slot_whose_due_slots_cannot_be_worked_out_is_reported_skipped_error(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, skipped: list[tuple[str, datetime, str]]
) -> None:
    """Noticed in round 36's review, fixed: `_entry_broke` signalled `entry_failed` but no skip,
    so the slot was neither published nor reported skipped."""
    real = scheduler_module.slots_due
    broken: list[datetime] = []

    def slots_due(entry: Any, after: datetime, until: datetime, **kwargs: Any) -> list[datetime]:
        if entry.name == "broken" and not broken:
            broken.append(after)
            raise RuntimeError("the schedule broke")
        return real(entry, after, until, **kwargs)

    monkeypatch.setattr(scheduler_module, "slots_due", slots_due)
    schedule = {name: {"task": "t", "schedule": 1.0} for name in ("broken", "fine")}
    clock = FakeClock(START)
    scheduler = make_scheduler(redis_url, clock, schedule)
    try:
        for _ in range(16):
            scheduler.tick()
            clock.advance(0.25)
        sent = [(o.entry, o.slot) for o in scheduler.publisher.occurrences]  # type: ignore[attr-defined]
    finally:
        scheduler.close()
    assert broken, "the injected failure never happened"
    errors = [slot for name, slot, reason in skipped if name == "broken" and reason == "error"]
    assert len(errors) == 1, f"skips of 'broken': {[s for s in skipped if s[0] == 'broken']}"
    assert ("broken", errors[0]) not in sent
    assert sum(name == "broken" for name, _ in sent) >= 2, "the entry stopped firing"
    assert sum(name == "fine" for name, _ in sent) >= 3
