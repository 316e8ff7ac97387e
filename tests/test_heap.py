"""Once every entry is read, a scheduler that a beat service runs settles its heap (see
:mod:`celery_fork_scheduler.heap`): the objects start-up built are frozen out of the
collector's walks and the thresholds raised, once per process and only with
``fork_scheduler_freeze_heap`` on. Each case runs Celery's own ``beat.Service`` in a fresh
interpreter: the collector's state is the process's."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

SCRIPT = textwrap.dedent(
    """
    import gc, json, sys, tempfile, threading, time
    from pathlib import Path
    from celery import Celery, beat
    from celery_fork_scheduler import signals

    freeze, threshold = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    gc.set_threshold(*threshold)
    workdir = Path(tempfile.mkdtemp())
    app = Celery("heap", set_as_current=False, broker="memory://")
    app.conf.update(
        timezone="UTC",
        beat_schedule={"e": {"task": "t", "schedule": 1.0}},
        fork_scheduler_state_filename=str(workdir / "state.json"),
        **({} if freeze is None else {"fork_scheduler_freeze_heap": freeze}),
    )
    dispatched = []
    signals.entry_dispatched.connect(lambda **kw: dispatched.append(kw["slot"]), weak=False)
    service = beat.Service(
        app,
        max_interval=0.2,
        schedule_filename=str(workdir / "schedule"),
        scheduler_cls="celery_fork_scheduler.Scheduler",
    )
    thread = threading.Thread(target=service.start, daemon=True)
    thread.start()
    readings = []
    deadline = time.monotonic() + 60
    while len(dispatched) < 3 and time.monotonic() < deadline:
        if dispatched:
            readings.append(gc.get_freeze_count())
            kept = [[n] for n in range(1000)]  # frozen too, were the heap frozen again
        time.sleep(0.05)
    readings.append(gc.get_freeze_count())
    service.stop()
    thread.join(30)
    print(json.dumps({
        "dispatched": len(dispatched), "readings": readings, "threshold": gc.get_threshold()
    }))
    """
)


def run(freeze: bool | None, threshold: tuple[int, int, int] = (700, 10, 10)) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(freeze), json.dumps(threshold)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("freeze", [None, True])
def test_beat_freezes_the_heap_once_after_start_up(freeze: bool | None) -> None:
    result = run(freeze)
    readings = result["readings"]
    assert result["dispatched"] >= 3
    assert readings[-1] > 0, "frozen by the time the second slot went out"
    frozen = [reading for reading in readings if reading]
    assert frozen == sorted(frozen, reverse=True), "once (freed objects leave the count)"
    assert result["threshold"] == [20_000, 20, 20]


def test_freeze_heap_off_leaves_the_collector_alone() -> None:
    result = run(False)
    assert result["dispatched"] >= 3
    assert set(result["readings"]) == {0}
    assert result["threshold"] == [700, 10, 10]


def test_a_collector_switched_off_stays_off() -> None:
    result = run(None, (0, 10, 10))
    assert result["readings"][-1] > 0
    assert result["threshold"] == [0, 10, 10]
