"""Drawing one run from its seed: entries, policies, replicas, faults, edits.

Everything random in a run comes from ``random.Random(seed)`` here (and from the world's own
generator, seeded from the same seed), so a seed replays exactly.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from celery.schedules import crontab
from celery.schedules import schedule as celery_schedule

from celery_fork_scheduler.schedules import Interval, at, cron, every

from .model import POINTS, PublishFault, ReplicaFault, WorkerSetup, WorldEvent
from .redis_proc import datetime_to_us, us_to_datetime

SECOND = 1_000_000
#: Virtual start of every run: 2030-01-01T00:00:00Z plus a drawn offset (cron and daily
#: schedules then meet different minutes and hours).
BASE = 1_893_456_000 * SECOND


@dataclass
class Scenario:
    """One run, fully drawn."""

    seed: int
    t0: int
    t_end: int
    timezone: str
    max_loop_interval: int
    max_concurrent: int
    configs: dict[str, dict[str, dict[str, Any]]]
    initial_replicas: list[str]
    skews: dict[int, int]
    events: list[WorldEvent]
    replica_faults: list[ReplicaFault]
    publish_faults: list[PublishFault]
    run_durations: dict[str, int]
    runtime_names: list[str] = field(default_factory=list)
    families: dict[str, str] = field(default_factory=dict)
    cold_restarts: list[tuple[int, int]] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)
    workers: WorkerSetup = field(default_factory=lambda: WorkerSetup([("solo", 1)]))


INTERVALS = (1, 2, 3, 4, 5, 7, 10, 15, 30)


def _schedule(rng: random.Random, family: str, t0: datetime, zone: str) -> Any:
    seconds = rng.choice(INTERVALS)
    if family == "interval":
        return Interval(
            every=timedelta(seconds=seconds), phase=timedelta(milliseconds=rng.randrange(0, 1000))
        )
    if family == "every":
        return every(seconds).seconds
    if family == "celery_timedelta":
        return timedelta(seconds=seconds)
    if family == "celery_number":
        return float(seconds)
    if family == "celery_schedule":
        return celery_schedule(run_every=timedelta(seconds=seconds))
    if family == "cron6":
        step = rng.choice((1, 2, 3, 5, 10, 15, 20, 30))
        return cron(f"*/{step} * * * * *")
    if family == "cron5":
        return cron("* * * * *")
    if family == "crontab":
        return crontab(minute="*")
    if family == "daily":
        local = t0.astimezone(ZoneInfo(zone))
        times = sorted(
            {
                (local + timedelta(seconds=rng.randrange(20, 200))).time().replace(microsecond=0)
                for _ in range(rng.randrange(1, 4))
            }
        )
        return at(*[time(t.hour, t.minute, t.second) for t in times])
    if family == "every_minute":
        return every(1).minute
    raise AssertionError(family)


FAMILIES = (
    "interval",
    "every",
    "celery_timedelta",
    "celery_number",
    "celery_schedule",
    "cron6",
    "cron5",
    "crontab",
    "daily",
    "every_minute",
)


def _policies(rng: random.Random, t0: datetime, span: int) -> dict[str, Any]:
    policies: dict[str, Any] = {}
    roll = rng.random()
    if roll < 0.2:
        policies["singleton"] = True
    elif roll < 0.32:
        policies["overlap"] = "buffer_one"
    elif roll < 0.42:
        policies["overlap"] = "buffer_all"
    roll = rng.random()
    if roll < 0.08:
        policies["one_off"] = True
    elif roll < 0.18:
        policies["max_runs"] = rng.randrange(1, 6)
    policies["catchup"] = rng.choice(("latest", "latest", "all", "skip"))
    if rng.random() < 0.1:
        policies["catchup_window"] = rng.choice((10, 60, 600))
    if rng.random() < 0.2:
        policies["start_at"] = (
            t0 + timedelta(seconds=rng.randrange(5, span // SECOND))
        ).isoformat()
    if rng.random() < 0.2:
        end = t0 + timedelta(seconds=rng.randrange(20, span // SECOND))
        if "start_at" in policies and datetime.fromisoformat(policies["start_at"]) >= end:
            policies.pop("start_at")
        policies["end_at"] = end.isoformat()
    return policies


#: Jitters drawn for static entries (seconds): at most 1 s, the shortest period drawn.
JITTERS = (0.25, 0.5, 1.0)


def _jitter(rng: random.Random, entries: dict[str, dict[str, Any]], summary: list[str]) -> None:
    """Give some static entries a jitter, from a generator of its own (the rest of a seed's
    draw stays as it was before jitter existed)."""
    jittered = []
    for name, definition in entries.items():
        if rng.random() < 0.4:
            definition["jitter"] = rng.choice(JITTERS)
            jittered.append(f"{name}={definition['jitter']:g}s")
    if jittered:
        summary.append("jitter " + ", ".join(jittered))


def draw(seed: int) -> Scenario:
    """Draw the run of ``seed``."""
    rng = random.Random(seed)
    t0_us = BASE + rng.randrange(0, 86_400) * SECOND + rng.randrange(0, SECOND)
    t0 = us_to_datetime(t0_us)
    span = rng.randrange(100, 200) * SECOND
    zone = rng.choice(("UTC", "UTC", "Europe/Berlin", "America/New_York"))
    summary: list[str] = []

    entries: dict[str, dict[str, Any]] = {}
    families: dict[str, str] = {}
    durations: dict[str, int] = {}
    count = rng.randrange(5, 12)
    for index in range(count):
        family = rng.choice(FAMILIES)
        name = f"e{index:02d}-{family}"
        definition: dict[str, Any] = {
            "task": "sim.task",
            "schedule": _schedule(rng, family, t0, zone),
            "args": [index],
            **_policies(rng, t0, span),
        }
        if family.startswith("cron") and rng.random() < 0.3:
            definition["timezone"] = rng.choice(("Europe/Berlin", "Asia/Kolkata"))
        entries[name] = definition
        families[name] = family
        if definition.get("singleton") or definition.get("overlap") in ("buffer_one", "buffer_all"):
            durations[name] = rng.randrange(1, 25) * SECOND
    _jitter(random.Random(seed * 7919 + 3), entries, summary)
    _replacing(random.Random(seed * 7919 + 7), entries, summary)
    burst = rng.random() < 0.15
    cold: list[tuple[int, int]] = []
    events: list[WorldEvent] = []
    t_end = t0_us + span
    if burst or rng.random() < 0.15:
        # A cold restart: every replica down for a while, then the catch-up rules.
        name = "catchup-all"
        entries[name] = {
            "task": "sim.task",
            "schedule": Interval(every=timedelta(seconds=1)),
            "catchup": "all",
        }
        families[name] = "interval"
        outage = rng.randrange(520, 700) * SECOND if burst else rng.randrange(10, 120) * SECOND
        down_at = t0_us + rng.randrange(30, span // SECOND - 40) * SECOND
        cold.append((down_at, down_at + outage))
        t_end += outage
        summary.append(f"cold restart {outage / SECOND:.0f} s")

    configs = {"v1": dict(entries)}
    replicas = rng.randrange(2, 5)
    initial = ["v1"] * replicas
    rolling = rng.random() < 0.2
    if rolling:
        v2 = dict(entries)
        removed = rng.choice(sorted(entries))
        v2.pop(removed)
        v2["v2-only"] = {"task": "sim.task", "schedule": Interval(every=timedelta(seconds=3))}
        families["v2-only"] = "interval"
        changed = rng.choice(sorted(v2))
        v2[changed] = {**v2[changed], "args": ["v2"]}
        configs["v2"] = v2
        summary.append(f"rolling deploy (v2 drops {removed}, adds v2-only, changes {changed})")

    max_concurrent = rng.choice((0, 0, 0, rng.randrange(2, 6)))
    skews = {
        slot: rng.choice((0, 0, rng.randrange(-30 * SECOND, 30 * SECOND)))
        for slot in range(replicas)
    }

    replica_faults: list[ReplicaFault] = []
    publish_faults: list[PublishFault] = []
    first, last = t0_us + 8 * SECOND, t_end - 25 * SECOND

    def when() -> int:
        moment = rng.randrange(first, last)
        if rng.random() < 0.5:
            # At a slot boundary (most schedules fire on whole seconds): just before the
            # replicas' ticks, between them, or just after.
            moment = moment - moment % SECOND + rng.randrange(-3_000, 6_000)
        for down, up in cold:
            if down - 20 * SECOND <= moment <= up + 10 * SECOND:
                moment = up + rng.randrange(10, 20) * SECOND
        return min(moment, last)

    faults = rng.randrange(2, 9)
    for _ in range(faults):
        kind = rng.choice(
            (
                "kill",
                "kill",
                "freeze",
                "freeze",
                "sigterm",
                "idle_kill",
                "redis_empty",
                "redis_data",
                "failover",
                "client_pause",
                "slow",
                "publish_fail",
                "publish_uncertain",
                "publish_hang",
                "prepare_fail",
                "clock_step",
            )
        )
        slot = rng.randrange(replicas)
        at_ = when()
        restart = rng.randrange(0, 15 * SECOND) if rng.random() < 0.8 else None
        if kind in ("kill", "freeze", "sigterm"):
            point = rng.choice(POINTS)
            duration = (
                rng.choice((rng.randrange(100_000, 3 * SECOND), rng.randrange(8, 40) * SECOND))
                if kind == "freeze"
                else 0
            )
            replica_faults.append(
                ReplicaFault(
                    slot, at_, point, kind, duration, restart if kind != "freeze" else None
                )
            )
            summary.append(f"{kind} r{slot} at {point}")
        elif kind == "idle_kill":
            replica_faults.append(ReplicaFault(slot, at_, "idle", "kill", 0, restart))
            summary.append(f"kill r{slot} between ticks")
        elif kind in ("redis_empty", "redis_data"):
            down = rng.choice((0, rng.randrange(100_000, 8 * SECOND)))
            if rng.random() < 0.5:
                # Between the replicas' claims of one slot (they tick 0-2 ms apart), down long
                # enough for the others to back off and for runs to end meanwhile.
                at_ = at_ - at_ % SECOND + rng.randrange(200, 2_500)
                down = rng.randrange(300_000, 3 * SECOND)
            events.append(
                WorldEvent(at_, "redis_restart", {"keep_data": kind == "redis_data", "down": down})
            )
            summary.append(kind.replace("_", " restarted "))
        elif kind == "failover":
            lag = rng.randrange(200_000, 5 * SECOND)
            down = rng.randrange(0, 3 * SECOND)
            events.append(WorldEvent(at_, "lag_start", {"failover_after": lag, "down": down}))
            summary.append("failover to a lagging replica")
        elif kind == "client_pause":
            events.append(
                WorldEvent(at_, "client_pause", {"duration": rng.randrange(200_000, 8 * SECOND)})
            )
            summary.append("CLIENT PAUSE")
        elif kind == "slow":
            events.append(
                WorldEvent(
                    at_,
                    "slow",
                    {
                        "duration": rng.randrange(2, 20) * SECOND,
                        "latency": rng.randrange(5_000, 400_000),
                    },
                )
            )
            summary.append("slow Redis")
        elif kind.startswith("publish_") or kind == "prepare_fail":
            sub = {"publish_fail": "fail", "publish_uncertain": "uncertain"}.get(kind)
            sub = sub or ("hang" if kind == "publish_hang" else "prepare")
            publish_faults.append(
                PublishFault(
                    slot,
                    at_,
                    sub,
                    rng.randrange(500_000, 30 * SECOND) if sub == "hang" else 0,
                    rng.random() < 0.5,
                )
            )
            summary.append(f"publish {sub} on r{slot}")
        elif kind == "clock_step":
            step = rng.choice(
                (rng.randrange(-3600, 3600) * SECOND, rng.randrange(-5 * SECOND, 5 * SECOND))
            )
            events.append(WorldEvent(at_, "clock_step", {"slot": slot, "step": step}))
            summary.append(f"clock step r{slot}")

    if rng.random() < 0.1:
        victim = rng.choice(sorted(entries))
        events.append(
            WorldEvent(when(), "corrupt", {"entry": victim, "how": rng.choice(("hwm", "type"))})
        )
        summary.append(f"corrupted state of {victim}")

    for down, up in cold:
        for slot in range(replicas):
            events.append(
                WorldEvent(down + slot * 1000, "stop_replica", {"slot": slot, "how": "kill"})
            )
            events.append(
                WorldEvent(
                    up + slot * rng.randrange(0, 2 * SECOND),
                    "start_replica",
                    {"slot": slot, "config": "v1"},
                )
            )

    if rolling:
        moment = rng.randrange(first, max(first + 1, last - 40 * SECOND))
        for slot in range(replicas):
            moment += rng.randrange(3, 12) * SECOND
            events.append(WorldEvent(moment, "stop_replica", {"slot": slot, "how": "sigterm"}))
            events.append(
                WorldEvent(
                    moment + rng.randrange(0, 3 * SECOND),
                    "start_replica",
                    {"slot": slot, "config": "v2"},
                )
            )

    runtime_names = _runtime_ops(rng, t0, t0_us, last, zone, events, families, durations, summary)
    # The workers come from their own generator: the draws above stay what they were.
    workers = _workers(random.Random(seed * 31 + 7), entries, runtime_names, events, durations)
    workers_summary(workers, summary)
    # Backfills from a generator of their own, drawn last: nothing above moves.
    _backfills(
        random.Random(seed * 7919 + 5),
        sorted(configs["v1"]),
        runtime_names,
        sorted(durations),
        t0_us,
        last,
        events,
        summary,
    )
    if os.environ.get("SIM_DISABLES") == "1":  # (``--disables``: the other seeds stay as they were)
        # Disables from a generator of their own, drawn after the rest: nothing above moves.
        _disables(random.Random(seed * 7919 + 13), runtime_names, t0_us, last, events, summary)
    if os.environ.get("SIM_PARTITIONS") == "1":  # (``--partitions``: as ``--disables``)
        _partitions(random.Random(seed * 7919 + 17), replicas, first, last, events, summary)
    for event in events:
        if event.kind.startswith("worker"):
            summary.append(event.kind.replace("_", " "))

    events.sort(key=lambda event: event.at)
    return Scenario(
        seed=seed,
        t0=t0_us,
        t_end=t_end,
        timezone=zone,
        max_loop_interval=rng.choice((5, 300)),
        max_concurrent=max_concurrent,
        configs=configs,
        initial_replicas=initial,
        skews=skews,
        events=events,
        replica_faults=replica_faults,
        publish_faults=publish_faults,
        run_durations=durations,
        runtime_names=runtime_names,
        families=families,
        cold_restarts=cold,
        summary=summary,
        workers=workers,
    )


def _workers(
    rng: random.Random,
    entries: dict[str, dict[str, Any]],
    runtime_names: list[str],
    events: list[WorldEvent],
    durations: dict[str, int],
) -> WorkerSetup:
    """Workers, their settings, retries, time limits, and their faults."""
    pools = [
        (pool, 1 if pool == "solo" else rng.randrange(1, 4))
        for pool in (rng.choice(("prefork", "prefork", "solo")) for _ in range(rng.randrange(1, 4)))
    ]
    lease = rng.choice((5, 10, 20, 60))
    setup = WorkerSetup(
        pools,
        acks_late=rng.random() < 0.5,
        reject_on_worker_lost=rng.random() < 0.5,
        time_limit=rng.randrange(3, 20) * SECOND if rng.random() < 0.3 else None,
        fail_rate=rng.choice((0.0, 0.0, 0.05)),
        singleton_lease=lease,
        held_publish_fail=rng.choice((0.0, 0.0, 0.3)),
    )
    for name in [*sorted(entries), *runtime_names]:
        if rng.random() < 0.3:
            setup.retries[name] = (
                rng.randrange(1, 4),
                rng.uniform(0.3, 0.7),
                rng.randrange(SECOND // 2, 2 * lease * SECOND),
            )
    # Runtime entries with overlap="buffer_one" or "buffer_all" (their definitions are the
    # operator's).
    for name in runtime_names:
        if rng.random() < 0.3:
            durations.setdefault(name, rng.randrange(1, 8) * SECOND)
            overlap = rng.choice(("buffer_one", "buffer_all"))
            for event in events:
                definition = event.args.get("definition")
                if event.kind == "manage" and event.args.get("name") == name and definition:
                    definition.pop("singleton", None)
                    definition["overlap"] = overlap
    times = sorted(event.at for event in events) or [0]
    first, last = times[0], times[-1]
    for _ in range(rng.randrange(0, 4)):
        if last <= first:
            break
        moment = rng.randrange(first, last)
        kind = rng.choice(("worker_stop", "worker_kill", "worker_child_lost", "worker_child_lost"))
        if kind == "worker_stop":
            duration = rng.randrange(lease * SECOND // 2, (2 * lease + 5) * SECOND)
            events.append(WorldEvent(moment, kind, {"duration": duration}))
        elif kind == "worker_kill":
            restart = rng.randrange(SECOND, (lease + 10) * SECOND)
            events.append(
                WorldEvent(
                    moment, kind, {"index": rng.randrange(len(pools)), "restart_after": restart}
                )
            )
        else:
            events.append(WorldEvent(moment, kind, {"index": rng.randrange(len(pools))}))
    return setup


def workers_summary(setup: WorkerSetup, summary: list[str]) -> None:
    pools = ", ".join(f"{pool} x{n}" for pool, n in setup.pools)
    extras = [f"lease {setup.singleton_lease} s"]
    if setup.acks_late:
        extras.append(
            "acks_late" + (" +reject_on_worker_lost" if setup.reject_on_worker_lost else "")
        )
    if setup.time_limit:
        extras.append(f"time limit {setup.time_limit / SECOND:.0f} s")
    if setup.retries:
        extras.append(f"retries on {len(setup.retries)} entries")
    summary.append(f"workers {pools} ({', '.join(extras)})")


def _runtime_ops(
    rng: random.Random,
    t0: datetime,
    t0_us: int,
    last: int,
    zone: str,
    events: list[WorldEvent],
    families: dict[str, str],
    durations: dict[str, int],
    summary: list[str],
) -> list[str]:
    """Runtime entries added, edited, paused, resumed, triggered and removed by an operator,
    at instants near their slot boundaries."""
    names = []
    for index in range(rng.randrange(0, 4)):
        name = f"rt{index}"
        names.append(name)
        seconds = rng.choice((1, 2, 3, 5, 10))
        definition: dict[str, Any] = {
            "task": "sim.runtime",
            "schedule": Interval(every=timedelta(seconds=seconds)),
            "args": [0],
        }
        if rng.random() < 0.25:
            definition["singleton"] = True
            durations[name] = rng.randrange(1, 8) * SECOND
        if rng.random() < 0.15:
            definition["max_runs"] = rng.randrange(1, 5)
        families[name] = "runtime"
        events.append(
            WorldEvent(
                t0_us + rng.randrange(0, 3 * SECOND),
                "manage",
                {"op": "add", "name": name, "definition": definition},
            )
        )
        version = 0
        for _ in range(rng.randrange(1, 7)):
            op = rng.choice(
                ("update", "update", "reschedule", "pause", "resume", "trigger", "remove", "add")
            )
            moment = rng.randrange(t0_us + 5 * SECOND, last)
            # Near a slot boundary of the current interval: just before, at, or just after.
            period = int(definition["schedule"].every.total_seconds() * SECOND)
            boundary = moment - (moment % period)
            moment = boundary + rng.choice(
                (-1_100_000, -400_000, -2_000, 0, 1_500, 300_000, 900_000)
            )
            if op == "update":
                version += 1
                definition = {**definition, "args": [version]}
                events.append(
                    WorldEvent(
                        moment, "manage", {"op": "update", "name": name, "definition": definition}
                    )
                )
            elif op == "reschedule":
                seconds = rng.choice((1, 2, 3, 5))
                definition = {**definition, "schedule": Interval(every=timedelta(seconds=seconds))}
                events.append(
                    WorldEvent(
                        moment, "manage", {"op": "update", "name": name, "definition": definition}
                    )
                )
            elif op == "add":
                events.append(
                    WorldEvent(
                        moment, "manage", {"op": "add", "name": name, "definition": definition}
                    )
                )
            else:
                events.append(
                    WorldEvent(moment + rng.randrange(1, 999), "manage", {"op": op, "name": name})
                )
        summary.append(f"runtime entry {name}")
    return names


def _disables(
    rng: random.Random,
    names: list[str],
    t0_us: int,
    last: int,
    events: list[WorldEvent],
    summary: list[str],
) -> None:
    """In 7 runs of 10 with runtime entries, the operator disables one of them
    (``update(enabled=False)``) near a second's boundary, and in 2 of 3 enables it again 1-20 s
    later (adversary round 56: a claim asked about again, or a run held back, across a
    disable)."""
    if not names or rng.random() >= 0.7 or last - t0_us < 20 * SECOND:
        return
    name = rng.choice(names)
    moment = rng.randrange(t0_us + 5 * SECOND, last - 5 * SECOND)
    moment += -(moment % SECOND) + rng.choice((-400_000, -2_000, 0, 1_500, 300_000))
    events.append(WorldEvent(moment, "manage", {"op": "disable", "name": name}))
    summary.append(f"{name} disabled")
    if rng.random() < 2 / 3:
        again = min(last, moment + rng.randrange(1, 20) * SECOND + rng.randrange(0, SECOND))
        events.append(WorldEvent(again, "manage", {"op": "enable", "name": name}))
        summary.append(f"{name} enabled again")


def _partitions(
    rng: random.Random,
    replicas: int,
    first: int,
    last: int,
    events: list[WorldEvent],
    summary: list[str],
) -> None:
    """In 7 runs of 10, one or two replicas are cut off from Redis (not from the broker) for
    0.1-15 s, starting near a second's boundary: their calls are refused, time out (run by
    Redis or not), or run with the answer lost (guarantees.md: "Redis reachable from some
    replicas only")."""
    if rng.random() >= 0.7 or last - first < 10 * SECOND:
        return
    for _ in range(rng.choice((1, 1, 2))):
        slot = rng.randrange(replicas)
        moment = rng.randrange(first, last)
        moment += -(moment % SECOND) + rng.choice((-3_000, -500, 0, 700, 2_000, 400_000))
        duration = rng.choice((rng.randrange(100_000, 2 * SECOND), rng.randrange(2, 15) * SECOND))
        how = rng.choice(("refused", "timeout", "reply_lost"))
        events.append(
            WorldEvent(moment, "partition", {"slot": slot, "duration": duration, "how": how})
        )
        summary.append(f"r{slot} cut off ({how})")


def _replacing(rng: random.Random, entries: dict[str, dict[str, Any]], summary: list[str]) -> None:
    """About 4 in 10 ``singleton`` entries become ``overlap="cancel_other"`` or
    ``"terminate_other"`` (from a generator of their own: the other draws stay)."""
    for name, definition in entries.items():
        if definition.get("singleton") and rng.random() < 0.4:
            overlap = rng.choice(("cancel_other", "terminate_other"))
            definition.pop("singleton")
            definition["overlap"] = overlap
            summary.append(f"{name} {overlap}")


#: Publishes per second a drawn backfill is paced to.
BACKFILL_RATES = (1.0, 2.0, 5.0, 20.0, 200.0)


def _backfills(
    rng: random.Random,
    static: list[str],
    runtime_names: list[str],
    overlapping: list[str],
    t0_us: int,
    last: int,
    events: list[WorldEvent],
    summary: list[str],
) -> None:
    """``Manager.backfill`` runs of the operator in 3 runs of 5: 1-3 of them, each over a past
    range of a static or runtime entry (its slots published, skipped, missed or never decided;
    a recent one, inside what the history remembers, or an older one),
    or racing the replicas (a range ending now or just after: the latest decided slot, the one
    being decided, a future one); in 3 of 10 a second backfill of the same range starts 0-3 s
    later, often while the first one still sleeps between its paced publishes.

    Half of them go to an entry with a singleton policy, if any (its busy slots are what a
    backfill sends), and 4 in 10 of those with ``overlap="allow"`` (all its busy slots, runs
    without a marker). ``force`` is never drawn: the operator then vouches that the slots older
    than the history were not published, which the simulator cannot know."""
    if rng.random() >= 0.6 or last - t0_us < 60 * SECOND:
        return
    names = static + runtime_names
    singletons = [name for name in overlapping if name in names]
    for index in range(rng.randrange(1, 4)):
        overlap = None
        if singletons and rng.random() < 0.5:
            name = rng.choice(singletons)
            overlap = "allow" if rng.random() < 0.4 else None
        else:
            name = rng.choice(names)
        at_ = rng.randrange(t0_us + 30 * SECOND, last)
        if rng.random() < 0.35:
            end = at_ + rng.choice((0, 0, rng.randrange(0, 2 * SECOND)))
            start = end - rng.randrange(2, 15) * SECOND
            how = "racing"
        elif rng.random() < 0.6:
            # Recent: within what the entry's history (5 items in the simulator) remembers.
            end = at_ - rng.randrange(0, 6 * SECOND)
            start = end - rng.randrange(1, 10) * SECOND
            how = "recent"
        else:
            end = at_ - rng.randrange(0, 20 * SECOND)
            start = end - rng.randrange(1, 40) * SECOND
            how = "past"
        rate = rng.choice(BACKFILL_RATES)
        label = f"backfill#{index}"
        args = {
            "name": name,
            "start": start,
            "end": end,
            "rate": rate,
            "label": label,
            "overlap": overlap,
        }
        events.append(WorldEvent(at_, "backfill", args))
        summary.append(f"backfill {name} ({how}, {rate:g}/s{', allow' if overlap else ''})")
        if rng.random() < 0.3:
            later = at_ + rng.choice((0, rng.randrange(0, 3 * SECOND)))
            events.append(WorldEvent(later, "backfill", {**args, "label": f"{label}b"}))
            summary.append(f"backfill {name} again")


def to_us(moment: datetime) -> int:
    """Re-export for the checker."""
    return datetime_to_us(moment)
