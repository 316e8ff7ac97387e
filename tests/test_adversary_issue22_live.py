"""Adversarial tests for issue 22 (pause on failure, buffer_all / cancel_other /
terminate_other, backfill), each against a real Redis. Every test here fails on the code as
it stands, for the reason its docstring gives."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from celery import Celery

from celery_fork_scheduler import Manager
from celery_fork_scheduler.backends.base import Claim
from celery_fork_scheduler.backends.redis import RedisBackend
from celery_fork_scheduler.config import read_settings
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.keys import Keys

KEYS = Keys("scheduler:")
MINUTE = timedelta(minutes=1)


def _report(*args: Any, **kwargs: Any) -> None:
    """The task the entries name."""


@pytest.fixture
def bf_app(redis_url: str) -> Iterator[Celery]:
    app = Celery("adv22_backfill", set_as_current=False, broker=redis_url)
    app.conf.update(
        timezone="UTC",
        result_expires=None,
        fork_scheduler_redis_url=redis_url,
        beat_schedule={
            "queued": {"task": "tasks.report", "schedule": "* * * * *", "overlap": "buffer_all"}
        },
    )
    app.task(name="tasks.report")(_report)
    yield app
    app.close()


def _us(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000


def test_backfill_of_a_buffer_all_entry_with_runs_queued_reports_each_slot(
    bf_app: Celery, redis_url: str, redis_client: redis.Redis
) -> None:
    """docs/manager.md "## Backfill": each slot of the range is *reported per slot* (one
    BackfillSlot per slot, oldest first); a run held back by overlap is ``skipped:buffered``,
    the running one ``already_published``; "Redis remembers a slot as published when ... its
    task id holds the running marker or the held-back message". docs/singleton.md: buffer_all
    keeps its queue in ``P{<entry>}:buffered``, "the key buffer_one uses".

    Observed: BACKFILL_CLAIM does ``GET P{queued}:buffered``, which is a *list* under
    buffer_all: the whole backfill dies with ``WRONGTYPE`` (a traceback, no slot reported) as
    soon as one run is queued."""
    minute = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    slots = [minute - n * MINUTE for n in range(4, 0, -1)]
    backend = RedisBackend.from_url(redis_url, read_settings(bf_app.conf))
    try:
        for slot in slots[1:]:
            tid = task_id_for("queued", slot)
            message = json.dumps({"task_id": tid, "slot": slot.isoformat(), "task": "tasks.report"})
            [result] = backend.claim(
                [Claim("queued", slot, tid, overlap="buffer_all", held_message=message)]
            )
            if slot == slots[1]:
                assert result.outcome.value == "won"
                backend.mark_sent([Claim("queued", slot, tid, overlap="buffer_all")])
            else:
                assert result.outcome.value == "buffered"
    finally:
        backend.close()
    assert redis_client.type(KEYS.buffered("queued")) == b"list"
    assert redis_client.llen(KEYS.buffered("queued")) == 2

    results = Manager(bf_app).backfill("queued", slots[0], slots[-1], rate=1000)
    assert [r.slot for r in results] == slots
    outcomes = [r.outcome for r in results]
    assert outcomes[0] == "skipped:busy"  # the run of slots[1] holds the marker
    assert outcomes[1] == "already_published"
    assert outcomes[2:] == ["skipped:buffered", "skipped:buffered"]
