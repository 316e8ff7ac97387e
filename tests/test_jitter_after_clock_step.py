"""A jittered slot asked too early (this host's clock stepped ahead of Redis's) is asked again
at its publish instant on Redis's clock, not at the slot.

Found by the simulator (seed 8393): the claim answered ``early`` and the replica asked again
when the slot was due on Redis's clock, without its jitter offset: the slot was published
before slot + offset ("never published before its jittered instant", docs/schedules.md).

Real Redis on its own clock (``virtual_time_redis``); the replica's clock is another fake
clock that steps ahead of it.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

import restart_helpers
from hand_driven_helpers import RecordingBeat as Beat
from restart_helpers import beats_fixture  # noqa: F401 - the fixture beats
from virtual_time_redis import virtual_redis

from celery_fork_scheduler.testing import FakeClock, RecordingPublisher
from celery_fork_scheduler.testing.recording import Occurrence

TASK = "jitter_step.job"
BASE = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
make_app = partial(restart_helpers.make_app, "jitter_step", TASK)


class TimedPublisher(RecordingPublisher):
    """Records, with each publish, Redis's clock at that instant."""

    def __init__(self, redis_clock: FakeClock) -> None:
        super().__init__()
        self.redis_clock = redis_clock
        self.at: list[tuple[Occurrence, datetime]] = []

    def publish(self, occurrence: Occurrence) -> None:
        super().publish(occurrence)
        self.at.append((occurrence, self.redis_clock()))


def test_a_jittered_slot_asked_early_waits_for_its_offset_on_redis_clock(
    beats: list[Any], tmp_path: Path
) -> None:
    with virtual_redis(tmp_path, BASE - timedelta(seconds=30)) as server:
        redis_clock = server.clock
        redis_clock.set(BASE)
        host = FakeClock(BASE)
        publisher = TimedPublisher(redis_clock)
        schedule = {"e": {"task": TASK, "schedule": timedelta(seconds=10), "jitter": 4}}
        beat = Beat(make_app(server.url, schedule), host, "replica-a", publisher)
        beats.append(beat)
        beat.scheduler.setup_schedule()
        entry = beat.scheduler.entries["e"]
        for step in range(200):  # 50 s, 0.25 s a tick
            if step == 100:
                # This host's clock steps 3 s ahead of Redis's: the slots after it whose
                # offset is under 2.5 s are asked early (10:00:30, :40, :50 here).
                host.advance(3)
            beat.scheduler.tick()
            host.advance(0.25)
            redis_clock.advance(0.25)

    early = [
        (o.slot.time().isoformat(), (entry.publish_at(o.slot) - at).total_seconds())
        for o, at in publisher.at
        if at < entry.publish_at(o.slot)
    ]
    assert publisher.at, "nothing was published"
    assert early == [], f"published before slot + offset on Redis's clock (slot, s early): {early}"
