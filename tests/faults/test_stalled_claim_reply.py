"""Scenario 1b (found by the soak): a replica that stalls after Redis ran its claims and before
it read the replies (SIGSTOP, swap, GC) for longer than the claim lease.

The other replica takes the slots over after the lease and publishes them; the stalled one
then publishes them too. docs/guarantees.md promises the stalled-winner check: "If more than
half of fork_scheduler_claim_lease has passed [since the claim], it does not publish blind".
The stall is made deterministic by a scheduler subclass that sleeps once inside
``backend.claim``, after the claim pipeline returned (what a SIGSTOP landing there does).
"""

from __future__ import annotations

import time

import pytest

from celery_fork_scheduler.testing import wait_until

from .conftest import (
    CLAIM_LEASE,
    broker_fires,
    dump_logs,
    duplicated,
    every_entries,
    now,
    project,
    start_beat,
    write_project,
)
from .report import build

pytestmark = pytest.mark.e2e

ENTRIES = 10
#: Longer than the claim lease, so that the other replica takes the claims over.
STALL = CLAIM_LEASE.total_seconds() + 2
STALLING = f'''
import time as _time

from celery_fork_scheduler.scheduler import Scheduler


class StallInClaim(Scheduler):
    """Stalls {STALL} s once, between Redis running a batch of claims it won and reading them."""

    stalled = False

    def _run_chunk(self, chunk, now):
        backend = self.backend
        if not StallInClaim.stalled and "claim" not in vars(backend):
            real = backend.claim

            def claim(claims):
                results = real(claims)
                if any(r.outcome.value == "won" for r in results):
                    StallInClaim.stalled = True
                    backend.claim = real
                    print("STALLING after winning claims", flush=True)
                    _time.sleep({STALL})
                return results

            backend.claim = claim
        return super()._run_chunk(chunk, now)
'''


def test_a_replica_stalled_inside_the_claim_round_trip_publishes_nothing_twice(
    env, workdir, processes, broker, report
) -> None:
    module = write_project(workdir, project(every_entries(ENTRIES)) + STALLING)
    began = time.monotonic()
    # The other replica runs first: it asks about the same slots, gets "pending" for those the
    # staller won, and takes them over when the lease runs out.
    other = start_beat(module, workdir, env, processes, "other")
    stalling = start_beat(
        module, workdir, env, processes, "stalling", scheduler=f"{module}:StallInClaim"
    )
    wait_until(
        lambda: "STALLING" in stalling.log(),
        timeout=15,
        what="the staller to win a claim\n" + dump_logs(processes),
    )
    time.sleep(STALL + 4)
    end = now()
    alive = stalling.alive() and other.alive()
    stalling.stop()
    other.stop()

    fires = broker_fires(broker)
    counts = fires.counts
    expected = {name: [] for name in counts}  # counts duplicates only; misses: scenario 1
    result = build(
        "1b replica stalled inside the claim round trip",
        counts,
        expected,
        seconds=time.monotonic() - began,
        note=f"stall {STALL:.0f}s > lease {CLAIM_LEASE.total_seconds():.0f}s, end {end:%T}",
    )
    report(result)
    assert alive, dump_logs(processes)
    assert "taken over" in other.log(), dump_logs(processes)
    assert fires.duplicates() == 0, f"{duplicated(fires)}\n{dump_logs(processes)}"
