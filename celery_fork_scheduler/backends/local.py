"""The embedded single-replica backend: claims in process memory, high-water marks in a file.

It needs no Redis. It does not protect several replicas from each other: with it, run exactly
one ``celery beat``. The file keeps the high-water marks across restarts so that a restarted
beat fires each overdue entry once, as Celery's own scheduler does.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .base import (
    Claim,
    ClaimOutcome,
    ClaimResult,
    HighWaterMark,
    Restart,
    from_epoch_us,
    replica_identity,
)

if TYPE_CHECKING:
    from ..outages import Outage

#: Version of the state file's layout; an unknown version is an error, never a silent reset.
STATE_SCHEMA = 1


class LocalBackend:
    """Claims for a single replica; see the module docstring."""

    protects_replicas = False

    def __init__(self, state_path: str | os.PathLike[str] | None) -> None:
        self.replica_id = replica_identity()
        self.state_path = Path(state_path) if state_path is not None else None
        state = self._load()
        marks = state.get("high_water_marks", {})
        self._marks: dict[str, int] = {str(name): int(value) for name, value in marks.items()}
        #: Runs claimed per entry, for ``max_runs`` / ``one_off``.
        self._runs: dict[str, int] = {str(k): int(v) for k, v in state.get("runs", {}).items()}
        #: Entries that used up their ``max_runs``: name -> the max_runs they finished under.
        self._finished: dict[str, int] = {
            str(k): int(v) for k, v in state.get("finished", {}).items()
        }
        self._unsent: set[tuple[str, int]] = set()
        self._dirty = False

    def describe(self) -> str:
        """The startup banner line."""
        where = f"state file {self.state_path}" if self.state_path else "no state file"
        return f"local (single replica, {where})"

    def _load(self) -> dict[str, Any]:
        if self.state_path is None or not self.state_path.exists():
            return {}
        try:
            data = json.loads(self.state_path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the state file {self.state_path}: {exc}") from None
        if not isinstance(data, dict) or data.get("schema") != STATE_SCHEMA:
            raise ConfigError(
                f"state file {self.state_path} has an unknown schema "
                f"(expected {STATE_SCHEMA}); move it away to start afresh"
            )
        return data

    def last_restart(self) -> Restart | None:
        """None: the marks are this process's own (and its state file's)."""
        return None

    def high_water_marks(self, entries: Sequence[str]) -> Mapping[str, HighWaterMark]:
        """The latest claimed slot of each known entry; unsent claims of this process."""
        marks = {}
        for name in entries:
            if name not in self._marks:
                continue
            unsent = sorted(slot for entry, slot in self._unsent if entry == name)
            marks[name] = HighWaterMark(
                from_epoch_us(self._marks[name]),
                sent=self._marks[name] not in unsent,
                unsent=tuple(from_epoch_us(slot) for slot in unsent),
                finished=name in self._finished,
            )
        return marks

    def claim(self, claims: Sequence[Claim]) -> list[ClaimResult]:
        """Claim each slot later than its entry's high-water mark."""
        results = []
        for claim in claims:
            slot_us = claim.slot_us
            if slot_us > self._marks.get(claim.entry, -1) and not claim.takeover:
                self._marks[claim.entry] = slot_us
                self._dirty = True
                if claim.excluded:
                    results.append(ClaimResult(claim, ClaimOutcome.EXCLUDED))
                    continue
                runs = self._runs.get(claim.entry, 0)
                if claim.max_runs and runs >= claim.max_runs:
                    self._finished[claim.entry] = claim.max_runs
                    results.append(ClaimResult(claim, ClaimOutcome.FINISHED))
                    continue
                self._finished.pop(claim.entry, None)
                self._runs[claim.entry] = runs + 1
                self._unsent.add((claim.entry, slot_us))
                results.append(ClaimResult(claim, ClaimOutcome.WON))
            elif (claim.entry, slot_us) in self._unsent:
                results.append(ClaimResult(claim, ClaimOutcome.WON))  # publishing is retried
            else:
                results.append(ClaimResult(claim, ClaimOutcome.CLAIMED))
        return results

    def begin_publish(self, claims: Sequence[Claim]) -> list[bool]:
        """Every won claim is still held: no other replica shares this backend."""
        return [True] * len(claims)

    def end_fence(self, claims: Sequence[Claim]) -> None:
        """Nothing to lift: no other replica shares this backend."""

    def mark_sent(self, claims: Sequence[Claim], outcome: str = "sent") -> None:
        """Forget the unsent claims that were published (or maybe published: "uncertain")."""
        for claim in claims:
            self._unsent.discard((claim.entry, claim.slot_us))

    def mark_skipped(self, claims: Sequence[Claim], reason: str) -> None:
        """Forget the unsent claims that will not be published; their runs do not count."""
        for claim in claims:
            if (claim.entry, claim.slot_us) in self._unsent:
                self._runs[claim.entry] = max(self._runs.get(claim.entry, 1) - 1, 0)
        self.mark_sent(claims)

    def record_failure(self, claim: Claim, error: BaseException) -> None:
        """Forget the claim (nobody publishes it); no history without Redis: see beat's log."""
        self._unsent.discard((claim.entry, claim.slot_us))

    def take_cap_places(self, claims: Sequence[Claim], cap: int) -> list[bool]:
        """No cap without Redis: workers cannot report the end of a run to this process."""
        return [True] * len(claims)

    def server_time(self) -> datetime:
        """This host's clock: there is no other."""
        return datetime.now(timezone.utc)

    def record_outage(self, outage: Outage) -> None:
        """The local backend never goes down: nothing to keep."""

    def runtime_store(self) -> None:
        """No runtime entries without Redis."""

    def sync(self) -> None:
        """Write the high-water marks to the state file atomically, if they changed."""
        if self.state_path is None or not self._dirty:
            return
        payload = json.dumps(
            {
                "schema": STATE_SCHEMA,
                "high_water_marks": self._marks,
                "runs": self._runs,
                "finished": self._finished,
            }
        )
        directory = self.state_path.parent
        fd, tmp = tempfile.mkstemp(prefix=self.state_path.name, dir=directory)
        with os.fdopen(fd, "w") as handle:
            handle.write(payload)
        os.replace(tmp, self.state_path)
        self._dirty = False

    def close(self) -> None:
        """Persist the marks."""
        self.sync()
