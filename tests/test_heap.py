"""Once every entry is read, beat settles its heap (see :mod:`celery_fork_scheduler.heap`):
the objects start-up built are frozen out of the collector's walks and the thresholds raised,
once per process and only with ``fork_scheduler_freeze_heap`` on. Each case runs in a fresh
interpreter: the collector's state is the process's."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import gc, json, sys, tempfile
    from pathlib import Path
    from celery import Celery
    from celery_fork_scheduler import Scheduler
    from celery_fork_scheduler.backends.local import LocalBackend
    from celery_fork_scheduler.testing import FakeClock, RecordingPublisher

    freeze = json.loads(sys.argv[1])
    gc.set_threshold(700, 10, 10)
    before = gc.get_freeze_count()
    app = Celery("heap", set_as_current=False, broker="memory://")
    app.conf.update(
        timezone="UTC",
        beat_schedule={"e": {"task": "t", "schedule": 1.0}},
        **({} if freeze is None else {"fork_scheduler_freeze_heap": freeze}),
    )
    clock = FakeClock("2026-03-02T10:00:00.300+00:00")
    scheduler = Scheduler(
        app,
        clock=clock,
        publisher=RecordingPublisher(),
        backend=LocalBackend(Path(tempfile.mkdtemp()) / "state.json"),
        exit_on_config_error=False,
    )
    readings = []
    kept = []
    for _ in range(3):
        kept.append([[n] for n in range(1000)])  # would be frozen by a second freeze
        scheduler.tick()
        clock.advance(1.0)
        readings.append(gc.get_freeze_count())
    scheduler.close()
    print(json.dumps({"before": before, "readings": readings, "threshold": gc.get_threshold()}))
    """
)


def run(freeze: bool | None) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(freeze)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("freeze", [None, True])
def test_the_heap_is_frozen_once_after_start_up(freeze: bool | None) -> None:
    result = run(freeze)
    readings = result["readings"]
    assert isinstance(readings, list)
    assert result["before"] == 0 and readings[0] > 0, "frozen after the first tick"
    assert readings[0] >= readings[1] >= readings[2], "and only once (freed ones leave it)"
    assert result["threshold"] == [20_000, 20, 20]


def test_freeze_heap_off_leaves_the_collector_alone() -> None:
    result = run(False)
    assert result["readings"] == [0, 0, 0]
    assert result["threshold"] == [700, 10, 10]
