"""Per-scenario counts of the fault suite: slots expected, received, duplicated, missed.

Each scenario builds a :class:`ScenarioReport` with :func:`build`, prints its line and keeps it
for the end-of-session summary (see ``conftest.py``). With ``FAULTS_REPORT=<file>`` set, every
line is also appended to that file as JSON; ``python tests/faults/report.py <file>`` prints
them again as a table.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

Window = tuple[datetime, datetime]


@dataclass(frozen=True)
class ScenarioReport:
    """What one fault scenario saw at the broker."""

    scenario: str
    #: (entry, slot) pairs that had to be published.
    expected: int
    #: Of those, the pairs that were published at least once.
    received: int
    #: Messages beyond the first for one (entry, slot), over everything published.
    duplicated: int
    #: Expected pairs never published ...
    missed: int
    #: ... of which inside a miss window the docs state for this fault (allowed) ...
    missed_in_window: int
    #: ... and outside any such window (must be 0).
    missed_outside: int
    #: Every message the broker got during the scenario.
    messages: int
    seconds: float
    note: str = ""
    #: Misses inside each stated window, in the order of the windows.
    missed_per_window: tuple[int, ...] = ()

    def line(self) -> str:
        text = (
            f"FAULTS {self.scenario}: expected={self.expected} received={self.received} "
            f"duplicated={self.duplicated} missed={self.missed} "
            f"(in stated window={self.missed_in_window}"
            + (f" {list(self.missed_per_window)}" if len(self.missed_per_window) > 1 else "")
            + f", outside={self.missed_outside}) "
            f"messages={self.messages} duration={self.seconds:.1f}s"
        )
        return f"{text} [{self.note}]" if self.note else text


def build(
    scenario: str,
    counts: Mapping[str, Mapping[str, int]],
    expected: Mapping[str, Iterable[datetime]],
    *,
    windows: Sequence[Window] = (),
    seconds: float,
    note: str = "",
) -> ScenarioReport:
    """Count ``counts`` (entry -> slot isoformat -> messages) against ``expected`` slots.

    A missed slot inside one of ``windows`` (inclusive) is a miss the docs allow for the fault.
    """
    total = received = in_window = outside = 0
    per_window = [0] * len(windows)
    for entry, slots in expected.items():
        seen = counts.get(entry, {})
        for slot in slots:
            total += 1
            if seen.get(slot.isoformat(), 0) > 0:
                received += 1
            elif any(start <= slot <= end for start, end in windows):
                in_window += 1
                for index, (start, end) in enumerate(windows):
                    if start <= slot <= end:
                        per_window[index] += 1
                        break
            else:
                outside += 1
    duplicated = sum(max(0, n - 1) for per_entry in counts.values() for n in per_entry.values())
    messages = sum(n for per_entry in counts.values() for n in per_entry.values())
    return ScenarioReport(
        scenario=scenario,
        expected=total,
        received=received,
        duplicated=duplicated,
        missed=in_window + outside,
        missed_in_window=in_window,
        missed_outside=outside,
        messages=messages,
        seconds=seconds,
        note=note,
        missed_per_window=tuple(per_window),
    )


def save(report: ScenarioReport, path: str | None = None) -> None:
    """Append ``report`` as one JSON line to ``path`` (default: ``$FAULTS_REPORT``, if set)."""
    path = path or os.environ.get("FAULTS_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(asdict(report)) + "\n")


def table(reports: Iterable[ScenarioReport]) -> str:
    """The reports as a fixed-width table."""
    rows = [("scenario", "expected", "received", "dup", "missed", "in win", "outside", "s")]
    for r in reports:
        rows.append(
            (
                r.scenario,
                str(r.expected),
                str(r.received),
                str(r.duplicated),
                str(r.missed),
                str(r.missed_in_window),
                str(r.missed_outside),
                f"{r.seconds:.1f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    )


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1:
        print("usage: python tests/faults/report.py <FAULTS_REPORT file>", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as lines:
        reports = [
            ScenarioReport(
                **{
                    **json.loads(line),
                    "missed_per_window": tuple(json.loads(line).get("missed_per_window", ())),
                }
            )
            for line in lines
            if line.strip()
        ]
    print(table(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
