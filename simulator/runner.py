"""Run seeds (in parallel worker processes, each with its own Redis) and report violations."""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from celery_fork_scheduler.testing.processes import remove_stale_faketime_files

from .model import Violation
from .redis_proc import FakeTimeRedis, SetupError, VirtualClockFile

SECOND = 1_000_000
#: Trace lines shown around a violation (the events touching its entry, and the faults).
TRACE_LIMIT = 120


@dataclass
class Result:
    """What one seed came to."""

    seed: int
    violations: list[Violation]
    trace: list[tuple[int, str, str]] = field(default_factory=list)
    t0: int = 0
    summary: list[str] = field(default_factory=list)
    published: int = 0
    seconds: float = 0.0


_SERVER: FakeTimeRedis | None = None


def _server() -> FakeTimeRedis:
    global _SERVER
    if _SERVER is None:
        workdir = Path(tempfile.mkdtemp(prefix="fork-sim-"))
        clock = VirtualClockFile(workdir / "faketime")
        _SERVER = FakeTimeRedis(workdir, clock)
        _SERVER.start()
    return _SERVER


def run_seed(seed: int, *, mutation: str | None = None) -> Result:
    """Draw and run one seed, check it, return the result."""
    from . import mutations
    from .checker import Checker
    from .scenario import draw
    from .world import World, install

    started = time.perf_counter()
    server = _server()
    scenario = draw(seed)
    # A fresh server for every run, started a day (virtual) before it: Redis's uptime, which
    # the claim script reads to bound a restore, is then the same whatever ran before.
    server.kill()
    server.drop_data()
    server.clock_file.set(scenario.t0 - 86_400 * SECOND)
    server.start()
    world = World(scenario, server)
    install(world)
    with mutations.applied(mutation):
        try:
            world.run()
        finally:
            world.finish()
        violations = Checker(world).check()
    return Result(
        seed,
        violations,
        world.trace,
        scenario.t0,
        scenario.summary,
        sum(1 for m in world.messages if m.source == "beat"),
        time.perf_counter() - started,
    )


def _run_quiet(args: tuple[int, str | None]) -> Result:
    seed, mutation = args
    try:
        return run_seed(seed, mutation=mutation)
    except SetupError:
        raise
    except BaseException as exc:  # the simulator itself failed: report it as a violation
        import traceback

        if isinstance(exc, KeyboardInterrupt):
            raise
        text = " | ".join(traceback.format_exception(exc)[-4:]).replace("\n", " ")
        return Result(seed, [Violation("simulator", "", f"simulator error: {text}")])


def _close_server() -> None:
    if _SERVER is not None:
        _SERVER.close()


def parse_seeds(text: str) -> list[int]:
    """``1-200``, ``5``, ``1,4,9-12``."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            low, high = part.split("-", 1)
            seeds.extend(range(int(low), int(high) + 1))
        elif part:
            seeds.append(int(part))
    return seeds


def shortest_trace(result: Result, violation: Violation) -> list[str]:
    """The trace lines that touch the violating entry, plus the world's faults around them."""
    lines = []
    for at, entry, text in result.trace:
        if violation.entry and entry not in ("", violation.entry):
            continue
        if not violation.entry and entry:
            continue
        lines.append(f"  {(at - result.t0) / SECOND:9.3f}s  {text}")
    if violation.slot is not None:
        # Keep the part of the story that leads to the slot: up to 60 s before it.
        from .redis_proc import datetime_to_us

        slot_us = datetime_to_us(violation.slot)
        lines = [
            line
            for line, (at, _, _) in zip(lines, _filtered(result, violation), strict=True)
            if at >= slot_us - 60 * SECOND
        ] or lines
    if len(lines) > TRACE_LIMIT:
        lines = [*lines[: TRACE_LIMIT // 2], "  ...", *lines[-TRACE_LIMIT // 2 :]]
    return lines


def _filtered(result: Result, violation: Violation) -> list[tuple[int, str, str]]:
    return [
        item
        for item in result.trace
        if not (violation.entry and item[1] not in ("", violation.entry))
        and not (not violation.entry and item[1])
    ]


def main(argv: list[str] | None = None) -> int:
    """``python scripts/simulate.py --seeds 1-200`` / ``--seed N --trace``."""
    if os.environ.get("PYTHONHASHSEED") != "0":
        # Set and dict orders of strings must not change between a run and its replay.
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    parser = argparse.ArgumentParser(description="Deterministic simulator of a scheduler cluster")
    parser.add_argument("--seeds", default="1-50", help="seeds to run: 1-200, or 3,7,10-12")
    parser.add_argument("--seed", type=int, help="run one seed")
    parser.add_argument("--trace", action="store_true", help="print the full event trace")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--mutation", help="re-introduce a known bug (see --list-mutations)")
    parser.add_argument("--list-mutations", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per seed")
    parser.add_argument(
        "--shared-broker",
        action="store_true",
        help="the broker is the claims' Redis: claims send their slots (one-step paths)",
    )
    parser.add_argument(
        "--runtime-shards",
        type=int,
        default=1,
        help="fork_scheduler_runtime_shards of every replica and the Manager",
    )
    parser.add_argument(
        "--disables",
        action="store_true",
        help="the operator also disables runtime entries (and enables them again)",
    )
    parser.add_argument(
        "--partitions",
        action="store_true",
        help="replicas are also cut off from Redis (not from the broker) for a while",
    )
    args = parser.parse_args(argv)
    if args.disables:
        os.environ["SIM_DISABLES"] = "1"  # read by simulator.scenario.draw
    if args.partitions:
        os.environ["SIM_PARTITIONS"] = "1"  # read by simulator.scenario.draw
    if args.runtime_shards != int(os.environ.get("SIM_RUNTIME_SHARDS", "1")):
        os.environ["SIM_RUNTIME_SHARDS"] = str(args.runtime_shards)  # read by simulator.world
        os.execv(sys.executable, [sys.executable, *sys.argv])
    if args.shared_broker and os.environ.get("SIM_SHARED_BROKER") != "1":
        os.environ["SIM_SHARED_BROKER"] = "1"  # read by simulator.world as it is imported
        os.execv(sys.executable, [sys.executable, *sys.argv])
    logging.disable(logging.CRITICAL)
    from . import mutations

    if args.list_mutations:
        for name, text in mutations.DESCRIPTIONS.items():
            print(f"{name:14} {text}")
        return 0
    if args.mutation is not None and args.mutation not in mutations.MUTATIONS:
        parser.error(f"unknown mutation {args.mutation!r}; known: {', '.join(mutations.MUTATIONS)}")
    seeds = [args.seed] if args.seed is not None else parse_seeds(args.seeds)
    started = time.perf_counter()
    results: list[Result] = []
    try:
        for result in _run_all(seeds, args.mutation, args.jobs):
            results.append(result)
            _print_result(result, args)
        unconfirmed = _replay_failures(results, args.mutation)
    finally:
        _close_server()
        remove_stale_faketime_files()  # each Redis under libfaketime leaves its files behind
    counted = [r for r in results if r.violations and r.seed not in unconfirmed]
    total = sum(len(r.violations) for r in counted)
    elapsed = time.perf_counter() - started
    if counted:
        print(f"seeds with violations: {' '.join(str(r.seed) for r in counted)}")
    if unconfirmed:
        print(
            f"seeds whose violations did not replay (not counted): "
            f"{' '.join(map(str, sorted(unconfirmed)))}"
        )
    print(f"({elapsed:.1f} s wall, {args.jobs} job(s))", file=sys.stderr)
    print(f"{len(results)} runs, {total} violations")
    return 1 if total else 0


def _run_all(seeds: list[int], mutation: str | None, jobs: int) -> Iterator[Result]:
    """Each seed in a process of its own (forked for it alone, as a replay is), ``jobs`` at a
    time: nothing a seed leaves in a process's memory reaches the next seed."""
    work = [(seed, mutation) for seed in seeds]
    if len(seeds) == 1:
        yield _run_quiet(work[0])
        return
    context = multiprocessing.get_context("fork")
    pool = context.Pool(max(jobs, 1), initializer=_init_worker, maxtasksperchild=1)
    try:
        yield from pool.imap(_run_quiet, work)
    finally:
        pool.close()
        pool.join()


def _replay_failures(results: list[Result], mutation: str | None) -> set[int]:
    """Run each failing seed again, alone, and return those whose violations differ.

    A seed is the whole world (faults, clocks, timings), so its violations replay exactly;
    one that does not came from outside the seeded world (the host's scheduling of Redis's
    own timers, say). It is printed with its trace, and not counted.
    """
    unconfirmed = set()
    for result in results:
        if not result.violations:
            continue
        replay = next(_run_all([result.seed], mutation, 1))
        if _texts(replay) != _texts(result):
            unconfirmed.add(result.seed)
            print(
                f"seed {result.seed}: the violations above did not replay "
                f"({len(replay.violations)} on replay); not counted"
            )
    return unconfirmed


def _texts(result: Result) -> list[str]:
    return sorted(f"{v.rule}|{v.text}" for v in result.violations)


def _init_worker() -> None:
    from multiprocessing.util import Finalize

    Finalize(None, _close_server, exitpriority=10)
    with contextlib.suppress(Exception):
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _modes(args: argparse.Namespace) -> str:
    """The options a replay of a seed needs besides the seed (its timeline depends on them)."""
    modes = [f" --mutation {args.mutation}"] if args.mutation else []
    modes += [" --shared-broker"] if args.shared_broker else []
    modes += [f" --runtime-shards {args.runtime_shards}"] if args.runtime_shards != 1 else []
    modes += [" --disables"] if args.disables else []
    modes += [" --partitions"] if args.partitions else []
    return "".join(modes)


def _print_result(result: Result, args: argparse.Namespace) -> None:
    if args.verbose or args.trace:
        took = "" if args.trace else f", {result.seconds:.2f} s"  # a replay prints the same
        print(
            f"seed {result.seed}: {len(result.violations)} violations, {result.published} "
            f"published{took}; {'; '.join(result.summary)}"
        )
    if args.trace:
        for at, _, text in result.trace:
            print(f"  {(at - result.t0) / SECOND:9.3f}s  {text}")
    for violation in result.violations:
        print(f"seed {result.seed}: VIOLATION [{violation.rule}] {violation.text}")
        if not args.trace:
            print(
                f"  replay: python scripts/simulate.py --seed {result.seed}{_modes(args)} --trace"
            )
            for line in shortest_trace(result, violation):
                print(line)
    sys.stdout.flush()
