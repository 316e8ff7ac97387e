"""Scenario 1c (found by the soak): a replica that stalls in the middle of publishing a batch
(SIGSTOP, swap, a hung broker) for longer than the claim lease.

Two stall points, each made deterministic by a scheduler subclass that sleeps once:

- ``before_send``: after the fence, before the messages leave. Nobody may take the fenced
  claims over; the stalled replica sends them when it wakes up: late, once.
- ``after_send``: after the messages left, before they are recorded as sent. The other replica
  must not take them over and send them again.

Before the fence existed, both gave one duplicate per stalled slot (300 in a 3-minute soak).
"""

from __future__ import annotations

import time

import pytest

from celery_fork_scheduler.testing import wait_until

from .conftest import (
    CLAIM_LEASE,
    MARGIN,
    broker_fires,
    dump_logs,
    duplicated,
    every_entries,
    expected_every,
    now,
    project,
    start_beat,
    write_project,
)
from .report import build

pytestmark = pytest.mark.e2e

ENTRIES = 10
#: Longer than the claim lease, so that the other replica would take the claims over.
STALL = CLAIM_LEASE.total_seconds() + 2
STALLING = f'''
import time as _time

from celery_fork_scheduler.scheduler import Scheduler


class StallInPublish(Scheduler):
    """Stalls {STALL} s once inside the publish of a fenced batch, at STALL_POINT."""

    stalled = False

    def _publish(self, batch):
        stall = batch and not StallInPublish.stalled
        if stall and STALL_POINT == "before_send":
            StallInPublish.stalled = True
            print("STALLING before_send", flush=True)
            _time.sleep({STALL})
        sent = super()._publish(batch)
        if stall and STALL_POINT == "after_send":
            StallInPublish.stalled = True
            print("STALLING after_send", flush=True)
            _time.sleep({STALL})
        return sent
'''


@pytest.mark.parametrize("point", ["before_send", "after_send"])
def test_a_replica_stalled_inside_its_publish_publishes_each_slot_once(
    point: str, env, workdir, processes, broker, report
) -> None:
    source = project(every_entries(ENTRIES)) + STALLING + f"\nSTALL_POINT = {point!r}\n"
    module = write_project(workdir, source)
    began = time.monotonic()
    start = now()
    other = start_beat(module, workdir, env, processes, "other")
    stalling = start_beat(
        module, workdir, env, processes, "stalling", scheduler=f"{module}:StallInPublish"
    )
    wait_until(
        lambda: "STALLING" in stalling.log(),
        timeout=30,
        what="the staller to win and publish a batch\n" + dump_logs(processes),
    )
    time.sleep(STALL + 4)
    end = now()
    alive = stalling.alive() and other.alive()
    stalling.stop()
    other.stop()

    fires = broker_fires(broker)
    slots = expected_every(1, start + MARGIN * 3, end - MARGIN)
    expected = {f"entry-{i:02}": slots for i in range(ENTRIES)}
    result = build(
        f"1c replica stalled inside its publish ({point})",
        fires.counts,
        expected,
        seconds=time.monotonic() - began,
        note=f"stall {STALL:.0f}s > lease {CLAIM_LEASE.total_seconds():.0f}s, end {end:%T}",
    )
    report(result)
    assert alive, dump_logs(processes)
    assert fires.duplicates() == 0, f"{duplicated(fires)}\n{dump_logs(processes)}"
    assert result.missed_outside == 0, f"{fires.missed(expected)}\n{dump_logs(processes)}"
