# ruff: noqa: RUF002
"""Issue 19's "three replicas faster than one" alone: the burst scenario of ``run.py`` for
fork ×1 and fork ×3, alternated, without the rest of the suite (each burst waits for a whole
minute: about a minute per case).

    PYTHONPATH=benchmarks:. .venv/bin/python benchmarks/burst_replicas.py --n 10000 --runs 3

Prints each case (slot → first and last message, CPU per 1 000 publishes, each replica's
share) and, per run, three replicas' slot → last over one replica's.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

import scenarios
from harness import PEERS

#: Seconds between beat's start and the burst's minute (as in ``run.py``).
MARGIN = 12.0


def _settings(logs: Path) -> scenarios.Settings:
    return scenarios.Settings(
        warmup=2, window=8, startup_cap=30, burst_cap=20, idle_window=4, settle=1.5,
        plain_loop_count=10_000, ceiling_seconds=3, logs=logs,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="crontab entries of the burst")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    ratios = []
    with tempfile.TemporaryDirectory(prefix="fork-burst-") as logs:
        settings = _settings(Path(logs))
        for run in range(1, args.runs + 1):
            last = {}
            for key in ("fork1", "fork3"):
                boundary = scenarios.next_boundary(MARGIN + 3)
                result = scenarios.burst(PEERS[key], args.n, settings, boundary, MARGIN)
                last[key] = result["slot_to_last_s"]
                print(
                    f"run {run} {PEERS[key].label}: published {result['published']}, "
                    f"slot → first {result['slot_to_first_s']:.3f} s, "
                    f"slot → last {last[key] or float('nan'):.3f} s, "
                    f"CPU s / 1 000 {result['cpu_per_1000']:.3f}, shares {result['shares']}",
                    flush=True,
                )
            if last["fork1"] and last["fork3"]:
                ratios.append(last["fork3"] / last["fork1"])
                print(f"run {run}: three replicas ÷ one, slot → last: {ratios[-1]:.3f}")
    if ratios:
        print(f"median of {len(ratios)}: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
