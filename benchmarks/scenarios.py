"""The scenarios: each runs on its own throwaway Redis and returns a dict of figures.

* ``every_second`` — N entries every 1 s: rate, lag, CPU, RSS, start-up, Redis commands.
* ``burst`` — N ``crontab()`` entries due on the same minute: slot to last message.
* ``idle`` — N entries due in about a day, plus one probe entry every second: start-up to
  the probe's first publish, then CPU % and RSS.
* ``references`` — the plain ``send_task`` loop and pipelined ``LPUSH`` (the ceiling); the
  message template beside the plain loop on Kombu's ``memory://`` and ``filesystem://``.
* ``kill_storm`` — the fault scenario ``tests/faults/test_kill_storm_shared_redis.py`` (three
  replicas, one SIGKILLed every 2-3 s), run by pytest; its counts read from its report.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import redis
from harness import (
    QUEUE,
    BeatGroup,
    Message,
    Peer,
    QueueSampler,
    Workspace,
    command_delta,
    commandstats,
    lag_summary,
    read_messages,
    redis_server,
)
from redis.cluster import RedisCluster

HERE = Path(__file__).resolve().parent
#: The interval of the ``every_second`` entries.
INTERVAL = 1.0


@dataclass(frozen=True)
class Settings:
    """Durations and sizes of one invocation (``--quick`` or full)."""

    warmup: float
    window: float
    startup_cap: float
    burst_cap: float
    idle_window: float
    settle: float
    plain_loop_count: int
    ceiling_seconds: float
    logs: Path


def sleep_until(moment: float) -> None:
    delay = moment - time.time()
    if delay > 0:
        time.sleep(delay)


def _result(peer: Peer, scenario: str, n: int, **figures: Any) -> dict[str, Any]:
    return {"peer": peer.key, "scenario": scenario, "n": n, **figures}


def _per_publish(commands: dict[str, int], published: int) -> float | None:
    return sum(commands.values()) / published if published else None


def _scripts_per_publish(commands: dict[str, int], published: int) -> float | None:
    """Lua script calls (``EVALSHA``, ``EVAL``, ``FCALL``) per message."""
    scripts = sum(v for k, v in commands.items() if k.startswith(("evalsha", "eval", "fcall")))
    return scripts / published if published else None


def duplicates(messages: list[Message]) -> int:
    """Messages of an (entry, slot) pair already seen (only messages with a slot header)."""
    seen = Counter((m.entry, m.slot) for m in messages if m.slot is not None)
    return sum(count - 1 for count in seen.values())


# -- N entries every second -------------------------------------------------------------------


def every_second(peer: Peer, n: int, settings: Settings) -> dict[str, Any]:
    """Publish rate, dispatch lag and costs of N entries due every second."""
    with redis_server() as (server, client):
        workspace = Workspace(settings.logs, f"every-{peer.key}-{n}")
        sampler = QueueSampler(server.url)
        sampler.start()
        group = BeatGroup(peer, workspace, server.url, "every", n).start()
        try:
            if not sampler.wait_for(1, group.started_at + settings.startup_cap, group.alive):
                return _no_start(peer, "every", n, group, settings)
            first = sampler.arrival_times(1)[0]
            # Steady state: the window opens a warm-up after the first round (N messages: every
            # entry's first message, which a scheduler with message templates builds through
            # Celery), or after the start-up cap when that round takes longer. Off the first
            # publish by a whole number of seconds less 0.4 s, so that the window falls
            # between two seconds' batches rather than through one.
            round_done = sampler.wait_for(n, first + settings.startup_cap, group.alive)
            first_round = sampler.arrival_times(n)[-1] - first if round_done else None
            waited = first_round if first_round is not None else time.time() - first
            start = first + math.ceil(waited) + round(settings.warmup) - 0.4 * INTERVAL
            end = start + settings.window
            sleep_until(start)
            cpu0, commands0 = group.cpu(), commandstats(client)
            sleep_until(end)
            cpu1, commands1 = group.cpu(), commandstats(client)
            memory = group.memory()
            time.sleep(2 * sampler.interval)
        finally:
            group.stop()
            sampler.stop()
        total = sampler.count_at(end + 1.0)
        messages = read_messages(client, total)
    times = sampler.arrival_times(len(messages))
    in_window = [i for i, t in enumerate(times) if start <= t < end]
    published = len(in_window)
    lags = _lags(messages, times, peer.has_slot_header)
    served = Counter(messages[i].entry for i in in_window)
    commands = command_delta(commands0, commands1)
    return _result(
        peer,
        "every",
        n,
        demanded_per_s=n / INTERVAL,
        published_per_s=published / settings.window,
        startup_s=first - group.started_at,
        first_round_s=first_round,
        first_round_over=None if first_round is not None else settings.startup_cap,
        cpu_per_1000=1000 * (cpu1 - cpu0) / published if published else None,
        peak_rss_mib=memory.get("VmHWM", 0) / 1024,
        commands_per_publish=_per_publish(commands, published),
        scripts_per_publish=_scripts_per_publish(commands, published),
        commands=dict(list(commands.items())[:8]),
        starved=n - len(served),
        min_per_entry=min(served.values()) if len(served) == n else 0,
        max_per_entry=max(served.values(), default=0),
        duplicates=duplicates(messages),
        lag_kind="slot" if peer.has_slot_header else "previous+interval",
        **lag_summary(lags[i] for i in in_window),
    )


def _lags(messages: list[Message], times: list[float], has_slot: bool) -> list[float]:
    """publish - slot; without a slot header, publish - (previous publish of the entry + 1 s)."""
    if has_slot:
        pairs = zip(messages, times, strict=True)
        return [t - m.slot if m.slot is not None else math.nan for m, t in pairs]
    previous: dict[str, float] = {}
    lags: list[float] = []
    for message, moment in zip(messages, times, strict=True):
        before = previous.get(message.entry)
        lags.append(moment - (before + INTERVAL) if before is not None else math.nan)
        previous[message.entry] = moment
    return lags


def _no_start(
    peer: Peer, scenario: str, n: int, group: BeatGroup, settings: Settings
) -> dict[str, Any]:
    memory = group.memory()
    reason = (
        f"no publish within {settings.startup_cap:.0f} s of start"
        if group.alive()
        else "beat exited: " + group.log_tail(3).replace("\n", " / ")[-300:]
    )
    return _result(
        peer,
        scenario,
        n,
        error=reason,
        startup_s=None,
        startup_over=settings.startup_cap,
        peak_rss_mib=memory.get("VmHWM", 0) / 1024,
    )


# -- a burst of cron entries due on the same minute -------------------------------------------


def next_boundary(margin: float) -> float:
    """The first whole minute at least ``margin`` seconds from now."""
    return math.ceil((time.time() + margin) / 60) * 60


def burst(peer: Peer, n: int, settings: Settings, boundary: float, margin: float) -> dict[str, Any]:
    """Start ``margin`` s before ``boundary``; time from the minute to the N-th message."""
    with redis_server() as (server, client):
        workspace = Workspace(settings.logs, f"burst-{peer.key}-{n}")
        sleep_until(boundary - margin)
        sampler = QueueSampler(server.url)
        sampler.start()
        group = BeatGroup(peer, workspace, server.url, "cron", n).start()
        try:
            sleep_until(boundary - 0.3)
            cpu0, commands0 = group.cpu(), commandstats(client)
            early = sampler.count
            deadline = boundary + settings.burst_cap
            if not sampler.wait_for(1, boundary + 10, group.alive):
                # Start-up ran past the minute: the entries wait for the next one.
                boundary += 60
                deadline += 60
            sampler.wait_for(n, deadline, group.alive)
            cpu1, commands1 = group.cpu(), commandstats(client)
            memory = group.memory()
            time.sleep(0.3)
        finally:
            group.stop()
            sampler.stop()
        messages = read_messages(client)
        claimed_by = owners(client, n) if peer.scheduler == "fork" else {}
    times = sampler.arrival_times(len(messages))
    slots = [m.slot for m in messages if m.slot is not None]
    minute = min(slots) if slots else (math.floor(times[0] / 60) * 60 if times else boundary)
    in_burst = [i for i, t in enumerate(times) if minute <= t <= minute + settings.burst_cap]
    published = len(in_burst)
    first = times[in_burst[0]] if in_burst else None
    last = times[in_burst[-1]] if in_burst else None
    commands = command_delta(commands0, commands1)
    shares = {
        f"replica{group.pids.index(pid) + 1}": count / n
        for pid, count in Counter(claimed_by.values()).items()
        if pid in group.pids
    }
    return _result(
        peer,
        "burst",
        n,
        published=published,
        complete=published >= n,
        slot_to_first_s=(first - minute) if first is not None else None,
        slot_to_last_s=(last - minute) if published >= n and last is not None else None,
        slot_to_last_over=settings.burst_cap if published < n else None,
        burst_rate=published / (last - minute) if last and last > minute else None,
        published_before_minute=early,
        cpu_per_1000=1000 * (cpu1 - cpu0) / published if published else None,
        peak_rss_mib=memory.get("VmHWM", 0) / 1024,
        commands_per_publish=_per_publish(commands, published),
        scripts_per_publish=_scripts_per_publish(commands, published),
        commands=dict(list(commands.items())[:8]),
        duplicates=duplicates(messages),
        shares=shares,
        **lag_summary(times[i] - minute for i in in_burst),
    )


def owners(client: redis.Redis | RedisCluster, n: int) -> dict[str, int]:
    """Which replica (pid) claimed each entry's slot, from our state hashes."""
    try:
        from celery_fork_scheduler.keys import Keys

        keys = Keys("scheduler:")
        pipe = client.pipeline(transaction=False)
        for i in range(n):
            pipe.hget(keys.state(f"e{i:06d}"), "owner")
        found: dict[str, int] = {}
        for i, owner in enumerate(pipe.execute()):
            if owner:
                found[f"e{i:06d}"] = int(owner.decode().split(":")[-2])
        return found
    except (ImportError, redis.RedisError, ValueError, IndexError):
        return {}


# -- idle entries -----------------------------------------------------------------------------


def idle(peer: Peer, n: int, settings: Settings) -> dict[str, Any]:
    """N entries due in ~23 h and one probe entry every 1 s: start-up, idle CPU and RSS."""
    daily = datetime.now(timezone.utc) - timedelta(hours=1)
    with redis_server() as (server, _client):
        workspace = Workspace(settings.logs, f"idle-{peer.key}-{n}")
        sampler = QueueSampler(server.url)
        sampler.start()
        group = BeatGroup(
            peer, workspace, server.url, "idle", n, BENCH_DAILY_AT=f"{daily:%H:%M}"
        ).start()
        try:
            if not sampler.wait_for(1, group.started_at + settings.startup_cap, group.alive):
                return _no_start(peer, "idle", n, group, settings)
            first = sampler.arrival_times(1)[0]
            sleep_until(first + settings.settle)
            settled = _settle(group, peer.replicas, settings.startup_cap) - first
            cpu0, t0 = group.cpu(), time.time()
            time.sleep(settings.idle_window)
            cpu1, t1 = group.cpu(), time.time()
            memory = group.memory()
            probes = sampler.count
        finally:
            group.stop()
            sampler.stop()
    return _result(
        peer,
        "idle",
        n,
        startup_s=first - group.started_at,
        settled_s=settled,
        cpu_percent=100 * (cpu1 - cpu0) / (t1 - t0),
        rss_mib=memory.get("VmRSS", 0) / 1024,
        peak_rss_mib=memory.get("VmHWM", 0) / 1024,
        rss_kib_per_entry=memory.get("VmRSS", 0) / n,
        probe_messages=probes,
    )


#: A beat is idle once a second of its life costs less than this share of a core.
IDLE_CPU_SHARE = 0.05


def _settle(group: BeatGroup, replicas: int, cap: float) -> float:
    """Wait until the start-up work that goes on after the first publish (start-up checks and
    catch-up of every entry) is done — a second costing under :data:`IDLE_CPU_SHARE` of a core
    per replica — or ``cap`` seconds; returns the instant (epoch seconds)."""
    deadline = time.time() + cap
    cpu = group.cpu()
    while time.time() < deadline:
        time.sleep(1)
        now = group.cpu()
        if now - cpu < IDLE_CPU_SHARE * replicas:
            break
        cpu = now
    return time.time()


# -- references -------------------------------------------------------------------------------


def references(settings: Settings) -> dict[str, Any]:
    """The plain ``send_task`` loop and Redis's own rate for pipelined ``LPUSH``."""
    with redis_server() as (server, client):
        count = settings.plain_loop_count
        done = subprocess.run(
            [sys.executable, str(HERE / "plain_loop.py"), server.url, str(count)],
            capture_output=True,
            text=True,
            check=True,
        )
        loop = json.loads(done.stdout.strip().splitlines()[-1])
        queued = client.llen(QUEUE)
        message = client.lindex(QUEUE, 0) or b""
        client.delete(QUEUE)
        ceiling = _pipelined_lpush(client, message, settings.ceiling_seconds)
        bench = _redis_benchmark(server.port, len(message))
    templates: dict[str, float] = {}
    for url, messages in (("memory://", count), ("filesystem://", count // 2)):
        path = _template_path(url, messages)
        for name in ("plain_per_s", "template_per_s", "celery_per_s"):
            templates[f"{path['transport']}_{name}"] = path[name]
    return {
        "scenario": "references",
        "plain_loop_per_s": loop["count"] / loop["seconds"],
        "plain_loop_10k_s": loop["seconds"] * 10_000 / loop["count"],
        "plain_loop_cpu_per_1000": 1000 * loop["cpu"] / loop["count"],
        "plain_loop_queued": queued,
        "message_bytes": len(message),
        "ceiling_per_s": ceiling,
        "redis_benchmark_per_s": bench,
        **templates,
    }


def _template_path(url: str, count: int) -> dict[str, Any]:
    """``template_path.py``: plain loop, template path and Celery path on one transport."""
    done = subprocess.run(
        [sys.executable, str(HERE / "template_path.py"), url, str(count)],
        capture_output=True,
        text=True,
        check=True,
        cwd=HERE.parent,
    )
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def _pipelined_lpush(client: redis.Redis, message: bytes, seconds: float) -> float:
    """LPUSH ``message`` 1000 per pipeline for ``seconds``; messages per second."""
    per_pipeline = 1000
    pushed = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        pipe = client.pipeline(transaction=False)
        for _ in range(per_pipeline):
            pipe.lpush("ceiling", message)
        pipe.execute()
        pushed += per_pipeline
        if pushed % 50_000 == 0:
            client.delete("ceiling")
    return pushed / (time.perf_counter() - started)


def _redis_benchmark(port: int, size: int) -> float | None:
    """``redis-benchmark -t lpush -P 1000 -c 1`` with messages of ``size`` bytes, if installed."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return None
    done = subprocess.run(
        [
            binary,
            "-p",
            str(port),
            "-t",
            "lpush",
            "-P",
            "1000",
            "-c",
            "1",
            "-n",
            "200000",
            *("-d", str(size), "--csv", "-q"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    for line in done.stdout.splitlines():
        cells = [cell.strip('"') for cell in line.split(",")]
        if cells and cells[0].upper() == "LPUSH":
            return float(cells[1])
    return None


# -- the kill storm (a fault scenario) ---------------------------------------------------------

#: The fault scenario run by ``kill_storm``.
KILL_STORM_TEST = "tests/faults/test_kill_storm_shared_redis.py"


def kill_storm(entries: int, logs: Path) -> dict[str, Any]:
    """Run the kill-storm fault test with ``entries`` entries; its counts from its report."""
    report = Path(tempfile.mkdtemp(prefix="kill-storm-", dir=logs)) / "faults.jsonl"
    env = {**os.environ, "FAULTS_REPORT": str(report), "KILL_STORM_ENTRIES": str(entries)}
    started = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", KILL_STORM_TEST],
        capture_output=True,
        text=True,
        cwd=HERE.parent,
        env=env,
        timeout=600,
    )
    lines = report.read_text().splitlines() if report.exists() else []
    figures: dict[str, Any] = {
        "scenario": "kill_storm",
        "peer": "fork3",
        "n": entries,
        "passed": done.returncode == 0,
        "test_seconds": time.time() - started,
    }
    if not lines:
        tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
        return {**figures, "error": "no report: " + " / ".join(tail)[-300:]}
    found = json.loads(lines[-1])
    return {
        **figures,
        "expected": found["expected"],
        "received": found["received"],
        "duplicated": found["duplicated"],
        "missed": found["missed"],
        "kills": found["note"].count("kill beat-"),
        "seconds": found["seconds"],
    }
