"""Celery signals of celery-fork-scheduler: connect with ``@signal.connect`` as usual.

Beat side (``sender`` is the Scheduler):

- :data:`entry_due` — a slot of an entry is due on this replica (``entry``, ``slot``);
- :data:`entry_dispatched` — this replica published it (``entry``, ``slot``, ``task_id``,
  ``replica``);
- :data:`entry_skipped` — the slot was not published by this replica (``entry``, ``slot``,
  ``reason``: one of :data:`SKIP_REASONS`);
- :data:`entry_failed` — publishing raised (``entry``, ``slot``, ``task_id``, ``exception``);
- :data:`outage_ended` — the claim backend answers again after an outage (``outage``: an
  :class:`~celery_fork_scheduler.outages.Outage`, what the replica reported missed meanwhile).

Worker side, only for tasks this scheduler published (``sender`` is the task):

- :data:`job_started` (``entry``, ``slot``, ``task_id``);
- :data:`job_completed` (``entry``, ``slot``, ``task_id``, ``duration`` in seconds);
- :data:`job_failed` (``entry``, ``slot``, ``task_id``, ``exception``);
- :data:`entry_paused_on_failure` — a run of an entry with ``pause_on_failure`` failed for good
  and the worker paused the entry for every replica (``entry``, ``slot``, ``task_id``,
  ``exception``, ``note``: the pause note). Sent once per pause, after ``job_failed``; not sent
  when the entry was paused already.

A receiver that raises is logged by Celery and changes nothing else.
"""

from __future__ import annotations

from celery.utils.dispatch import Signal

__all__ = [
    "SKIP_REASONS",
    "entry_dispatched",
    "entry_due",
    "entry_failed",
    "entry_paused_on_failure",
    "entry_skipped",
    "job_completed",
    "job_failed",
    "job_started",
    "outage_ended",
]

#: Why a due slot was not published by this replica.
SKIP_REASONS = (
    "claimed",  # another replica claimed (and published) it
    "busy",  # singleton: the previous run is still executing
    "buffered",  # buffer_one / buffer_all: held back until the running one(s) end
    "buffer_full",  # buffer_all: fork_scheduler_buffer_limit runs are queued already
    "superseded",  # buffer_one: the held-back run, orphaned (no run held the marker), gave way
    # to a newer slot
    "capped",  # fork_scheduler_max_concurrent reached
    "paused",  # the entry is paused
    "excluded",  # the slot falls on an exclusion date (exclude, calendar)
    "finished",  # max_runs used up
    "redis_unavailable",  # the claim backend could not be reached: fail closed
    "behind",  # this replica fell too far behind: only each entry's latest slot is claimed
    "in_flight",  # another replica began publishing it and never confirmed: not sent twice
    "broker_unavailable",  # the broker could not be reached within the catch-up grace
    "error",  # the slot's claim or message could not be made (entry_failed says why)
    "removed",  # the runtime entry was removed (this replica had not read it yet)
    "disabled",  # the runtime entry was disabled (this replica had not read it yet)
    "changed",  # a slot of the definition a runtime change replaced (not read yet)
    "unknown",  # due before Redis restarted from data that may predate its publish: not again
)

entry_due = Signal(name="entry_due", providing_args={"entry", "slot"})
entry_dispatched = Signal(
    name="entry_dispatched", providing_args={"entry", "slot", "task_id", "replica"}
)
entry_skipped = Signal(name="entry_skipped", providing_args={"entry", "slot", "reason"})
entry_failed = Signal(name="entry_failed", providing_args={"entry", "slot", "task_id", "exception"})
outage_ended = Signal(name="outage_ended", providing_args={"outage"})
job_started = Signal(name="job_started", providing_args={"entry", "slot", "task_id"})
job_completed = Signal(
    name="job_completed", providing_args={"entry", "slot", "task_id", "duration"}
)
job_failed = Signal(name="job_failed", providing_args={"entry", "slot", "task_id", "exception"})
entry_paused_on_failure = Signal(
    name="entry_paused_on_failure",
    providing_args={"entry", "slot", "task_id", "exception", "note"},
)
