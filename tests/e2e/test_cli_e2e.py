"""``python -m celery -A proj schedule ...`` as a real process, beside a running beat."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis

from celery_fork_scheduler.testing import CeleryProcess, wait_until

from .conftest import dump_logs
from .harness import broker_fires, write_project

pytestmark = pytest.mark.e2e

SCHEDULE = """
app.conf.beat_schedule = {
    "fast": {"task": "record", "schedule": every(1).seconds, "tags": ["demo"]},
    "steady": {"task": "record", "schedule": every(1).seconds},
}
"""

BAD_SCHEDULE = """
app.conf.beat_schedule = {
    "feb30": {"task": "record", "schedule": "0 0 30 2 *"},
    "ghost": {"task": "no.such.task", "schedule": "@daily"},
}
"""


def cli(module: str, workdir: Path, broker: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m celery -A <module> schedule <args>`` in ``workdir``."""
    env = {**os.environ, "TEST_BROKER_URL": broker, "PYTHONPATH": str(workdir)}
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", module, "schedule", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def latest_slot(client: redis.Redis, entry: str) -> datetime | None:
    slots = broker_fires(client).slots(entry)
    return max((datetime.fromisoformat(slot) for slot in slots), default=None)


def test_the_cli_steers_a_running_beat(
    redis_url: str, workdir: Path, processes: list[CeleryProcess]
) -> None:
    module = write_project(workdir, SCHEDULE)
    client = redis.Redis.from_url(redis_url)
    beat = CeleryProcess.beat(
        module, cwd=workdir, workdir=workdir, env={"TEST_BROKER_URL": redis_url}
    )
    processes.append(beat)
    beat.start()
    wait_until(
        lambda: latest_slot(client, "fast") is not None,
        timeout=60,
        what="the first publish\n" + dump_logs(processes),
    )

    listed = cli(module, workdir, redis_url, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    jobs = {job["name"]: job for job in json.loads(listed.stdout)}
    assert set(jobs) == {"fast", "steady"}
    assert jobs["fast"]["tags"] == ["demo"]
    assert jobs["fast"]["schedule"] == "every second"

    def live_replicas() -> list[dict[str, object]]:
        shown = cli(module, workdir, redis_url, "replicas", "--json")
        assert shown.returncode == 0, shown.stderr
        return [r for r in json.loads(shown.stdout)["replicas"] if r["status"] == "live"]

    wait_until(lambda: len(live_replicas()) == 1, timeout=30, what="the replica record")
    replica = live_replicas()[0]
    assert replica["pid"] == beat.pid
    assert isinstance(replica["entries"], int) and replica["entries"] >= 2  # + Celery defaults

    paused = cli(module, workdir, redis_url, "pause", "fast", "--note", "e2e")
    assert (paused.returncode, paused.stdout.strip()) == (0, "paused 'fast'")
    paused_at = datetime.now(timezone.utc)
    time.sleep(4)
    # A slot claimed just before the pause may still go out; nothing later than that.
    last_fast = latest_slot(client, "fast")
    assert last_fast is not None and last_fast <= paused_at + timedelta(seconds=1)
    last_steady = latest_slot(client, "steady")
    assert last_steady is not None and last_steady >= paused_at + timedelta(seconds=2)
    assert beat.alive(), dump_logs(processes)

    resumed = cli(module, workdir, redis_url, "resume", "fast")
    assert resumed.returncode == 0, resumed.stderr
    resumed_at = datetime.now(timezone.utc)
    wait_until(
        lambda: (latest_slot(client, "fast") or resumed_at) > resumed_at,
        timeout=15,
        what="fast to fire again after resume",
    )

    good = cli(module, workdir, redis_url, "validate")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "2 valid entries, 0 errors" in good.stdout


def test_validate_exit_codes_in_a_deploy_pipeline(redis_url: str, workdir: Path) -> None:
    bad = write_project(workdir, BAD_SCHEDULE, name="badproj")
    checked = cli(bad, workdir, redis_url, "validate", "--json")
    assert checked.returncode == 1
    report = json.loads(checked.stdout)
    assert {e["entry"] for e in report["errors"]} == {"feb30", "ghost"}

    unreachable = cli(bad, workdir, "redis://:hunter2@127.0.0.1:1/0", "validate")
    assert unreachable.returncode == 1
    assert "cannot reach Redis at redis://:**@127.0.0.1:1/0" in unreachable.stdout
    assert "hunter2" not in unreachable.stdout + unreachable.stderr

    preview = cli(bad, workdir, redis_url, "next", "0 0 30 2 *")
    assert preview.returncode == 2
    assert preview.stderr.strip().splitlines() == [
        "Error: cron '0 0 30 2 *' never fires (no matching date)"
    ]
