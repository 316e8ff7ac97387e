"""Event listeners: a worker and `celery beat -S fork` whose listener logs every event to a file.

Waits for successful runs, failed runs and skipped slots, stops both processes, then prints
the event log and the history counters of each entry. Uses ``$REDIS_URL`` when set, otherwise
a private, throwaway ``redis-server``.

    python examples/event_listeners/run.py [--timeout 30]
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

from celery_fork_scheduler.testing import redis_url_from_env, wait_until
from celery_fork_scheduler.testing.examples import parse_options, print_failure, worker_and_beat

HERE = Path(__file__).resolve().parent
#: Lines of each kind to wait for before stopping.
WANTED = {"complete": 3, "error": 2, "skip": 1, "dispatch": 5}


def kinds(log: Path) -> dict[str, int]:
    """How many lines of each event kind the log holds."""
    counts = dict.fromkeys(WANTED, 0)
    if log.exists():
        for line in log.read_text(encoding="utf-8").splitlines():
            words = line.split()
            if len(words) > 3 and words[3] in counts:
                counts[words[3]] += 1
    return counts


def main() -> int:
    options = parse_options(__doc__, timeout=(30.0, "give up after (seconds)"))

    workdir = Path(tempfile.mkdtemp(prefix="fork-scheduler-events-"))
    log = workdir / "events.log"
    with redis_url_from_env() as url:
        env = {
            "EVENTS_REDIS_URL": url,
            "EVENTS_LOG": str(log),
            # a fresh key prefix: a shared $REDIS_URL may hold state of an earlier run
            "EVENTS_PREFIX": f"events-example-{uuid.uuid4().hex[:8]}:",
        }
        print(f"Redis {url}; event log {log}", flush=True)
        with worker_and_beat(HERE, workdir, env) as (worker, beat):
            try:
                wait_until(
                    lambda: (
                        all(kinds(log)[k] >= n for k, n in WANTED.items())
                        or not (worker.alive() and beat.alive())
                    ),
                    timeout=options.timeout,
                    what=f"events {WANTED}",
                )
            except TimeoutError as exc:
                return print_failure(exc, [beat, worker])
        if not all(kinds(log)[k] >= n for k, n in WANTED.items()):
            return print_failure("a process exited early", [beat])

        print(f"\n--- {log.name}")
        print(log.read_text(encoding="utf-8"), end="")

        for key, value in env.items():
            os.environ[key] = value
        sys.path.insert(0, str(HERE))
        proj = importlib.import_module("proj")
        manager = proj.app.fork_scheduler
        print("\n--- Manager(app).stats(name) and the latest history item")
        for job in manager.jobs():
            stats = manager.stats(job.name)
            latest = manager.history(job.name, n=1)
            last = f"{latest[0].outcome} slot {latest[0].slot:%H:%M:%S}" if latest else "-"
            skips = ", ".join(f"{r}={n}" for r, n in sorted(stats.skips.items())) or "none"
            print(
                f"  {job.name:16} runs {stats.runs:2}  completed {stats.completed:2}  "
                f"errors {stats.errors:2}  skips {skips:12}  latest: {last}"
            )
        print(f"\nOK: {sum(kinds(log).values())} events logged by the listener")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
