"""A singleton task slower than its schedule, on two beat replicas and one worker.

``slow-report`` is due every 2 seconds and runs for 5. Two ``celery beat -S fork`` replicas
publish it; the worker runs it. While a run executes, its due slots are skipped (``busy``);
the first slot after a run ends fires again. Prints each run's start and end and each skip,
then checks that no two runs overlapped.

Uses ``$REDIS_URL`` when set, otherwise a private, throwaway ``redis-server``.

    python examples/singleton_slow_task/run.py [--runs 3]
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import redis

from celery_fork_scheduler.testing import CeleryProcess, redis_url_from_env, wait_until
from celery_fork_scheduler.testing.examples import parse_options, print_failure

HERE = Path(__file__).resolve().parent
RUNS_KEY = "singleton-example:runs"  # as in proj.py
SKIPPED = re.compile(r"fork scheduler: slow-report slot (?P<slot>\S+) skipped: (?P<reason>busy)")


def runs(client: redis.Redis) -> list[dict[str, object]]:
    """The runs noted by the task, by start: slot, worker, start and end (None while running)."""
    found: dict[str, dict[str, object]] = {}
    for raw in client.lrange(RUNS_KEY, 0, -1):
        note = json.loads(raw)
        run = found.setdefault(note["slot"], {"slot": note["slot"], "worker": note["worker"]})
        run[note["event"]] = note["at"]
    return sorted(found.values(), key=lambda run: float(run["start"]))  # type: ignore[arg-type]


def clock(moment: float) -> str:
    return datetime.fromtimestamp(moment).strftime("%H:%M:%S.%f")[:-3]


def slot_clock(run: dict[str, object]) -> str:
    return clock(datetime.fromisoformat(str(run["slot"])).timestamp())


def main() -> int:
    options = parse_options(
        __doc__, runs=(3, "finished runs to wait for"), timeout=(30.0, "give up after (seconds)")
    )

    workdir = Path(tempfile.mkdtemp(prefix="fork-scheduler-singleton-"))
    with redis_url_from_env() as url:
        client = redis.Redis.from_url(url)
        for key in client.scan_iter("singleton-example:*"):
            client.delete(key)
        env = {"SINGLETON_REDIS_URL": url}
        print(f"Redis {url}; logs in {workdir} (kept on failure)", flush=True)
        worker = CeleryProcess.worker("proj", cwd=HERE, workdir=workdir, env=env, concurrency=4)
        # At debug level a replica logs each slot it skips because the last run still executes.
        beats = [
            CeleryProcess.beat(
                "proj",
                cwd=HERE,
                workdir=workdir,
                name=f"beat-{i}",
                env=env,
                extra_args=["-l", "debug"],
            )
            for i in range(2)
        ]
        processes = [worker, *beats]

        def finished() -> int:
            return sum("end" in run for run in runs(client))

        try:
            worker.start()
            wait_until(lambda: " ready." in worker.log(), timeout=20, what="the worker")
            for beat in beats:
                beat.start()
            print("1 worker (4 threads) and 2 `celery -A proj beat -S fork` replicas started")
            wait_until(
                lambda: finished() >= options.runs or not all(p.alive() for p in processes),
                timeout=options.timeout,
                what=f"{options.runs} finished runs",
            )
        except TimeoutError as exc:
            return print_failure(exc, processes, tail=3000)
        finally:
            for beat in beats:
                beat.stop()
            stopped = time.time()
            worker.stop()

        done = runs(client)
        skips = [
            (datetime.fromisoformat(match["slot"]).timestamp(), beat.log_path.stem)
            for beat in beats
            for match in SKIPPED.finditer(beat.log())
        ]
        events = [
            (float(run["start"]), f"run of slot {slot_clock(run)} starts on {run['worker']}")  # type: ignore[arg-type]
            for run in done
        ]
        events += [
            (float(run["end"]), f"run of slot {slot_clock(run)} ends")  # type: ignore[arg-type]
            for run in done
            if "end" in run
        ]
        events += [(slot, f"slot {clock(slot)} skipped: busy ({name})") for slot, name in skips]
        for moment, text in sorted(events):
            print(f"  {clock(moment)}  {text}")

        overlaps = [
            (before["slot"], after["slot"])
            for before, after in itertools.pairwise(done)
            if float(after["start"]) < float(before.get("end", stopped))  # type: ignore[arg-type]
        ]
        if overlaps or finished() < options.runs:
            print(f"FAILED: overlapping runs {overlaps}, or a process exited early")
            return 1
        print(
            f"OK: {len(done)} runs, never two at once; {len(skips)} slots skipped while a run "
            "was executing"
        )
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
