"""Overlap policies ``buffer_all`` and ``terminate_other`` on one beat and one worker.

Starts a prefork worker (terminating a run needs a pool process to signal) and one
``celery beat -S fork``, waits until ``queued-report`` has finished a few queued runs and
``fresh-snapshot`` has replaced a run, then prints every run's start and end and checks that
no two runs of one entry overlapped and that the queued runs kept their slot order.

Uses ``$REDIS_URL`` when set, otherwise a private, throwaway ``redis-server``.

    python examples/overlap_policies/run.py [--runs 4]
"""

from __future__ import annotations

import itertools
import json
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import redis

from celery_fork_scheduler.testing import CeleryProcess, redis_url_from_env, wait_until
from celery_fork_scheduler.testing.examples import parse_options, print_failure

HERE = Path(__file__).resolve().parent
RUNS_KEY = "overlap-example:runs"  # as in proj.py
HISTORY_KEY = "overlap-example:{fresh-snapshot}:history"


def runs(client: redis.Redis, entry: str) -> list[dict[str, Any]]:
    """The runs of ``entry`` noted by the task, by start: slot, id, start, end."""
    found: dict[str, dict[str, Any]] = {}
    for raw in client.lrange(RUNS_KEY, 0, -1):
        note = json.loads(raw)
        if note["entry"] == entry:
            found.setdefault(note["id"], {"slot": note["slot"], "id": note["id"]})[
                note["event"]
            ] = note["at"]
    return sorted(found.values(), key=lambda run: float(run["start"]))


def revoked(client: redis.Redis) -> dict[str, float]:
    """The ``fresh-snapshot`` runs recorded as revoked: task id -> when (the worker freed the
    marker right after the signal, so the run had ended by then)."""
    items = [json.loads(raw) for raw in client.lrange(HISTORY_KEY, 0, -1)]
    return {item["task_id"]: item["at"] / 1e6 for item in items if item["outcome"] == "revoked"}


def clock(moment: float) -> str:
    return datetime.fromtimestamp(moment).strftime("%H:%M:%S.%f")[:-3]


def overlapping(done: list[dict[str, Any]], until: float) -> list[tuple[str, str]]:
    return [
        (before["slot"], after["slot"])
        for before, after in itertools.pairwise(done)
        if float(after["start"]) < float(before.get("end", until))
    ]


def main() -> int:
    options = parse_options(
        __doc__, runs=(4, "finished queued runs to wait for"), timeout=(40.0, "give up after (s)")
    )
    workdir = Path(tempfile.mkdtemp(prefix="fork-scheduler-overlap-"))
    with redis_url_from_env() as url:
        client = redis.Redis.from_url(url)
        for key in client.scan_iter("overlap-example:*"):
            client.delete(key)
        env = {"OVERLAP_REDIS_URL": url}
        print(f"Redis {url}; logs in {workdir} (kept on failure)", flush=True)
        command = ["worker", "-l", "info", "-P", "prefork", "-c", "3", "-n", "worker@%h"]
        worker = CeleryProcess("proj", command, cwd=HERE, log_path=workdir / "worker.log", env=env)
        beat = CeleryProcess.beat("proj", cwd=HERE, workdir=workdir, env=env)
        processes = [worker, beat]

        def enough() -> bool:
            queued = sum("end" in run for run in runs(client, "queued-report"))
            return queued >= options.runs and bool(revoked(client))

        try:
            worker.start()
            wait_until(lambda: " ready." in worker.log(), timeout=30, what="the worker")
            beat.start()
            print("1 worker (prefork, 3 processes) and `celery -A proj beat -S fork` started")
            wait_until(
                lambda: enough() or not all(p.alive() for p in processes),
                timeout=options.timeout,
                what=f"{options.runs} queued runs and a terminated one",
            )
        except TimeoutError as exc:
            return print_failure(exc, processes, tail=3000)
        finally:
            beat.stop()
            stopped = time.time()
            worker.kill()

        problems = []
        ids = revoked(client)
        for entry in ("queued-report", "fresh-snapshot"):
            done = runs(client, entry)
            for run in done:
                if "end" not in run and run["id"] in ids:
                    run["end"], run["terminated"] = ids[run["id"]], True
            print(f"{entry}:")
            for run in done:
                end = clock(float(run["end"])) if "end" in run else "(still running)"
                if run.get("terminated"):
                    end += " terminated"
                slot = clock(datetime.fromisoformat(run["slot"]).timestamp())
                print(f"  slot {slot}: {clock(float(run['start']))} -> {end}")
            if overlapping(done, stopped):
                problems.append(f"{entry} runs overlapped: {overlapping(done, stopped)}")
            if entry == "queued-report" and [r["slot"] for r in done] != sorted(
                r["slot"] for r in done
            ):
                problems.append("queued runs out of slot order")
        print(f"fresh-snapshot runs terminated and recorded as revoked: {len(ids)}")
        if problems or not enough():
            print(f"FAILED: {problems or 'a process exited early'}")
            return 1
        print("OK: queued runs one after another in slot order; replaced runs terminated first")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
