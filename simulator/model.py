"""What a run is made of (drawn from the seed) and what it records (read by the checker)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

#: Named points of a tick where a replica can be killed, frozen or stopped (SIGTERM).
#: ``before_X``/``after_X`` wrap the backend or publisher call ``X``.
POINTS = (
    "before_marks",
    "after_marks",
    "before_claim",
    "after_claim",
    "before_cap",
    "after_cap",
    "before_fence",
    "after_fence",
    "before_prepare",
    "before_publish",
    "mid_publish",
    "after_publish",
    "before_record",
    "after_record",
)


@dataclass
class ReplicaFault:
    """Kill / freeze / SIGTERM replica slot ``slot`` at its first ``point`` from ``at`` (us)."""

    slot: int
    at: int
    point: str
    action: str  # "kill" | "freeze" | "sigterm"
    duration: int = 0  # freeze length (us)
    restart_after: int | None = None  # start a fresh replica in this slot after (us)
    done: bool = False


@dataclass
class PublishFault:
    """The first publish of replica slot ``slot`` from ``at`` fails this way."""

    slot: int
    at: int
    kind: str  # "fail" (not sent) | "uncertain" | "hang" | "prepare"
    duration: int = 0  # for "hang"
    delivered: bool = False  # for "uncertain": did the messages reach the broker
    done: bool = False


@dataclass
class WorldEvent:
    """A timed event of the world (Redis faults, edits, replica starts, clock steps...)."""

    at: int
    kind: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class Message:
    """One message the broker accepted."""

    entry: str
    slot: datetime
    task_id: str
    replica: str
    at: int  # virtual us (Redis clock) when the broker took it
    source: str  # "beat" | "worker" (held back, buffer_one) | "trigger"
    headers: dict[str, Any]


@dataclass
class Report:
    """A signal a replica sent about one slot."""

    at: int
    replica: str
    entry: str
    slot: datetime
    kind: str  # "skipped" | "failed" | "dispatched" | "claim:<outcome>" | "fenced" | "uncertain"
    reason: str = ""


@dataclass
class Run:
    """A run executing on the simulated worker."""

    entry: str
    slot: datetime
    task_id: str
    start: int
    end: int
    singleton: bool
    capped: bool
    worker: str = ""
    attempt: int = 0  # retries before this attempt
    fate: str = ""  # success | retry | failure | time_limit | lost | killed ("" : running)


@dataclass
class WorkerSetup:
    """The workers of a run (drawn from the seed)."""

    pools: list[tuple[str, int]]  # (pool, concurrency) per worker
    acks_late: bool = False
    reject_on_worker_lost: bool = False
    time_limit: int | None = None  # hard time limit (us), enforced by prefork pools
    #: entry -> (max retries, probability that an attempt asks for a retry, countdown us)
    retries: dict[str, tuple[int, float, int]] = field(default_factory=dict)
    fail_rate: float = 0.0
    singleton_lease: int = 60  # fork_scheduler_singleton_lease (s)
    #: probability that the worker's publish of a held-back run fails ("refused": certainly
    #: not sent; "uncertain": a connection error)
    held_publish_fail: float = 0.0


@dataclass
class Window:
    """An interval of virtual time (us) during which something was going on."""

    start: int
    end: int
    kind: str
    detail: str = ""


@dataclass
class Violation:
    """A broken promise: which, about what, and the text of it."""

    rule: str
    entry: str
    text: str
    slot: datetime | None = None
