# ruff: noqa: RUF001
"""Replicas and Redis Cluster (issue 20): how the work divides over R replicas on one Redis,
and how the claims spread over a 3-master Redis Cluster.

    PYTHONPATH=. .venv/bin/python benchmarks/scaling.py [--runs 3] [--n 2000] [--burst 10000]

Every scenario gets its own throwaway Redis (and cluster) and real ``celery beat -S fork``
processes; the measuring tools are those of ``run.py`` (``harness.py``). Prints one Markdown
table per section; ``--markdown FILE`` also writes them to a file.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import redis  # noqa: E402
from celery import Celery  # noqa: E402
from harness import (  # noqa: E402
    BeatGroup,
    Peer,
    QueueSampler,
    Workspace,
    command_delta,
    commandstats,
    cpu_seconds,
    lag_summary,
    read_messages,
)
from redis.cluster import RedisCluster  # noqa: E402
from report import cell, median, table  # noqa: E402
from scenarios import duplicates, next_boundary, owners, sleep_until  # noqa: E402

from celery_fork_scheduler import Manager  # noqa: E402
from celery_fork_scheduler.testing.redis_server import RedisServer  # noqa: E402
from celery_fork_scheduler.testing.redis_topologies.cluster import RedisClusterNodes  # noqa: E402

Result = dict[str, Any]
#: Seconds to wait for a beat's first publish.
STARTUP_CAP = 30.0
#: Seconds after the minute by which a burst must be complete.
BURST_CAP = 30.0


# -- where the claims live ----------------------------------------------------------------------


@dataclass
class Topology:
    """The broker, the claims' Redis, and the nodes whose commands count as claim traffic."""

    kind: str  # "one" (broker and claims on one redis-server) or "cluster"
    broker_url: str
    claims_url: str
    node_urls: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def claims_client(self) -> redis.Redis | RedisCluster:
        if self.kind == "cluster":
            return RedisCluster.from_url(self.claims_url)
        return redis.Redis.from_url(self.claims_url)

    def node_stats(self) -> list[dict[str, int]]:
        """``INFO commandstats`` of every claims node."""
        return [_with_client(url, commandstats) for url in self.node_urls]

    def dbsizes(self) -> list[int]:
        return [_with_client(url, lambda client: int(client.dbsize())) for url in self.node_urls]

    def used_memory(self) -> list[int]:
        return [
            _with_client(url, lambda client: int(client.info("memory")["used_memory"]))
            for url in self.node_urls
        ]


def _with_client(url: str, read: Callable[[redis.Redis], Any]) -> Any:
    client = redis.Redis.from_url(url)
    try:
        return read(client)
    finally:
        client.close()


@contextmanager
def topology(kind: str) -> Iterator[Topology]:
    """One redis-server for everything, or a plain broker beside a 3-master cluster."""
    broker = RedisServer()
    cluster = RedisClusterNodes(3) if kind == "cluster" else None
    try:
        broker.start()
        if cluster is None:
            yield Topology(kind, broker.url, broker.url, [broker.url])
            return
        cluster.start()
        env = {"BENCH_CLAIMS_URL": cluster.url, "BENCH_CLUSTER": "1"}
        yield Topology(kind, broker.url, cluster.url, cluster.urls, env)
    finally:
        if cluster is not None:
            cluster.cleanup()
        broker.cleanup()


# -- one scenario -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    sizes: tuple[int, ...]  # N of the every-second cases (the cluster's: the first)
    burst: int
    warmup: float
    window: float
    margin: float
    logs: Path


def _group(topo: Topology, replicas: int, kind: str, n: int, settings: Settings) -> BeatGroup:
    peer = Peer(f"fork{replicas}", f"fork ×{replicas}", "fork", replicas, True)
    workspace = Workspace(settings.logs, f"{topo.kind}-{kind}-r{replicas}")
    return BeatGroup(peer, workspace, topo.broker_url, kind, n, **topo.env)


@dataclass
class Snapshot:
    """CPU per replica and commands per node at one instant."""

    at: float
    cpu: list[float]
    nodes: list[dict[str, int]]

    @classmethod
    def take(cls, group: BeatGroup, topo: Topology) -> Snapshot:
        return cls(time.time(), [cpu_seconds(pid) for pid in group.pids], topo.node_stats())


def _costs(first: Snapshot, last: Snapshot, published: int, replicas: int) -> Result:
    """CPU and Redis commands between two snapshots, per publish and per node."""
    seconds = last.at - first.at
    cpu = [b - a for a, b in zip(first.cpu, last.cpu, strict=True)]
    per_node = [
        sum(command_delta(a, b).values()) for a, b in zip(first.nodes, last.nodes, strict=True)
    ]
    total = sum(per_node)
    return {
        "cpu_per_1000": 1000 * sum(cpu) / published if published else None,
        "cpu_percent_per_replica": 100 * sum(cpu) / replicas / seconds,
        "commands_per_publish": total / published if published else None,
        "node_shares": [count / total for count in per_node] if total else [],
    }


def _shares(topo: Topology, group: BeatGroup, n: int) -> list[float]:
    """Each replica's share of the entries, from the state hashes' ``owner``, largest first."""
    client = topo.claims_client()
    try:
        claimed = Counter(owners(client, n).values())
    finally:
        client.close()
    return sorted((claimed.get(pid, 0) / n for pid in group.pids), reverse=True)


def every_second(topo: Topology, replicas: int, n: int, settings: Settings) -> Result:
    """N entries every second: rate, lag, CPU, commands, shares, duplicates over a window."""
    sampler = QueueSampler(topo.broker_url)
    sampler.start()
    group = _group(topo, replicas, "every", n, settings).start()
    try:
        if not sampler.wait_for(1, group.started_at + STARTUP_CAP, group.alive):
            return {"error": "no publish: " + group.log_tail(3)[-200:]}
        start = sampler.arrival_times(1)[0] + round(settings.warmup) - 0.4
        sleep_until(start)
        first = Snapshot.take(group, topo)
        sleep_until(start + settings.window)
        last = Snapshot.take(group, topo)
        time.sleep(0.1)
    finally:
        group.stop()
        sampler.stop()
    client = redis.Redis.from_url(topo.broker_url)
    messages = read_messages(client, sampler.count_at(last.at + 1.0))
    client.close()
    times = sampler.arrival_times(len(messages))
    window = [i for i, t in enumerate(times) if first.at <= t < last.at]
    slots = [messages[i].slot for i in window]
    lags = [times[i] - slot for i, slot in zip(window, slots, strict=True) if slot is not None]
    published = len(window)
    return {
        "published_per_s": published / (last.at - first.at),
        "percent": 100 * published / (last.at - first.at) / n,
        **_costs(first, last, published, replicas),
        **lag_summary(lags),
        "shares": _shares(topo, group, n),
        "duplicates": duplicates(messages),
    }


def burst(topo: Topology, replicas: int, settings: Settings, boundary: float) -> Result:
    """N crontab entries due on one minute: time to the last message, costs, shares."""
    n = settings.burst
    sampler = QueueSampler(topo.broker_url)
    sampler.start()
    sleep_until(boundary - settings.margin)
    group = _group(topo, replicas, "cron", n, settings).start()
    try:
        sleep_until(boundary - 0.3)
        first = Snapshot.take(group, topo)
        if not sampler.wait_for(n, boundary + BURST_CAP, group.alive):
            return {"error": f"{sampler.count} of {n} in {BURST_CAP:.0f} s"}
        last = Snapshot.take(group, topo)
        time.sleep(0.3)
    finally:
        group.stop()
        sampler.stop()
    client = redis.Redis.from_url(topo.broker_url)
    messages = read_messages(client)
    client.close()
    times = sampler.arrival_times(len(messages))
    slot_to_last = times[n - 1] - boundary
    return {
        "slot_to_last_s": slot_to_last,
        "published_per_s": n / slot_to_last,
        **_costs(first, last, n, replicas),
        **lag_summary(t - boundary for t in times[:n]),
        "shares": _shares(topo, group, n),
        "duplicates": duplicates(messages),
        "early": sum(1 for t in times if t < boundary),
        "keys_per_node": topo.dbsizes(),
    }


def runtime_spread(entries: int, shards: int) -> Result:
    """``Manager.add_many`` of ``entries`` runtime entries on the cluster, stored in ``shards``
    shards (``fork_scheduler_runtime_shards``): keys and memory per master."""
    with topology("cluster") as topo:
        before = topo.used_memory()
        app = Celery("spread", broker=topo.broker_url)
        app.conf.update(
            fork_scheduler_redis_url=topo.claims_url,
            fork_scheduler_redis_options={"cluster": True},
            fork_scheduler_runtime_shards=shards,
        )
        definitions = [
            {"name": f"r{i:06d}", "task": "bench.noop", "schedule": timedelta(hours=1)}
            for i in range(entries)
        ]
        started = time.perf_counter()
        Manager(app).add_many(definitions)
        seconds = time.perf_counter() - started
        grown = [b - a for a, b in zip(before, topo.used_memory(), strict=True)]
        return {
            "entries": entries,
            "shards": shards,
            "seconds": seconds,
            "dbsize": topo.dbsizes(),
            "memory": grown,
        }


# -- the plan -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    scenario: str  # "every" or "burst"
    kind: str  # "one" or "cluster"
    replicas: int
    n: int
    run: int


class Runner:
    """Runs every case; while waiting for a burst's minute, runs every-second cases that fit."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.results: list[tuple[Case, Result]] = []
        self.durations: dict[tuple[str, int, int], float] = {}

    def estimate(self, case: Case) -> float:
        s = self.settings
        return self.durations.get((case.kind, case.replicas, case.n), 12 + s.warmup + s.window)

    def execute(self, fillers: list[Case], bursts: list[Case]) -> None:
        pending = list(fillers)
        for case in bursts:
            setup = 5.0 if case.kind == "cluster" else 1.0
            boundary = next_boundary(self.settings.margin + setup)
            while True:
                slack = boundary - self.settings.margin - setup - time.time()
                filler = next((c for c in pending if self.estimate(c) <= slack - 2), None)
                if filler is None:
                    break
                pending.remove(filler)
                self.run(filler)
            self.run(case, boundary)
        for case in pending:
            self.run(case)

    def run(self, case: Case, boundary: float = 0.0) -> None:
        label = f"run {case.run}: {case.scenario} {case.kind} R={case.replicas} N={case.n}"
        print(f"[{time.strftime('%H:%M:%S')}] {label} ...", file=sys.stderr, flush=True)
        started = time.time()
        with topology(case.kind) as topo:
            if case.scenario == "every":
                result = every_second(topo, case.replicas, case.n, self.settings)
            else:
                result = burst(topo, case.replicas, self.settings, boundary)
        if case.scenario == "every":
            self.durations[(case.kind, case.replicas, case.n)] = time.time() - started
        self.results.append((case, result))
        shown = {k: v for k, v in result.items() if not isinstance(v, list)}
        print(f"    {_rounded(shown)}", file=sys.stderr, flush=True)

    def find(self, scenario: str, kind: str, replicas: int, n: int) -> list[tuple[Case, Result]]:
        return [
            (c, r)
            for c, r in self.results
            if (c.scenario, c.kind, c.replicas, c.n) == (scenario, kind, replicas, n)
        ]


def _rounded(values: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in values.items()}


def plan(
    runs: int, settings: Settings, replicas: Sequence[int], cluster: Sequence[int]
) -> tuple[list[Case], list[Case]]:
    """Every-second cases (each N on one Redis, the first N on the cluster) and bursts."""
    fillers: list[Case] = []
    bursts: list[Case] = []
    for run in range(1, runs + 1):
        for kind, counts, sizes in (
            ("one", replicas, settings.sizes),
            ("cluster", cluster, settings.sizes[:1]),
        ):
            fillers += [Case("every", kind, r, n, run) for n in sizes for r in counts]
            bursts += [Case("burst", kind, r, settings.burst, run) for r in counts]
    return fillers, bursts


# -- the tables ---------------------------------------------------------------------------------


def scenarios_of(settings: Settings, kind: str) -> list[tuple[str, int]]:
    """The (scenario, N) pairs measured on ``kind``."""
    sizes = settings.sizes if kind == "one" else settings.sizes[:1]
    return [*(("every", n) for n in sizes), ("burst", settings.burst)]


def add_ratios(runner: Runner, counts: Sequence[int]) -> None:
    """CPU and commands per publish ÷ R = 1 of the same run, scenario and N (one Redis)."""
    for scenario, n in scenarios_of(runner.settings, "one"):
        base = {c.run: r for c, r in runner.find(scenario, "one", 1, n)}
        for replicas in counts:
            for case, result in runner.find(scenario, "one", replicas, n):
                one = base.get(case.run, {})
                for name in ("cpu_per_1000", "commands_per_publish"):
                    if result.get(name) and one.get(name):
                        result[f"{name}_ratio"] = result[name] / one[name]


def shares_cell(results: Sequence[Result], name: str) -> str:
    """Median over the runs of each position of a list (largest first), as ``a/b/c``."""
    lists = [r[name] for r in results if r.get(name)]
    if not lists:
        return "—"
    return "/".join(f"{statistics.median(column):.2f}" for column in zip(*lists, strict=False))


def replicas_table(runner: Runner, scenario: str, n: int, counts: Sequence[int]) -> str:
    header = ["N", "R", "published/s"]
    header += ["% of demanded"] if scenario == "every" else ["slot → last message (s)"]
    header += [
        "lag p50 (s)",
        "lag p99 (s)",
        "CPU s / 1 000, all replicas",
        "× R = 1",
        "CPU per replica (% of a core)",
        "Redis cmds / publish",
        "× R = 1",
        "share per replica",
        "duplicates",
    ]
    rows = []
    for replicas in counts:
        results = [r for _, r in runner.find(scenario, "one", replicas, n)]
        second = "percent" if scenario == "every" else "slot_to_last_s"
        rows.append(
            [
                f"{n:,}".replace(",", " "),
                str(replicas),
                cell(results, "published_per_s", 0),
                cell(results, second, 1 if scenario == "every" else 2),
                cell(results, "lag_p50", 3),
                cell(results, "lag_p99", 3),
                cell(results, "cpu_per_1000", 3),
                cell(results, "cpu_per_1000_ratio", 2),
                cell(results, "cpu_percent_per_replica", 1),
                cell(results, "commands_per_publish", 2),
                cell(results, "commands_per_publish_ratio", 2),
                shares_cell(results, "shares"),
                cell(results, "duplicates", 0),
            ]
        )
    return table(header, rows)


def cluster_table(runner: Runner, scenario: str, n: int, counts: Sequence[int]) -> str:
    header = ["R", "published/s"]
    header += ["% of demanded"] if scenario == "every" else ["slot → last message (s)"]
    header += [
        "lag p50 (s)",
        "lag p99 (s)",
        "CPU s / 1 000, all replicas",
        "cluster cmds / publish",
        "claim traffic per master (share of commands)",
        "share per replica",
        "duplicates",
    ]
    header += ["keys per master after"] if scenario == "burst" else []
    rows = []
    for replicas in counts:
        results = [r for _, r in runner.find(scenario, "cluster", replicas, n)]
        second = "percent" if scenario == "every" else "slot_to_last_s"
        row = [
            str(replicas),
            cell(results, "published_per_s", 0),
            cell(results, second, 1 if scenario == "every" else 2),
            cell(results, "lag_p50", 3),
            cell(results, "lag_p99", 3),
            cell(results, "cpu_per_1000", 3),
            cell(results, "commands_per_publish", 2),
            shares_cell(results, "node_shares"),
            shares_cell(results, "shares"),
            cell(results, "duplicates", 0),
        ]
        if scenario == "burst":
            row.append(" / ".join(str(k) for k in results[-1].get("keys_per_node", [])))
        rows.append(row)
    return table(header, rows)


def spread_table(spreads: Sequence[Result]) -> str:
    header = [
        "runtime entries",
        "runtime shards",
        "add_many (s)",
        "DBSIZE per master",
        "memory added per master",
    ]
    rows = []
    for shards in sorted({result["shards"] for result in spreads}):
        runs = [result for result in spreads if result["shards"] == shards]
        last = runs[-1]
        rows.append(
            [
                f"{last['entries']:,}".replace(",", " "),
                str(shards),
                cell(runs, "seconds", 2),
                " / ".join(str(size) for size in last["dbsize"]),
                " / ".join(f"{grown / 2**20:.1f} MiB" for grown in last["memory"]),
            ]
        )
    return table(header, rows)


def goals_table(runner: Runner, counts: Sequence[int]) -> str:
    rows = []
    for scenario, n in scenarios_of(runner.settings, "one"):
        label = f"N = {n} every second" if scenario == "every" else f"burst of {n}"
        for replicas in (r for r in counts if r > 1):
            results = [r for _, r in runner.find(scenario, "one", replicas, n)]
            cpu = median(results, "cpu_per_1000_ratio")
            rows.append(_goal(f"{label}, R = {replicas}: CPU / 1 000 ≤ 1.3× R = 1", cpu, 1.3))
            if replicas == 3:
                commands = median(results, "commands_per_publish_ratio")
                rows.append(
                    _goal(f"{label}, R = 3: Redis cmds / publish ≤ 1.2× R = 1", commands, 1.2)
                )
    dups = sum(r.get("duplicates", 0) for _, r in runner.results)
    errors = sum(1 for _, r in runner.results if r.get("error"))
    rows.append(["every scenario: 0 duplicates", str(dups), "met" if dups == 0 else "**not met**"])
    rows.append(
        ["every scenario completed", f"{errors} failed", "met" if not errors else "**not met**"]
    )
    return table(["goal", "median", "verdict"], rows)


def _goal(text: str, value: float | None, limit: float) -> list[str]:
    if value is None:
        return [text, "—", "not measured"]
    return [text, f"{value:.2f}×", "met" if value <= limit else "**not met**"]


# -- main ---------------------------------------------------------------------------------------


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C, so every ``finally`` stops what it started."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--n", default="2000", help="entries every second (a list: 2000,1000)")
    parser.add_argument("--burst", type=int, default=10_000, help="crontab entries of a burst")
    parser.add_argument("--replicas", default="1,2,3,4", help="R on one Redis")
    parser.add_argument("--cluster-replicas", default="1,3", help="R on the cluster")
    parser.add_argument("--spread", type=int, default=20_000, help="runtime entries added")
    parser.add_argument(
        "--runtime-shards", default="1,12", help="fork_scheduler_runtime_shards of the spread"
    )
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--window", type=float, default=8.0)
    parser.add_argument("--margin", type=float, default=12.0, help="beat start before a burst")
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    counts = [int(r) for r in args.replicas.split(",") if r]
    cluster = [int(r) for r in args.cluster_replicas.split(",") if r]
    with tempfile.TemporaryDirectory(prefix="fork-scaling-") as logs:
        sizes = tuple(int(n) for n in args.n.split(","))
        settings = Settings(sizes, args.burst, args.warmup, args.window, args.margin, Path(logs))
        runner = Runner(settings)
        spreads = [
            runtime_spread(args.spread, int(shards))
            for shards in args.runtime_shards.split(",")
            if shards
            for _ in range(args.runs)
        ]
        runner.execute(*plan(args.runs, settings, counts, cluster))
    add_ratios(runner, counts)
    text = render(runner, counts, cluster, spreads)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


def render(
    runner: Runner, counts: Sequence[int], cluster: Sequence[int], spreads: Sequence[Result]
) -> str:
    parts: list[str] = []
    for kind, title, counts_of, make in (
        ("one", "R replicas on one Redis", counts, replicas_table),
        ("cluster", "Redis Cluster, 3 masters", cluster, cluster_table),
    ):
        for scenario, n in scenarios_of(runner.settings, kind):
            what = "entries every second" if scenario == "every" else "crontab entries on a minute"
            parts += [f"#### {title}: {n} {what}", make(runner, scenario, n, counts_of)]
    parts += [
        "#### Redis Cluster, 3 masters: runtime entries through `Manager.add_many`",
        spread_table(spreads),
        "#### Goals of issue 20",
        goals_table(runner, counts),
    ]
    return "\n\n".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
