"""A progress record an earlier version wrote (it has no ``config`` digest) is not trusted to
run this replica's ``beat_schedule``: during a rolling upgrade that also changes the schedule,
the slots of the entries such an owner has are asked about at once, as with any owner whose
digest differs (settings.md, ``fork_scheduler_owner_grace``)."""

from __future__ import annotations

import json
from datetime import timedelta

from celery_fork_scheduler.ownership import Ownership, Progress


def _ownership() -> Ownership:
    ownership = Ownership(None, "k", "replica-a", timedelta(seconds=1), lambda: 0.0)
    ownership.config = 1234
    return ownership


def _record(**fields: object) -> Progress:
    data = {"until": 2_000_000, "at": 2_000_000, "view": 7, "since": 1_000_000, **fields}
    record = Progress.decode(json.dumps(data))
    assert record is not None
    return record


def test_an_owner_whose_record_has_no_digest_is_not_taken_to_share_the_schedule() -> None:
    """Noticed in round 39's review, fixed: a record without ``config`` counted as sharing it."""
    ownership = _ownership()
    ownership.records["replica-b"] = _record()
    assert not ownership.shares_config("replica-b")


def test_an_owner_whose_record_has_this_digest_shares_the_schedule() -> None:
    ownership = _ownership()
    ownership.records["replica-b"] = _record(config=1234)
    ownership.records["replica-c"] = _record(config=99)
    assert ownership.shares_config("replica-b")
    assert not ownership.shares_config("replica-c")
