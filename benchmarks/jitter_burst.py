"""A burst of N crontab entries due on one minute, with and without ``jitter``: messages per
second over time (issue 22).

    python benchmarks/jitter_burst.py [--entries 10000] [--jitter 30] [--markdown FILE]

Each run starts one ``celery beat -S fork`` replica (a throwaway ``redis-server``, no worker)
shortly before a minute, samples the queue length every 20 ms and counts the messages that
arrive in each second after the minute. The jitter is ``fork_scheduler_default_jitter``, so
every entry gets it. Prints one bar chart per run (one scale for both) and writes them to
``benchmarks/results/jitter_burst.md`` (``--markdown``), which ``run.py``'s report keeps in
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import PEERS, BeatGroup, QueueSampler, Workspace, redis_server
from scenarios import next_boundary, sleep_until

#: Seconds before the minute at which beat starts (10 000 entries load in about 3 s).
MARGIN = 25.0
BAR_WIDTH = 50


def per_second(entries: int, jitter: float, logs: Path) -> list[int]:
    """Messages arriving in each whole second after the minute, up to the last one."""
    with redis_server() as (server, _):
        workspace = Workspace(logs, f"jitter-{jitter:g}")
        boundary = next_boundary(MARGIN)
        sleep_until(boundary - MARGIN)
        sampler = QueueSampler(server.url)
        sampler.start()
        group = BeatGroup(
            PEERS["fork1"], workspace, server.url, "cron", entries, BENCH_JITTER=str(jitter)
        ).start()
        try:
            sampler.wait_for(entries, boundary + jitter + 60, group.alive)
        finally:
            group.stop()
            sampler.stop()
        times = sampler.arrival_times(sampler.count)
    counts = [0] * (int(jitter) + 2)
    for moment in times:
        second = int(moment - boundary)
        if second < 0:
            continue
        if second >= len(counts):
            counts.extend([0] * (second + 1 - len(counts)))
        counts[second] += 1
    while len(counts) > 1 and counts[-1] == 0:
        counts.pop()
    return counts


def chart(title: str, counts: list[int], top: int) -> list[str]:
    """A text bar chart: one line per second, ``top`` messages the full width."""
    top = top or 1
    lines = [title]
    for second, count in enumerate(counts):
        bar = "#" * max(round(BAR_WIDTH * count / top), 1 if count else 0)
        lines.append(f"  {second:3d}-{second + 1:<3d}s {count:6d} {bar}")
    lines.append(f"  total {sum(counts)} messages, {len(counts)} s")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--jitter", type=float, default=30.0)
    parser.add_argument(
        "--markdown",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "jitter_burst.md",
        help="also write the charts here (kept in docs/benchmarks.md by run.py's report)",
    )
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="jitter-burst-"))
    runs = {0.0: per_second(args.entries, 0.0, logs)}
    runs[args.jitter] = per_second(args.entries, args.jitter, logs)
    out: list[str] = []
    top = max(max(counts, default=0) for counts in runs.values())  # one scale for both
    for jitter, counts in runs.items():
        title = f"{args.entries} crontab entries due on one minute, jitter {jitter:g} s"
        out += [*chart(title, counts, top), ""]
    print("\n".join(out))
    args.markdown.write_text("```text\n" + "\n".join(out).rstrip() + "\n```\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
