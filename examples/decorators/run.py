"""Task decorators: a task module declares its own schedule with ``@periodic``.

Starts one ``celery worker`` and one ``celery beat -S fork`` for ``proj.py`` (no
``beat_schedule``: the entries come from ``@periodic`` in ``tasks.py``), waits until every entry
has fired, prints the fires the worker logged and stops both. Uses ``$REDIS_URL`` when set,
otherwise a private, throwaway ``redis-server``. Takes about 15 seconds.

    python examples/decorators/run.py
"""

from __future__ import annotations

import collections
import re
import shutil
import sys
import tempfile
from pathlib import Path

import redis

from celery_fork_scheduler.testing import redis_url_from_env, wait_until
from celery_fork_scheduler.testing.examples import parse_options, print_failure, worker_and_beat

HERE = Path(__file__).resolve().parent
#: What the tasks write to the worker log.
FIRE = re.compile(
    r"fired (?P<entry>\S+) for slot (?P<slot>\S+) \((?P<what>[^)]*)\), task id (?P<task_id>\S+)"
)
#: Runs to wait for, per entry ("report-eu-twice" has max_runs=2: it never fires a third time).
EXPECTED = {"tasks.heartbeat": 2, "report-every-3s": 2, "report-eu-twice": 2}


def main() -> int:
    options = parse_options(__doc__, timeout=(30.0, "give up after (seconds)"))

    workdir = Path(tempfile.mkdtemp(prefix="fork-scheduler-decorators-"))
    with redis_url_from_env() as url:
        # Start afresh on a Redis of your own: forget the counters of an earlier run (max_runs).
        client = redis.Redis.from_url(url)
        client.delete(*(f"scheduler:{{{entry}}}:state" for entry in EXPECTED))
        client.close()
        print(f"Redis {url}; logs in {workdir} (kept on failure)", flush=True)
        with worker_and_beat(HERE, workdir, {"DECORATORS_REDIS_URL": url}) as (worker, beat):

            def fires() -> list[re.Match[str]]:
                return list(FIRE.finditer(worker.log()))

            def done() -> bool:
                counts = collections.Counter(match["entry"] for match in fires())
                return all(counts[entry] >= n for entry, n in EXPECTED.items())

            try:
                wait_until(
                    lambda: done() or not (worker.alive() and beat.alive()),
                    timeout=options.timeout,
                    what="every @periodic entry to fire",
                )
                if not done():
                    raise TimeoutError("a process exited early")
            except TimeoutError as exc:
                return print_failure(exc, [beat, worker])

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
