"""Issue 17, the mistakes a running cluster meets: each seen through the real ``celery beat`` /
``celery worker`` / ``celery schedule`` processes (the line, how often, no ``Traceback``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from celery_fork_scheduler.testing import CeleryProcess, RedisServer, free_port, wait_until

from .conftest import dump_logs
from .harness import write_project
from .test_first_hour import SEND, celery

pytestmark = pytest.mark.e2e

TASKS = """
app.conf.beat_schedule = {{
    "typo": {{"task": "recrod", "schedule": 1.0}},
    "short": {{"task": "add", "schedule": 1.0, "args": (1,)}},
    "fine": {{"task": "record", "schedule": 1.0}},
}}


@app.task(name="add")
def add(x, y):
    return x + y

{settings}
import celery_fork_scheduler
celery_fork_scheduler.install(app)
"""


def project(workdir: Path, settings: str = "") -> str:
    return write_project(workdir, TASKS.format(settings=settings))


def history(client: redis.Redis, entry: str) -> list[dict[str, str]]:
    """The entry's stored history items, newest first."""
    keys = [key for key in client.scan_iter(f"*{{{entry}}}:history")]
    assert len(keys) == 1, keys
    return [json.loads(raw) for raw in client.lrange(keys[0], 0, -1)]


# -- 4, 5, 8: start-up warnings, a permanent error never retried, one replica id --------------


def test_beat_warns_once_about_an_unknown_task_and_bad_args_and_never_retries_them(
    redis_url: str, workdir: Path, processes: list[CeleryProcess]
) -> None:
    module = project(workdir)
    beat = CeleryProcess.beat(
        module, cwd=workdir, workdir=workdir, env={"TEST_BROKER_URL": redis_url}
    )
    processes.append(beat.start())
    client = redis.Redis.from_url(redis_url)
    wait_until(
        lambda: any(client.scan_iter("*{short}:history")) and len(history(client, "short")) >= 3,
        timeout=60,
        what="three slots of 'short' handled\n" + dump_logs(processes),
    )
    beat.stop()
    log = beat.log()
    assert "Traceback" not in log, log
    unknown = "entry typo: task 'recrod' is not registered in this app"
    assert log.count(unknown) == 1, log
    misfit = "entry short, field args/kwargs: they do not fit task add"
    assert log.count(misfit) == 1, log
    # 4: never retried: one failure recorded and at most one error line per slot.
    runs = history(client, "short")
    assert {item["outcome"] for item in runs} == {"failed"}, runs
    slots = [item["slot"] for item in runs]
    assert len(slots) == len(set(slots)), runs
    errors = [line for line in log.splitlines() if "ERROR" in line and "short" in line]
    assert len(errors) <= len(slots) + 1, log  # the slot being handled at the stop may add one
    # 8: the banner names the replica id that the replica records in history.
    replica = runs[0]["replica"]
    banner = [line for line in log.splitlines() if "fork scheduler ->" in line]
    assert len(banner) == 1 and replica in banner[0], (replica, banner)


# -- 6: a worker whose claims Redis is away ---------------------------------------------------


def test_a_worker_without_its_claims_redis_logs_one_warning_and_runs_every_task(
    redis_url: str, workdir: Path, processes: list[CeleryProcess]
) -> None:
    nobody = f"redis://127.0.0.1:{free_port()}/0"
    module = project(
        workdir,
        f"app.conf.fork_scheduler_redis_url = {nobody!r}\napp.conf.fork_scheduler_max_retries = 0",
    )
    worker = CeleryProcess.worker(
        module, cwd=workdir, workdir=workdir, env={"TEST_BROKER_URL": redis_url}, concurrency=2
    )
    processes.append(worker.start())
    env = {**os.environ, "TEST_BROKER_URL": redis_url, "PYTHONPATH": str(workdir)}
    for _ in range(5):
        sent = subprocess.run(
            [sys.executable, "-c", SEND.format(module=module).replace("every-minute", "fine")],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr
    client = redis.Redis.from_url(redis_url)
    wait_until(
        lambda: client.llen("test:received") == 5,
        timeout=30,
        what="the worker ran five scheduled tasks\n" + dump_logs(processes),
    )
    wait_until(
        lambda: worker.log().count("succeeded in") == 5,
        timeout=30,
        what="five task ends logged\n" + dump_logs(processes),
    )
    log = worker.log()
    assert "Traceback" not in log, log
    assert log.count("cannot reach Redis") == 1, log


# -- 7: what an outage cost, said once, kept, signalled ---------------------------------------

SUMMARY = re.compile(
    r"(\d+) slots of (\d+) entries missed between (\S+) and (\S+): redis_unavailable"
)


def test_an_outage_is_summed_up_once_in_the_log_history_and_listeners(
    redis_url: str, workdir: Path, processes: list[CeleryProcess]
) -> None:
    claims = RedisServer().start()
    try:
        module = project(
            workdir,
            f"app.conf.fork_scheduler_redis_url = {claims.url!r}\n"
            "app.conf.fork_scheduler_max_retries = 0\n"
            "app.conf.fork_scheduler_event_listeners = "
            "['celery_fork_scheduler.listeners.LoggingEventListener']",
        )
        beat = CeleryProcess.beat(
            module, cwd=workdir, workdir=workdir, env={"TEST_BROKER_URL": redis_url}
        )
        processes.append(beat.start())
        wait_until(
            lambda: beat.log().count("dispatched by") >= 3,
            timeout=60,
            what="publishing to start\n" + dump_logs(processes),
        )
        port = claims.port
        claims.stop()
        wait_until(
            lambda: "claim backend unavailable" in beat.log(),
            timeout=30,
            what="the replica to notice the outage\n" + dump_logs(processes),
        )
        time.sleep(3)  # slots come due while Redis is away: that is what is measured
        claims.port = port
        claims.start()
        wait_until(
            lambda: len(SUMMARY.findall(beat.log())) >= 2,
            timeout=60,
            what="the outage summary\n" + dump_logs(processes),
        )
        beat.stop()
        log = beat.log()
        assert "Traceback" not in log, log
        said = [line for line in log.splitlines() if SUMMARY.search(line)]
        # The scheduler's line, and the LoggingEventListener's (the outage_ended signal):
        assert len(said) == 2, said
        assert sum("fork scheduler:" in line for line in said) == 1, said
        slots, entries, started, ended = SUMMARY.findall(said[0])[0]
        assert int(entries) == 3 and int(slots) >= 3, said
        shown = celery(
            module,
            workdir,
            redis_url,
            "schedule",
            "history",
            "--outages",
            "--json",
        )
        assert shown.returncode == 0, shown.stdout + shown.stderr
        outages = json.loads(shown.stdout)
        assert len(outages) == 1, outages
        assert outages[0]["slots"] == int(slots)
        assert outages[0]["entry_count"] == 3
        assert sorted(outages[0]["entries"]) == ["fine", "short", "typo"]
        assert (outages[0]["started"], outages[0]["ended"]) == (started, ended)
        table = celery(module, workdir, redis_url, "schedule", "history", "--outages")
        assert table.returncode == 0 and f"{slots} slots of 3 entries" in table.stdout, table
    finally:
        claims.cleanup()


# -- 10: the test harness in a user's own suite ----------------------------------------------

USERS_TEST = """
from celery import Celery
from celery_fork_scheduler import every
from celery_fork_scheduler.testing import ScheduleHarness


def test_nightly_job():
    app = Celery("users", set_as_current=False, broker="memory://")
    app.conf.beat_schedule = {"job": {"task": "t", "schedule": every(10).seconds}}
    harness = ScheduleHarness(app, start="2026-03-02T10:00:00+00:00")
    harness.advance(seconds=30)
    assert len(harness.fired("job")) == 3
    harness.close()
"""


def test_the_harness_says_nothing_about_replicas_in_a_users_suite(workdir: Path) -> None:
    (workdir / "test_users_suite.py").write_text(USERS_TEST)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "log_cli=true",
            "--log-cli-level=DEBUG",
            "test_users_suite.py",
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "1 passed" in output, output
    assert "NOT protected" not in output and "no Redis configured" not in output, output
