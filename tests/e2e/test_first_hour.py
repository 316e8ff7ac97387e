"""Issue 17: the mistakes of a Celery user's first hour, each one clear line from the real
``celery`` command (exit code, the line, no ``Traceback``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import redis

from celery_fork_scheduler.testing import CeleryProcess, wait_until

from .conftest import dump_logs
from .harness import run_python, write_project

pytestmark = pytest.mark.e2e

SCHEDULE = """
app.conf.timezone = "Europe/Berlin"
app.conf.beat_schedule = {{
    "every-minute": {{"task": "record", "schedule": timedelta(minutes=1)}},
    "nightly": {{"task": "record", "schedule": crontab(minute=0, hour=3)}},
}}
{settings}
import celery_fork_scheduler
celery_fork_scheduler.install(app)
"""

CLOSED_PORT_URL = "redis://127.0.0.1:1/0"


def project(workdir: Path, settings: str = "") -> str:
    return write_project(workdir, SCHEDULE.format(settings=settings))


def celery(
    module: str, workdir: Path, broker: str, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m celery -A <module> <args>`` in ``workdir`` to its end."""
    return run_python(workdir, broker, "-m", "celery", "-A", module, *args, timeout=timeout)


def beat(module: str, workdir: Path, broker: str) -> subprocess.CompletedProcess[str]:
    """``celery beat -S fork``, which must stop by itself."""
    state = str(workdir / "beat-schedule")
    return celery(module, workdir, broker, "beat", "-S", "fork", "-s", state, timeout=30)


def one_line(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    """The command ended with ``code`` and says ``text`` on exactly one line, no traceback."""
    output = result.stdout + result.stderr
    assert result.returncode == code, output
    assert "Traceback" not in output, output
    assert [line for line in output.splitlines() if text in line] == [
        next(line for line in output.splitlines() if text in line)
    ], output


# -- 1. trigger with the broker down --------------------------------------------------------


def test_trigger_with_the_broker_down_is_one_line_and_exit_3(redis_url: str, workdir: Path) -> None:
    module = project(workdir, f"app.conf.fork_scheduler_redis_url = {redis_url!r}")
    result = celery(module, workdir, CLOSED_PORT_URL, "schedule", "trigger", "every-minute")
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip().splitlines()[0]], (
        result.stderr
    )
    line = result.stderr.strip()
    assert line.startswith("Error: cannot send 'every-minute': cannot reach the broker"), line
    assert line.endswith("nothing was sent"), line
    assert "Traceback" not in result.stdout + result.stderr


# -- 2. a typo'd setting ----------------------------------------------------------------------

TYPO = "app.conf.fork_scheduler_claim_leas = 5"
DID_YOU_MEAN = (
    "field 'fork_scheduler_claim_leas': unknown setting; did you mean 'fork_scheduler_claim_lease'?"
)


def test_a_typo_stops_beat_with_one_line_naming_the_setting(redis_url: str, workdir: Path) -> None:
    module = project(workdir, TYPO)
    one_line(beat(module, workdir, redis_url), 1, DID_YOU_MEAN)


def test_validate_reports_a_typo_with_the_setting_it_meant(redis_url: str, workdir: Path) -> None:
    module = project(workdir, TYPO)
    one_line(celery(module, workdir, redis_url, "schedule", "validate"), 1, DID_YOU_MEAN)


SEND = """
from {module} import app
app.send_task("record", headers={{
    "fork_scheduler_entry": "every-minute", "fork_scheduler_slot": "2026-01-01T00:00:00+00:00"
}})
"""


def worker_ran_a_scheduled_run(
    module: str, workdir: Path, broker: str, processes: list[CeleryProcess], timeout: float
) -> CeleryProcess:
    """Start a worker (one thread), send it a run of ``every-minute`` as beat would (the CLI may
    refuse the settings), and wait until it ran it; the worker is returned."""
    worker = CeleryProcess.worker(
        module, cwd=workdir, workdir=workdir, env={"TEST_BROKER_URL": broker}, concurrency=1
    )
    processes.append(worker.start())
    client = redis.Redis.from_url(broker)
    sent = run_python(workdir, broker, "-c", SEND.format(module=module))
    assert sent.returncode == 0, sent.stderr
    wait_until(
        lambda: client.llen("test:received") == 1,
        timeout=timeout,
        what="the worker ran the triggered task\n" + dump_logs(processes),
    )
    return worker


def test_a_typo_is_logged_once_by_a_worker_that_runs_its_tasks(
    redis_url: str, workdir: Path, processes: list[CeleryProcess]
) -> None:
    module = project(workdir, TYPO)
    worker = worker_ran_a_scheduled_run(module, workdir, redis_url, processes, timeout=20)
    log = worker.log()
    assert log.count(DID_YOU_MEAN) == 1, log
    assert "Traceback" not in log, log


# -- 3. a malformed fork_scheduler_redis_url ---------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis//host:6379/0", "it must start with one of redis://"),
        ("redis://host:abc/0", "Port could not be cast to integer"),
    ],
)
def test_a_malformed_redis_url_stops_beat_with_one_line(
    redis_url: str, workdir: Path, url: str, reason: str
) -> None:
    module = project(workdir, f"app.conf.fork_scheduler_redis_url = {url!r}")
    result = beat(module, workdir, redis_url)
    one_line(result, 1, f"field 'fork_scheduler_redis_url': bad Redis URL {url}: {reason}")


# -- 9. next NAME, the TZ column of interval entries ------------------------------------------


def test_next_with_an_entry_name_points_to_show(redis_url: str, workdir: Path) -> None:
    module = project(workdir)
    result = celery(module, workdir, redis_url, "schedule", "next", "every-minute")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        "Error: 'every-minute' is an entry, not a schedule: its next runs are in "
        "'celery schedule show every-minute'"
    ]
    assert "Traceback" not in result.stdout + result.stderr


def test_list_shows_no_zone_for_interval_entries(redis_url: str, workdir: Path) -> None:
    module = project(workdir)
    result = celery(module, workdir, redis_url, "schedule", "list")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert rows["every-minute"][4] == "-"  # NAME, "every", "minute", then TZ
    assert "Europe/Berlin" in rows["nightly"]


def test_validate_reports_an_event_listener_that_does_not_import(
    redis_url: str, workdir: Path
) -> None:
    module = project(workdir, "app.conf.fork_scheduler_event_listeners = ['no.such.Listener']")
    result = celery(module, workdir, redis_url, "schedule", "validate")
    one_line(result, 1, "cannot import 'no.such.Listener'")
