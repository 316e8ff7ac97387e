"""``buffer_all`` runs start in slot order, even when a slot is published late (simulator seed
5760).

Promise (docs/singleton.md, "a beat replica stalls between the fence and the publish"): the
stalled replica publishes its slot late, after later slots ran, and "when it starts it finds
the marker held by a later run and is not executed (``skipped:busy``), so the runs still
follow one another in slot order". Before the fix that held only while the later run was still
running: once it had ended, the late slot found the marker free, took it and ran after it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone

import pytest
import redis
from celery import Celery

from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.worker import Run, WorkerHooks

KEYS = Keys("scheduler:")
EARLIER = datetime(2026, 3, 2, 10, 1, tzinfo=timezone.utc).isoformat()
LATER = datetime(2026, 3, 2, 10, 2, tzinfo=timezone.utc).isoformat()


@pytest.fixture
def hooks(redis_url: str) -> Iterator[WorkerHooks]:
    app = Celery("order", set_as_current=False, broker="memory://")
    app.conf.update(fork_scheduler_redis_url=redis_url, fork_scheduler_singleton_lease=30)
    yield WorkerHooks(app)
    app.close()


def run_of(slot: str, overlap: str = "buffer_all", *, manual: bool = False) -> Run:
    task_id = f"sync-{slot}-{'manual' if manual else 'scheduled'}"
    return Run("sync", slot, task_id, 0.0, True, False, "w@h", manual=manual, overlap=overlap)


def test_a_slot_published_late_is_not_run_after_a_later_slot_ran(
    hooks: WorkerHooks, redis_client: redis.Redis
) -> None:
    later = run_of(LATER)
    assert hooks._take_markers(later) is None  # the later slot starts, then ends
    hooks._finish(later)
    assert redis_client.get(KEYS.running("sync")) is None

    assert hooks._take_markers(run_of(EARLIER)) == "busy"
    assert redis_client.get(KEYS.running("sync")) is None, "the refused run took the marker"


def test_runs_in_slot_order_and_manual_runs_start_as_before(
    hooks: WorkerHooks, redis_client: redis.Redis
) -> None:
    earlier = run_of(EARLIER)
    assert hooks._take_markers(earlier) is None
    hooks._finish(earlier)
    later = run_of(LATER)
    assert hooks._take_markers(later) is None
    hooks._finish(later)
    manual = run_of(EARLIER, manual=True)
    assert hooks._take_markers(manual) is None  # a trigger has no place in the slot order
    hooks._finish(manual)
    other = run_of(EARLIER, overlap="skip")
    assert hooks._take_markers(other) is None  # order is buffer_all's promise only
