# ruff: noqa: RUF001
"""Run every benchmark scenario beside the peers and write the report.

    .venv/bin/python benchmarks/run.py [--quick] [--runs 3]

Writes ``docs/benchmarks.md`` (tables, machine, command), ``docs/img/benchmarks.png`` and the
raw figures to ``benchmarks/results/<mode>.json``; prints the tables. Installs the peers'
packages (``celery-redbeat``, ``matplotlib``) into the running interpreter when missing.

The kill-storm fault scenario (``tests/faults/test_kill_storm_shared_redis.py``) runs once per
run through pytest, with ``KILL_STORM_ENTRIES`` entries (default 800); its counts are read from
the report file the fault suite writes (``FAULTS_REPORT``).

A burst must start on a whole minute (``crontab()``); while waiting for one, the runner runs
other scenarios that fit in the wait, so the waits cost little.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]


def ensure_packages() -> None:
    """Install the benchmark-only packages into this interpreter if they are missing."""
    missing = [
        package
        for module, package in (("redbeat", "celery-redbeat"), ("matplotlib", "matplotlib"))
        if importlib.util.find_spec(module) is None
    ]
    if missing:
        print(f"installing {' '.join(missing)} for the benchmark ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)


ensure_packages()

import report  # noqa: E402
import scenarios  # noqa: E402
from harness import PEERS  # noqa: E402

#: Entries of the kill-storm scenario (the fault test's own default is 800).
KILL_STORM_ENTRIES = int(os.environ.get("KILL_STORM_ENTRIES", "800"))


@dataclass(frozen=True)
class Mode:
    name: str
    runs: int
    every_sizes: tuple[int, ...]
    burst_size: int
    burst_peers: tuple[str, ...]
    idle_size: int
    settings: scenarios.Settings


def make_mode(quick: bool, runs: int | None, logs: Path) -> Mode:
    if quick:
        settings = scenarios.Settings(
            warmup=2, window=4, startup_cap=15, burst_cap=15, idle_window=3, settle=1,
            plain_loop_count=5000, ceiling_seconds=2, logs=logs,
        )  # fmt: skip
        return Mode("quick", runs or 1, (10, 1000), 10_000, ("fork1",), 20_000, settings)
    settings = scenarios.Settings(
        warmup=2, window=8, startup_cap=30, burst_cap=20, idle_window=4, settle=1.5,
        plain_loop_count=10_000, ceiling_seconds=3, logs=logs,
    )  # fmt: skip
    return Mode("full", runs or 3, (10, 1000, 10_000), 10_000, tuple(PEERS), 100_000, settings)


@dataclass
class Task:
    kind: str
    run: int
    peer: str = ""
    n: int = 0

    @property
    def key(self) -> tuple[str, str, int]:
        return self.kind, self.peer, self.n

    def describe(self) -> str:
        if self.kind == "references":
            return f"run {self.run}: references"
        if self.kind == "kill_storm":
            return f"run {self.run}: kill storm, 3 replicas, N={self.n}"
        return f"run {self.run}: {self.kind} {PEERS[self.peer].label} N={self.n}"


class Runner:
    """Runs the tasks, filling the wait before each burst's minute with other tasks."""

    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self.results: list[dict[str, Any]] = []
        self.durations: dict[tuple[str, str, int], float] = {}
        self.notes: list[str] = []

    # -- estimates ----------------------------------------------------------------------------

    def estimate(self, task: Task) -> float:
        if task.key in self.durations:
            return self.durations[task.key] + 1
        s = self.mode.settings
        if task.kind == "references":
            return 6 + s.plain_loop_count / 1500 + s.ceiling_seconds + s.plain_loop_count / 800
        if task.kind == "kill_storm":
            return 100.0
        if task.kind == "every":
            per_entry = 1 / 400 if task.peer == "redbeat" else 1 / 3000
            return min(s.startup_cap, 2.5 + task.n * per_entry) + s.warmup + s.window + 3
        return 2 * s.startup_cap + s.settle + s.idle_window + 3

    def burst_margin(self, peer: str) -> float:
        """Seconds to start a burst's beat before its minute: its start-up, measured or guessed."""
        measured = [
            r["startup_s"]
            for r in self.results
            if r.get("scenario") == "every"
            and r["peer"] == peer
            and r["n"] == self.mode.burst_size
            and r.get("startup_s")
        ]
        if measured:
            return max(6.0, 1.3 * max(measured) + 3)
        return 35.0 if peer == "redbeat" else 8.0

    # -- running ------------------------------------------------------------------------------

    def execute(self, tasks: list[Task], bursts: list[Task]) -> None:
        pending, waiting = deque(tasks), deque(bursts)
        while pending or waiting:
            if waiting:
                burst = waiting[0]
                margin = self.burst_margin(burst.peer)
                boundary = scenarios.next_boundary(margin)
                slack = boundary - margin - time.time()
                filler = next((t for t in pending if self.estimate(t) <= slack - 2), None)
                if filler is not None:
                    pending.remove(filler)
                    self.run(filler)
                    continue
                waiting.popleft()
                self.run(burst, boundary=boundary, margin=margin)
                continue
            self.run(pending.popleft())

    def run(self, task: Task, **extra: float) -> None:
        s = self.mode.settings
        print(f"[{time.strftime('%H:%M:%S')}] {task.describe()} ...", file=sys.stderr, flush=True)
        started = time.time()
        try:
            result = self._run(task, s, **extra)
        except Exception as exc:
            traceback.print_exc()
            result = {"scenario": task.kind, "peer": task.peer, "n": task.n, "error": repr(exc)}
        result["run"] = task.run
        self.durations[task.key] = time.time() - started - (extra.get("margin", 0))
        self.results.append(result)
        summary = {k: v for k, v in result.items() if k not in ("commands", "run")}
        print(f"    {json.dumps(summary, default=str)[:400]}", file=sys.stderr, flush=True)

    def _run(self, task: Task, s: scenarios.Settings, **extra: float) -> dict[str, Any]:
        if task.kind == "references":
            return scenarios.references(s)
        if task.kind == "kill_storm":
            return scenarios.kill_storm(task.n, s.logs)
        peer = PEERS[task.peer]
        if task.kind == "every":
            return scenarios.every_second(peer, task.n, s)
        if task.kind == "burst":
            return scenarios.burst(peer, task.n, s, extra["boundary"], extra["margin"])
        failed = self._failed_before(task)
        if failed is not None:
            return {**failed, "not_repeated": True}
        return scenarios.idle(peer, task.n, s)

    def _failed_before(self, task: Task) -> dict[str, Any] | None:
        """An idle start-up that already ran out of time is not repeated (it costs minutes)."""
        for result in self.results:
            if (
                result.get("scenario"),
                result.get("peer"),
                result.get("n"),
            ) == task.key and result.get("startup_over"):
                return {k: v for k, v in result.items() if k != "run"}
        return None

    def plan(self) -> tuple[list[Task], list[Task]]:
        mode = self.mode
        tasks: list[Task] = []
        bursts: list[Task] = []
        for run in range(1, mode.runs + 1):
            tasks.append(Task("references", run))
            tasks += [Task("every", run, p, n) for n in mode.every_sizes for p in PEERS]
            tasks += [Task("idle", run, p, mode.idle_size) for p in PEERS]
            tasks.append(Task("kill_storm", run, "fork3", KILL_STORM_ENTRIES))
            bursts += [Task("burst", run, p, mode.burst_size) for p in mode.burst_peers]
        return tasks, bursts

    def largest(self) -> None:
        """N = 100 000 every second, only for peers that kept up with N = 10 000."""
        if self.mode.name == "quick":
            self.notes += [
                "N = 10 000 and 100 000 every second: not run in --quick mode.",
                "Burst: only `fork ×1` in --quick mode (each peer's burst needs a minute of its "
                "own); idle: 20 000 entries instead of 100 000.",
            ]
            return
        survivors = []
        best = (0.0, "")
        for peer in PEERS:
            runs = [
                r
                for r in self.results
                if r.get("scenario") == "every" and r["peer"] == peer and r["n"] == 10_000
            ]
            rate = report.median(runs, "published_per_s") or 0.0
            best = max(best, (rate / 10_000, PEERS[peer].label))
            if rate >= 0.9 * 10_000:
                survivors.append(peer)
        if not survivors:
            self.notes.append(
                "N = 100 000 every second: not run — no peer sustained 90 % of the 10 000/s "
                f"demanded at N = 10 000 (best: {best[1]}, {100 * best[0]:.0f} %), so 100 000/s "
                "would only measure the same saturated rate."
            )
            return
        tasks = [
            Task("every", run, peer, 100_000)
            for run in range(1, self.mode.runs + 1)
            for peer in survivors
        ]
        self.execute(tasks, [])


# -- the report -------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    import celery
    import kombu
    import redis

    def version(distribution: str) -> str:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = next(
        line.split()[1]
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    server = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    head = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--", "celery_fork_scheduler")
    changed = len(dirty.splitlines()) if dirty else 0
    return {
        "nproc": str(os.cpu_count()),
        "CPU": cpu,
        "memory": f"{int(memory) // 1024} MiB",
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "Celery": celery.__version__,
        "kombu": kombu.__version__,
        "redis-py": redis.__version__,
        "redis-server": next((w[2:] for w in server if w.startswith("v=")), "?"),
        "celery-redbeat": version("celery-redbeat"),
        "code": f"git {head}"
        + (f" + {changed} uncommitted file(s) in celery_fork_scheduler/" if changed else ""),
    }


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip()


METHOD = """\
## How it is measured

* Every scenario gets its own throwaway `redis-server` (loopback), used as the broker and, for
  the schedulers that keep state in Redis, as their store. **No worker runs**: messages
  accumulate in the `celery` list and are read back after the beat processes stopped.
* The same generated project module (`benchapp.py`) is loaded by every peer, with the same
  `beat_schedule`: N entries `e000000…` sending the unregistered task `bench.noop` with args
  `(i,)`, so every scheduler publishes through `app.send_task`.
* Each peer is real `celery beat` processes: `-S fork` (1 and 3 replicas),
  `-S celery.beat:PersistentScheduler` (state file in a fresh directory),
  `-S redbeat.RedBeatScheduler` (`redbeat_redis_url` = the scenario's Redis). All run with
  `beat_max_loop_interval = 1`, `timezone = "UTC"` and `-l warning` (Celery's default log level,
  so no peer writes a log line per message).
* **Publish time** is measured without touching the messages: a sampler reads `LLEN celery`
  every 20 ms with `time.time()`; the k-th message (in arrival order) is dated when the list
  first held k messages, interpolated linearly between two samples (±20 ms).
* **Dispatch lag** = publish time − slot. For `celery_fork_scheduler` the slot is the message's
  `fork_scheduler_slot` header (the nominal fire time). PersistentScheduler and RedBeat have no
  nominal slot for a `timedelta(seconds=1)` entry (the next run is due one interval after the
  previous one was *sent*), so their lag (marked †) is publish − (previous publish of the same
  entry + 1 s), i.e. how late each message is by that scheduler's own rule; their falling behind
  shows in *published/s* instead; "—†" means no entry was sent twice in the window, so that
  lag is undefined. For the cron burst the slot is the minute for every peer.
* **Every second**: the measuring window is the steady state: it starts a warm-up after the
  first round, the first N messages (*1st publish to N-th*: every entry's first message, which
  `fork` builds through Celery to capture its template), or a warm-up after the start-up cap
  when that round takes longer (shown as `> cap`); shifted by 0.4 s so that it falls between
  two seconds' batches, not through one. Until 2026-12-04 the window started a warm-up after
  the first publish: at N = 100 000 it then fell inside the first round and measured
  template capture (6 275 published/s against 13 166/s after the round in one pair of runs on
  this machine). Published/s, lag, CPU,
  Redis commands and *entries not served* (entries with no publish in the window: starved, or
  served less often than once per window) are taken over the window only. Demanded = N per
  second whatever the number of replicas. *Duplicates* counts messages of an (entry, slot)
  already published (only for `fork`, whose messages carry the slot).
* **CPU s / 1 000** = utime + stime (`/proc/<pid>/stat`) of all beat processes of the peer over
  the window, per 1 000 messages published in it. **Peak RSS** = `VmHWM` of the largest replica.
* **Start-up to first publish** = from spawning `celery beat` to the first message; it includes
  Python and Celery start-up and the wait for the first due slot (up to 1 s: the next whole
  second for `fork`, one interval after start for the others).
* **Redis commands / publish** = `INFO commandstats` calls over the window (the sampler's own
  `LLEN`/`INFO` left out) ÷ messages published. Redis counts the commands a Lua script runs
  as well as the `EVALSHA` itself, so a script call doing six writes counts seven; the script
  calls alone are shown as *of which script calls*.
* **Burst**: N `crontab()` entries; the beat starts early enough to be idle before the minute.
  *slot → first message* = time from the minute to the first message (sampled every 20 ms, so
  ±0.02 s); *slot → last message* = time from the minute to the N-th message; a burst not
  finished within the cap is reported as `> cap`. *Share per replica* is read from each
  entry's state hash (`owner`) after the burst.
  The beat starts shortly before the minute, so the burst is each entry's *first* occurrence:
  `fork` builds each of these messages through Celery and captures its template from it, so
  the burst pays Celery's full message building and shows none of the template's speed-up
  (the every-second scenarios do, from their second second on).
* **Idle**: N `crontab(minute=m, hour=h)` entries due about 23 h later, plus one probe entry
  every second whose first message marks the end of start-up; then CPU (% of one core) and RSS
  (`VmRSS`) over a short window. A peer that does not publish within the start-up cap is
  reported as `no publish in … s` (and not started again in later runs).
* **References**, on their own Redis: the *plain loop* is one process calling
  `app.send_task(…, producer=<one reused producer>)` for messages with the same headers (same
  size); the *ceiling* is Redis's own rate for pipelined `LPUSH` of a message of exactly that
  size, from Python (redis-py pipeline, 1 000 per pipeline, one connection) and from
  `redis-benchmark -P 1000 -c 1`.
* **Message template on transports that are not Redis** (`benchmarks/template_path.py`, part
  of the references): one process, Kombu's `memory://` (N = the plain loop's count) and
  `filesystem://` (N / 2, one file per message in a temporary folder), one reused producer;
  N messages sent three ways — the plain `send_task` loop with the same headers, the
  scheduler's `CeleryPublisher.publish_many` in batches of 100 (occurrences of one entry,
  built inside the timing; the first message captured, the others copied from it), and the
  same publisher with `templates=False` (every message built by Celery). Each way runs twice,
  alternately, and its faster pass is kept; every pass's messages are counted on the transport.
  The ratio is taken inside each run.
* **Kill storm**: the fault scenario `tests/faults/test_kill_storm_shared_redis.py`, run by
  pytest once per run (`KILL_STORM_ENTRIES` entries every second, default 800; three
  replicas, broker = the claims' Redis, one replica SIGKILLed at a seeded random instant and
  restarted every 2–3 s, 16 times); expected, received, duplicated and missed slots come from
  the report the fault suite writes (`FAULTS_REPORT`, see `tests/faults/report.py`).
* Figures are the median over the runs, with min–max in parentheses.
"""


def write_report(
    runner: Runner, command: str, elapsed: float, started: str, info: dict[str, str]
) -> str:
    mode = runner.mode
    tables = report.markdown(runner.results, runner.notes)
    lines = [
        "# Benchmarks",
        "",
        "`celery_fork_scheduler` beside Celery's default `PersistentScheduler` and RedBeat, on a "
        "real Redis, in the same run with the same entries; with the plain `send_task` loop and "
        "Redis's pipelined `LPUSH` rate as references, the message template on Kombu's "
        "`memory://` and `filesystem://` transports, and the kill-storm fault scenario. "
        "Generated by `benchmarks/run.py`; do not edit by hand.",
        "",
        f"- command: `{command}` ({mode.name} mode, {mode.runs} run(s), "
        f"took {elapsed / 60:.1f} min, started {started})",
        "- machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        f"- windows: warm-up {mode.settings.warmup:g} s, measuring {mode.settings.window:g} s; "
        f"burst cap {mode.settings.burst_cap:g} s; start-up cap {mode.settings.startup_cap:g} s",
        "",
        "![benchmarks](img/benchmarks.png)",
        "",
        "## Results",
        "",
        tables,
        METHOD,
        "## Where the peers' configuration differs",
        "",
        "- `fork ×3` is three replicas on the same 2-core machine, so they share the CPU with "
        "each other and with Redis; its CPU figure is the sum of the three.",
        "- PersistentScheduler keeps its state in a local shelve file and uses Redis only as the "
        "broker; RedBeat and `fork` also keep state in Redis, which shows in commands per "
        "publish.",
        "- RedBeat holds its own lock (`redbeat_lock_timeout` = 5 × `beat_max_loop_interval`); "
        "only one RedBeat replica is meaningful, so it runs as one.",
        "- For every-second entries, PersistentScheduler and RedBeat compute the next run from "
        "the time the previous one was sent, `fork` from a fixed grid of slots (see lag †).",
        "- Scenarios run one after the other, never two at once; still, the figures of one "
        "invocation are only comparable with each other: another process loading the machine "
        "moves every absolute number (compare the ratios to the plain loop). Ratios to the "
        "plain loop are taken inside each run (the plain loop of the same run), then the "
        "median over the runs is shown.",
        "",
    ]
    text = "\n".join(lines) + _kept_section(ROOT / "docs" / "benchmarks.md")
    (ROOT / "docs").mkdir(exist_ok=True)
    (ROOT / "docs" / "benchmarks.md").write_text(text)
    report.plot(
        runner.results,
        ROOT / "docs" / "img" / "benchmarks.png",
        f"{mode.name} mode, {mode.runs} run(s), {info['nproc']} × {info['CPU']}, "
        f"Celery {info['Celery']}, {info['code']}",
    )
    raw = HERE / "results" / f"{mode.name}.json"
    raw.parent.mkdir(exist_ok=True)
    raw.write_text(json.dumps({"machine": info, "results": runner.results}, indent=1))
    return tables


#: The heading of the section ``benchmarks/scaling.py``'s results go in (written by hand, kept).
KEPT_SECTION = "## Replicas and Redis Cluster (issue 20)"


def _kept_section(path: Path) -> str:
    """The hand-written :data:`KEPT_SECTION` of the current report, to the end ("" if none)."""
    old = path.read_text() if path.exists() else ""
    start = old.find(KEPT_SECTION)
    return "\n" + old[start:] if start >= 0 else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller and shorter (< 3 min)")
    parser.add_argument("--runs", type=int, default=None, help="runs (default 3; --quick: 1)")
    args = parser.parse_args(argv)
    command = shlex.join(
        [os.path.relpath(sys.executable, ROOT), "benchmarks/run.py", *sys.argv[1:]]
    )
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    t0 = time.time()
    info = machine()  # before running: the code under test may change while the suite runs
    with tempfile.TemporaryDirectory(prefix="fork-bench-") as logs:
        mode = make_mode(args.quick, args.runs, Path(logs))
        runner = Runner(mode)
        runner.execute(*runner.plan())
        runner.largest()
        elapsed = time.time() - t0
        tables = write_report(runner, command, elapsed, started, info)
    print(tables)
    print(f"wrote docs/benchmarks.md and docs/img/benchmarks.png in {elapsed / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
