"""What one tick works on: due slots with their claims, grouped by the queue item that asked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .backends import Claim, ClaimResult
from .entry import Entry
from .errors import BackendUnavailableError
from .timequeue import QueueItem


@dataclass(frozen=True, slots=True)
class DueSlot:
    """One slot of one entry that this tick will try to claim and publish."""

    entry: Entry
    claim: Claim
    #: True when the run holds a place under ``fork_scheduler_max_concurrent``.
    capped: bool = False
    #: True when another replica owns the entry (this one asks after the owner's grace, and
    #: mostly hears ``claimed``): its claim does not carry the message.
    foreign: bool = False
    #: The evaluated args and kwargs of a lazy entry that holds runs back, made for its
    #: claim's held run: published with them if won (called once per claim: round 63).
    arguments: tuple[Sequence[Any], Mapping[str, Any]] | None = None


@dataclass(slots=True)
class Work:
    """What one due queue item asks for: slots to claim, and the entry whose next slot
    follows them (none for a retry), up to ``until`` for an earlier definition."""

    item: QueueItem
    due: list[DueSlot]
    follow: Entry | None
    until: datetime | None = None
    #: The instant up to which the entry's slots were decided (now, or now minus the owner's
    #: grace for another replica's entry; with jitter, just before a slot still waiting for
    #: its offset): the next slot follows it.
    horizon: datetime | None = None
    #: The owner whose progress covered these slots: the next one is parked under it.
    park_under: str | None = None
    #: The slots to claim, oldest first, before their claims are made (:attr:`due`): a
    #: replica too far behind sheds all but the latest first, and makes no claim for them.
    slots: list[datetime] = field(default_factory=list)
    #: The definition the slots are claimed under (an earlier one up to its change).
    claims_of: Entry | None = None
    #: Another replica's entry whose owner fell a grace behind.
    foreign: bool = False


@dataclass(slots=True)
class ChunkClaim:
    """One chunk of a tick whose claim was started: its works, their due slots (oldest
    first, as claimed) and the claim's results to come."""

    works: list[Work]
    due: list[DueSlot]
    results: Future[list[ClaimResult]]
    #: The error that kept every claim of the chunk from being made, once known.
    error: BackendUnavailableError | None = None
    #: True when each slot is sent by its claim if won (nothing to publish after it): the next
    #: chunk is decided while Redis runs this one's claim.
    sent_with_claim: bool = False
