"""``celery -A proj schedule backfill`` as a real process; a real worker runs what it sent."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis

from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.testing import CeleryProcess, wait_until

from .conftest import dump_logs
from .harness import write_project
from .test_cli_e2e import cli

pytestmark = pytest.mark.e2e

SCHEDULE = """
app.conf.beat_schedule = {"minutely": {"task": "record", "schedule": "* * * * *"}}
"""


def test_a_backfill_from_the_cli_reaches_a_worker_once(
    redis_url: str, workdir: Path, processes: list[CeleryProcess]
) -> None:
    module = write_project(workdir, SCHEDULE)
    client = redis.Redis.from_url(redis_url)
    minute = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    slots = [minute - n * timedelta(minutes=1) for n in range(5, 0, -1)]
    # As a replica leaves Redis after an outage it did not catch up: decided up to the last
    # slot, only that one published.
    keys, last = Keys("scheduler:"), int(slots[-1].timestamp()) * 1_000_000
    client.hset(keys.state("minutely"), mapping={"hwm": last, "state": "sent"})
    sent_item = {"slot": last, "outcome": "sent", "at": last, "task_id": "t", "replica": "r"}
    client.lpush(keys.history("minutely"), json.dumps(sent_item))
    span = ["--from", slots[0].isoformat(), "--to", slots[-1].isoformat()]

    first = cli(module, workdir, redis_url, "backfill", "minutely", *span, "--rate", "50/s")
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert [line.split()[1] for line in lines[:5]] == ["sent"] * 4 + ["already_published"]
    assert lines[5] == "5 slots, 4 sent"

    again = cli(module, workdir, redis_url, "backfill", "minutely", *span, "--json")
    assert again.returncode == 0, again.stderr
    assert [s["outcome"] for s in json.loads(again.stdout)["slots"]] == ["already_published"] * 5

    worker = CeleryProcess.worker(
        module, cwd=workdir, workdir=workdir, env={"TEST_BROKER_URL": redis_url}
    )
    processes.append(worker)
    worker.start()

    def received() -> list[dict[str, str]]:
        return [json.loads(raw) for raw in client.lrange("test:received", 0, -1)]

    wait_until(lambda: len(received()) >= 4, timeout=60, what="4 runs\n" + dump_logs(processes))
    runs = received()
    assert sorted(run["task_id"] for run in runs) == sorted(
        task_id_for("minutely", slot) for slot in slots[:4]
    )
    assert sorted(run["slot"] for run in runs) == [slot.isoformat() for slot in slots[:4]]
