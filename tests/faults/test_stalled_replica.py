"""Scenario 1b (found by the soak): a replica that stalls (SIGSTOP, swap, a long GC, a hung
broker) for longer than the claim lease, at the three points of a tick where it matters.

- ``claim_reply``: Redis ran the claims it won; it has not read the replies yet. The other
  replica takes the claims over after the lease and publishes them; the fence then refuses
  them to the stalled replica, which publishes none of them.
- ``before_send``: after the fence, before the messages leave. Nobody takes fenced claims
  over; the stalled replica sends them when it wakes up: late, once.
- ``after_send``: after the messages left, before they are recorded as sent. The other
  replica must not take them over and send them again.

Each stall is made deterministic by a scheduler subclass that sleeps once at its point (what a
SIGSTOP landing there does). Before the fence existed, each gave one duplicate per stalled
slot (500 and 300 in 3-minute soaks).
"""

from __future__ import annotations

import time

import pytest

from celery_fork_scheduler.testing import wait_until

from .conftest import MARGIN, every_entries, every_second, now, project, stop_all

pytestmark = pytest.mark.e2e

ENTRIES = 10
#: A short claim lease keeps the scenario short; the stall outlasts it, so that the other
#: replica would take the claims over.
LEASE = 3
STALL = LEASE + 2
SETTINGS = f"app.conf.fork_scheduler_claim_lease = {LEASE}\n"
STALLING = f'''
import time as _time

from celery_fork_scheduler.pipeline import PublishPipeline
from celery_fork_scheduler.scheduler import Scheduler


def _stall(point):
    print(f"STALLING {{point}}", flush=True)
    _time.sleep({STALL})


class Stalling(Scheduler):
    """Stalls {STALL} s once, at STALL_POINT, in the first batch it wins."""

    stalled = False

    def _start_claim(self, works):
        backend = self.backend
        if STALL_POINT == "claim_reply" and not Stalling.stalled and "claim" not in vars(backend):
            real = backend.claim

            def claim(claims):
                results = real(claims)
                if any(r.outcome.value == "won" for r in results):
                    Stalling.stalled = True
                    backend.claim = real
                    _stall(STALL_POINT)
                return results

            backend.claim = claim
        return super()._start_claim(works)



class StallingPipeline(PublishPipeline):
    def publish(self, batch, now):
        stall = bool(batch) and not Stalling.stalled
        if stall and STALL_POINT == "before_send":
            Stalling.stalled = True
            _stall(STALL_POINT)
        sent = super().publish(batch, now)
        if stall and STALL_POINT == "after_send":
            Stalling.stalled = True
            _stall(STALL_POINT)
        return sent


Stalling.pipeline_class = StallingPipeline
'''


@pytest.mark.parametrize("point", ["claim_reply", "before_send", "after_send"])
def test_a_stalled_replica_publishes_each_slot_once(point: str, scenario) -> None:
    source = (
        project(every_entries(ENTRIES), settings=SETTINGS)
        + STALLING
        + f"\nSTALL_POINT = {point!r}\n"
    )
    module = scenario.write(source)
    start = now()
    # The other replica runs first: it asks about the same slots, gets "pending" for those the
    # staller won, and would take them over when the lease runs out.
    other = scenario.start_beat(module, "other")
    stalling = scenario.start_beat(module, "stalling", scheduler=f"{module}:Stalling")
    wait_until(
        lambda: "STALLING" in stalling.log(),
        timeout=90,  # (a loaded host: the other replica may win the first slots alone)
        what="the staller to win a batch\n" + scenario.logs(),
    )
    time.sleep(STALL + 3)
    end = now()
    alive = stop_all([stalling, other])
    expected = every_second(ENTRIES, start + MARGIN * 3, end - MARGIN)
    fires, result = scenario.judge(
        f"1b replica stalled ({point})",
        expected,
        note=f"stall {STALL}s > lease {LEASE}s, end {end:%T}",
    )
    assert alive, scenario.logs()
    scenario.assert_clean(fires, result, expected)
    if point == "claim_reply":
        assert "taken over" in other.log(), scenario.logs()
