"""A real replica killed between claiming and publishing: another publishes the slot once."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest
import redis

from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.testing import CeleryProcess, wait_until

from .conftest import dump_logs
from .harness import broker_fires, write_project

pytestmark = pytest.mark.e2e

PROJECT = """
import signal

from celery_fork_scheduler.scheduler import Scheduler

app.conf.fork_scheduler_claim_lease = 3
app.conf.beat_schedule = {
    f"entry-{i}": {"task": "record", "schedule": every(2).seconds} for i in range(10)
}


class DieAfterClaiming(Scheduler):
    \"\"\"Claims its first due slots, then dies (SIGKILL) before fencing any of them (on the
    fence path, or in the one-step publish of a broker sharing the claims' Redis). Its claims
    do not send the slots themselves (a claim that sends leaves nothing to take over).\"\"\"

    def _start_claim(self, works):
        self.pipeline.sends_for = lambda due: None
        return super()._start_claim(works)

    def _run_chunk(self, chunk, now, meanwhile):
        die = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
        self.backend.begin_publish = self.backend.publish_once = die
        return super()._run_chunk(chunk, now, meanwhile)
"""


def test_a_slot_claimed_by_a_killed_replica_is_published_once_by_another(
    redis_url: str, workdir: Path, processes: list[CeleryProcess]
) -> None:
    module = write_project(workdir, PROJECT)
    env = {"TEST_BROKER_URL": redis_url}
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    doomed = CeleryProcess.beat(
        module,
        cwd=workdir,
        workdir=workdir,
        name="doomed",
        env=env,
        scheduler=f"{module}:DieAfterClaiming",
    )
    processes.append(doomed)
    doomed.start()
    wait_until(lambda: not doomed.alive(), timeout=90, what="the doomed replica to claim and die")
    claimed = {f"entry-{i}": client.hgetall(f"scheduler:{{entry-{i}}}:state") for i in range(10)}
    orphaned = {name: state for name, state in claimed.items() if state.get("state") == "claimed"}
    assert orphaned, f"the doomed replica claimed nothing\n{dump_logs(processes)}"
    assert client.llen("celery") == 0

    survivors = [
        CeleryProcess.beat(module, cwd=workdir, workdir=workdir, name=f"survivor-{i}", env=env)
        for i in range(2)
    ]
    processes.extend(survivors)
    for survivor in survivors:
        survivor.start()

    def orphans_published() -> bool:
        fires = broker_fires(client)
        return all(fires.counts[name][_iso(state["hwm"])] >= 1 for name, state in orphaned.items())

    wait_until(orphans_published, timeout=90, what="a takeover\n" + dump_logs(processes))
    time.sleep(3)  # a little longer, so that a duplicate would have time to show
    for survivor in survivors:
        survivor.stop()
    fires = broker_fires(client)
    assert fires.duplicates() == 0, dump_logs(processes)
    for name, state in orphaned.items():
        slot = _iso(state["hwm"])
        assert fires.counts[name][slot] == 1
        assert fires.task_ids[(name, slot)] == {state["task_id"]}
        assert state["task_id"] == task_id_for(name, datetime.fromisoformat(slot))
    assert any("taken over" in survivor.log() for survivor in survivors)


def _iso(microseconds: str) -> str:
    from celery_fork_scheduler.backends.base import from_epoch_us

    return from_epoch_us(int(microseconds)).isoformat()
