"""A runtime entry's last run, claimed by a replica that died before publishing it, is still
taken over after the entry finished and was deleted.

Found by the simulator (seed 8387): the claim of a ``max_runs`` entry's last slot counts the
run; its claimant died before its fence; the other replicas got ``pending`` and queued a
takeover for the lease's end; before that, a later slot answered ``finished``, the runtime
entry was deleted, and every replica dropped the takeover with the entry. Nobody published the
slot and nothing reported it. A slot due before a removal still fires (docs/guarantees.md):
the takeover goes on under the definition it was queued with.

Real Redis on the test's clock (``virtual_time_redis``): the claim lease runs out on it.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

import restart_helpers
from hand_driven_helpers import RecordingBeat as Beat
from restart_helpers import beats_fixture  # noqa: F401 - the fixture beats
from test_adversary_round53 import BrokerDownOnce, tick_until
from virtual_time_redis import virtual_redis

from celery_fork_scheduler import Manager

TASK = "finished_takeover.job"
BASE = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
make_app = partial(restart_helpers.make_app, "finished_takeover", TASK)


def t(seconds: float) -> datetime:
    return BASE + timedelta(seconds=seconds)


def test_the_last_runs_unsent_claim_is_taken_over_after_the_entry_finished(
    beats: list[Any], tmp_path: Path
) -> None:
    with virtual_redis(tmp_path, t(-30)) as server:
        clock = server.clock
        clock.set(t(0.3))
        conf = {"fork_scheduler_claim_lease": 8}
        manager = Manager(make_app(server.url, {}, **conf), clock=clock)
        manager.add("rt", TASK, "every 5 seconds", max_runs=1)
        down = BrokerDownOnce()
        a = Beat(make_app(server.url, {}, **conf), clock, "replica-a", down)
        b = Beat(make_app(server.url, {}, **conf), clock, "replica-b")
        beats.extend([a, b])
        for beat in (a, b):
            beat.scheduler.setup_schedule()
        tick_until(clock, [a, b], t(4.9), 0.25)
        down.down = True
        a.scheduler.tick()  # A wins 10:00:05 (the last run), cannot publish; then A dies
        b.scheduler.tick()  # B: pending, a takeover queued for the lease's end
        assert not a.publisher.occurrences and not b.publisher.occurrences
        tick_until(clock, [b], t(16), 0.25)  # 10:00:10 finished: rt is deleted; lease ends

    published = [o.slot for o in b.publisher.occurrences if o.entry == "rt"]
    assert published == [t(5)], f"the last run's slot published {published}"
