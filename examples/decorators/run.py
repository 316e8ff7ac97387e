"""Task decorators: a task module declares its own schedule with ``@periodic``.

Starts one ``celery worker`` and one ``celery beat -S fork`` for ``proj.py`` (no
``beat_schedule``: the entries come from ``@periodic`` in ``tasks.py``), waits until every entry
has fired, prints the fires the worker logged and stops both. Uses ``$REDIS_URL`` when set,
otherwise a private, throwaway ``redis-server``. Takes about 15 seconds.

    python examples/decorators/run.py
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import sys
import tempfile
from pathlib import Path

import redis

from celery_fork_scheduler.testing import CeleryProcess, redis_url_from_env, wait_until

HERE = Path(__file__).resolve().parent
#: What the tasks write to the worker log.
FIRE = re.compile(
    r"fired (?P<entry>\S+) for slot (?P<slot>\S+) \((?P<what>[^)]*)\), task id (?P<task_id>\S+)"
)
#: Runs to wait for, per entry ("report-eu-twice" has max_runs=2: it never fires a third time).
EXPECTED = {"tasks.heartbeat": 2, "report-every-3s": 2, "report-eu-twice": 2}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="give up after (seconds)")
    options = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="fork-scheduler-decorators-"))
    with redis_url_from_env() as url:
        # Start afresh on a Redis of your own: forget the counters of an earlier run (max_runs).
        client = redis.Redis.from_url(url)
        client.delete(*(f"scheduler:{{{entry}}}:state" for entry in EXPECTED))
        client.close()
        env = {"DECORATORS_REDIS_URL": url}
        print(f"Redis {url}; logs in {workdir} (kept on failure)", flush=True)
        worker = CeleryProcess.worker("proj", cwd=HERE, workdir=workdir, env=env)
        beat = CeleryProcess.beat("proj", cwd=HERE, workdir=workdir, env=env)

        def fires() -> list[re.Match[str]]:
            return list(FIRE.finditer(worker.log()))

        def done() -> bool:
            counts = collections.Counter(match["entry"] for match in fires())
            return all(counts[entry] >= n for entry, n in EXPECTED.items())

        try:
            worker.start()
            beat.start()
            print("worker and `celery -A proj beat -S fork` started", flush=True)
            wait_until(
                lambda: done() or not (worker.alive() and beat.alive()),
                timeout=options.timeout,
                what="every @periodic entry to fire",
            )
            if not done():
                raise TimeoutError("a process exited early")
        except TimeoutError as exc:
            print(
                f"FAILED: {exc}\n--- beat log (tail)\n{beat.log()[-4000:]}"
                f"\n--- worker log (tail)\n{worker.log()[-4000:]}"
            )
            return 1
        finally:
            beat.stop()
            worker.stop()

        received = fires()
        for match in received:
            print(f"  {match['entry']:16} slot {match['slot']}  {match['what']}")
        counts = collections.Counter(match["entry"] for match in received)
        print("fires per entry: " + ", ".join(f"{e} {n}" for e, n in sorted(counts.items())))
        if counts["report-eu-twice"] > 2:
            print("FAILED: 'report-eu-twice' ran more than max_runs=2 times")
            return 1
        print("OK: every @periodic entry fired")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
