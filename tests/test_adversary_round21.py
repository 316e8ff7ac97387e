"""Adversary round 21: a claim that sends its slot in the same script (issue 19, commit 8c86547).

The first three tests reproduced reports the one-step claim got wrong (fixed with this file:
a request sent again after a lost reply says so, and the claim then answers from the entry's
history for every slot it sent; a history that cannot be written no longer turns a sent slot
into an error). The fourth is a documented limit (strict xfail). The tests whose docstrings
start with "Probe" held.
"""

from __future__ import annotations

import json
import random
from datetime import datetime
from typing import Any

import pytest
import redis
from lane_helpers import Seen, burst_schedule, fired, history, lose_next_reply, one_step_beat
from replica_helpers import START, run_for

from celery_fork_scheduler import every
from celery_fork_scheduler.errors import BackendUnavailableError
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.store import RuntimeStore
from celery_fork_scheduler.testing import FakeClock

KEYS = Keys("scheduler:")


# -- failing: wrong reports -----------------------------------------------------------------


def test_a_lost_reply_of_a_burst_claim_reports_the_earlier_slots_it_sent_as_claimed(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock, seen: Seen
) -> None:
    """A replica wakes 3.5 s late (within the catch-up grace): slots 10:00:01, :02 and :03 of
    one entry are claimed in one CLAIM_MANY call, each sent by its claim. The reply is lost
    after Redis ran the script; the backend's retry sends the same request again. The newest
    slot (the mark) answers ``sent``; the two older ones find ``slot < hwm`` and no pending
    claim and answer ``claimed``, so the replica reports them skipped (``claimed``: another
    replica has them) though it published them itself.

    Promised (guarantees.md, "Claimed and sent in the claim itself"): "Asked again after a lost
    reply, the claim answers that this replica sent the slot (entry_dispatched is sent then)."
    Root cause: lua.py:352, the lost-reply check only recognises the slot at the mark
    (``slot == hwm``); an earlier slot sent by the same request is not recognised.
    """
    schedule = {"job": {"task": "t", "schedule": every(1).seconds, "args": (1,)}}
    scheduler = one_step_beat(redis_url, clock, schedule)
    scheduler.setup_schedule()
    try:
        scheduler.tick()
        clock.advance(3.5)
        lose_next_reply(scheduler, "claim_and_send")
        scheduler.tick()
    finally:
        scheduler.close()
    counts = fired(redis_client)
    assert set(counts.values()) == {1}  # no duplicate: each slot pushed once
    sent = sorted(slot for _, slot in counts)
    assert len(sent) == 3
    assert [s for s in seen.skipped if s[2] == "claimed"] == []
    assert sorted(slot for _, slot in seen.dispatched) == sent


def test_a_lost_reply_of_an_uncertain_one_step_claim_is_reported_dispatched(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock, seen: Seen
) -> None:
    """The claim of 10:00:10 wins and its broker command fails (the queue key holds a string:
    WRONGTYPE): the script records the slot ``sent`` with history ``uncertain`` and answers
    ``uncertain``. That reply is lost; the backend's retry asks again, finds the slot at the
    mark with state ``sent``, owner and task id its own, and answers ``sent``: the replica
    emits ``entry_dispatched`` and neither ``entry_failed`` nor the ``in_flight`` skip.

    Promised (guarantees.md, "Claimed and sent in the claim itself"): "A broker command that
    fails there leaves the slot recorded as sent (its history item says uncertain), reported
    in_flight, never sent again." Root cause: lua.py:352-355, the lost-reply answer cannot
    tell a slot sent from one whose send was uncertain (both are state ``sent``).
    """
    schedule = {"job": {"task": "t", "schedule": every(10).seconds, "args": (1,)}}
    scheduler = one_step_beat(redis_url, clock, schedule)
    scheduler.setup_schedule()
    try:
        run_for(scheduler, clock, 5)
        redis_client.set("celery", "not a list")  # the queue's key holds a string
        lose_next_reply(scheduler, "claim_and_send")
        run_for(scheduler, clock, 5.5)
    finally:
        scheduler.close()
    slot = "2026-03-02T10:00:10+00:00"
    assert history(redis_client, "job") == ["uncertain"]
    assert ("job", slot, "in_flight") in seen.skipped
    assert ("job", slot) in seen.failed
    assert ("job", slot) not in seen.dispatched


def test_a_claim_that_sent_its_message_then_failed_is_reported_as_never_published(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock, seen: Seen
) -> None:
    """The entry's history key holds a string (a key of the wrong type, a case the failure
    table names). The one-step claim of 10:00:10 moves the mark, records the slot ``sent``,
    pushes the message to ``celery``, then ``record(..., 'sent')`` raises WRONGTYPE on the
    history list: the item answers an error, reported ``entry_failed`` ("claiming") and skipped
    ``error`` — which says nothing was published — while the message is in the queue.

    Promised: "Fail closed. Without a successful claim nothing is published" (promise 5);
    ClaimOutcome.ERROR "Nothing is published"; and a script that fails after its message may
    have left is reported ``in_flight`` (guarantees.md, one step) — which is what the
    claim-then-PUBLISH_ONCE path reports in the very same set-up. Root cause: lua.py:323, the
    history record runs after the broker commands outside their pcall, so its error turns a
    sent slot into an ``error`` answer (scheduler.py:1210 reports it as not published).
    """
    schedule = {"job": {"task": "t", "schedule": every(10).seconds, "args": (1,)}}
    redis_client.set(KEYS.history("job"), "not a list")
    scheduler = one_step_beat(redis_url, clock, schedule)
    scheduler.setup_schedule()
    try:
        run_for(scheduler, clock, 10.5)
    finally:
        scheduler.close()
    slot = "2026-03-02T10:00:10+00:00"
    assert fired(redis_client) == {("job", slot): 1}  # it was published
    assert redis_client.hget(KEYS.state("job"), "state") == b"sent"
    assert ("job", slot, "error") not in seen.skipped  # "error": nothing was published
    assert ("job", slot) in seen.dispatched or ("job", slot, "in_flight") in seen.skipped


@pytest.mark.xfail(
    strict=True,
    reason="documented limit (guarantees.md, 'Claimed and sent in the claim itself'): a claim "
    "whose every attempt lost its reply is left to the outage's catch-up; sent, never twice",
)
def test_a_one_step_claim_whose_every_retry_lost_its_reply_is_reported_missed(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock, seen: Seen
) -> None:
    """The claim of 10:00:10 runs in Redis (the message is pushed, the slot recorded sent),
    then Redis goes away: every retry loses its reply, and Redis answers again only at
    10:00:22. The replica reports 10:00:10 skipped ``redis_unavailable`` and queues the item
    back; once Redis answers, the catch-up rule fires only the recent 10:00:20 (default
    ``latest``: a recent slot fires anyway), so 10:00:10 is never asked again. It was
    published, yet no replica ever reports ``entry_dispatched`` for it: its only report says
    it was missed (and the outage summary counts it as missed).

    Promised (guarantees.md, one step): after a lost reply the replica settles what it sent and
    reports ``entry_dispatched`` for a slot it published — PUBLISH_ONCE keeps such slots as
    ``unsettled`` and runs them again "once Redis answers, before its next claims"; the claim
    that sends has no such settling, its answer comes only if the catch-up rule asks the slot
    again ("Asked again after a lost reply, the claim answers that this replica sent the
    slot"). Root cause: scheduler.py:1036 / :1293, a claim_and_send that raised is treated as
    "nothing of this chunk was claimed" and its sends are not kept to be settled.
    """
    schedule = {"job": {"task": "t", "schedule": every(10).seconds, "args": (1,)}}
    scheduler = one_step_beat(redis_url, clock, schedule)
    backend: Any = scheduler.backend
    real = backend.claim_and_send
    calls = 0
    back_at = datetime.fromisoformat("2026-03-02T10:00:22+00:00")

    def claim_and_send(claims: Any, sends: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            real(claims, sends)  # ran in Redis; every retry of its reply is lost
            raise BackendUnavailableError("simulated: Redis went away after running it")
        if clock() < back_at:
            raise BackendUnavailableError("simulated: Redis still away")
        return real(claims, sends)

    backend.claim_and_send = claim_and_send
    scheduler.setup_schedule()
    try:
        run_for(scheduler, clock, 25)
    finally:
        scheduler.close()
    slot = "2026-03-02T10:00:10+00:00"
    assert fired(redis_client)[("job", slot)] == 1  # published once
    assert ("job", slot) in seen.dispatched


# -- probes (held) --------------------------------------------------------------------------


def _messages(client: redis.Redis) -> list[dict[str, Any]]:
    """Every message in a broker list, per-process fields (and times read from the clock at
    send) taken out."""
    found = []
    for key in sorted(client.keys("*")):
        if key.startswith(b"scheduler:") or client.type(key) != b"list":
            continue
        for raw in client.lrange(key, 0, -1):
            message = json.loads(raw)
            message["headers"].pop("expires", None)
            message["headers"].pop("origin", None)
            message["properties"].pop("delivery_tag", None)
            message["properties"].pop("reply_to", None)
            found.append({"queue": key.decode(), **message})
    return sorted(found, key=lambda m: m["headers"]["fork_scheduler_slot"])


def test_probe_the_message_a_claim_sends_is_the_publish_scripts_message(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Probe (held): for an entry with a queue, a priority (priority steps), a numeric
    ``expires``, its own headers and jitter, the messages the claim sends are those
    claim-then-PUBLISH_ONCE sends (queue key, headers, task id, body, properties), but for the
    per-process fields and the send-time ``expires``."""
    schedule = {
        "job": {
            "task": "t",
            "schedule": every(10).seconds,
            "args": (1,),
            "kwargs": {"k": "v"},
            "options": {"queue": "q1", "priority": 5, "expires": 30, "headers": {"h": 1}},
            "jitter": 2.0,
        }
    }
    runs = []
    for one_step in (True, False):
        redis_client.flushall()
        scheduler = one_step_beat(
            redis_url,
            FakeClock(START),
            schedule,
            sent_with_claim=one_step,
            broker_transport_options={"priority_steps": [0, 3, 6, 9]},
        )
        scheduler.setup_schedule()
        try:
            run_for(scheduler, scheduler.clock, 33)  # type: ignore[attr-defined]
        finally:
            scheduler.close()
        runs.append(_messages(redis_client))
    assert len(runs[0]) >= 3
    assert runs[0] == runs[1]


def test_probe_replicas_racing_on_both_paths_publish_each_slot_once(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Probe (held): two replicas that send with their claims and one on claim-then-publish
    tick in a random order on skewed clocks for a minute: 30 entries (one ``skip`` whose
    marker no worker frees, one with ``max_runs=2``), every slot published exactly once, none
    missing, no pending claim left."""
    rng = random.Random(7)
    schedule = burst_schedule(30)
    schedule["e001"] = {**schedule["e001"], "overlap": "skip"}
    schedule["e002"] = {**schedule["e002"], "max_runs": 2}
    replicas = []
    for index, (replica_id, one_step) in enumerate([("ra", True), ("rb", True), ("rc", False)]):
        clock = FakeClock(START)
        clock.advance(0.05 * index)
        scheduler = one_step_beat(redis_url, clock, schedule, sent_with_claim=one_step)
        scheduler.backend.replica_id = replica_id
        scheduler.setup_schedule()
        replicas.append((scheduler, clock))
    end = datetime.fromisoformat("2026-03-02T10:01:05+00:00")
    try:
        while min(clock() for _, clock in replicas) < end:
            scheduler, clock = rng.choice(replicas)
            clock.advance(rng.choice([0.1, 0.3, 0.7, 1.5]))
            scheduler.tick()
    finally:
        for scheduler, _ in replicas:
            scheduler.close()
    counts = fired(redis_client)
    assert set(counts.values()) == {1}
    per_entry = {f"e{i:03}": sum(1 for name, _ in counts if name == f"e{i:03}") for i in range(30)}
    assert per_entry.pop("e002") == 2
    assert per_entry.pop("e001") == 1  # no worker frees its marker: later slots are busy
    assert len(set(per_entry.values())) == 1 and min(per_entry.values()) >= 6
    for i in range(30):
        assert redis_client.hlen(KEYS.pending(f"e{i:03}")) == 0


def test_probe_a_pause_between_building_the_message_and_the_claim_sends_nothing(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock, seen: Seen
) -> None:
    """Probe (held): the entry is paused (as Manager.pause writes it) after the replica built
    the message and before its claim runs: the claim answers ``paused``, nothing is pushed,
    the state counts no run."""
    schedule = {"job": {"task": "t", "schedule": every(10).seconds, "args": (1,)}}
    scheduler = one_step_beat(redis_url, clock, schedule)
    real = scheduler.pipeline.sends_for
    store = RuntimeStore(redis_client, KEYS)

    def sends_for(due: Any) -> Any:
        sends = real(due)
        if due:
            store.pause(["job"], "racing", at=clock())
        return sends

    scheduler.pipeline.sends_for = sends_for  # type: ignore[method-assign]
    scheduler.setup_schedule()
    try:
        run_for(scheduler, clock, 10.5)
    finally:
        scheduler.close()
    assert fired(redis_client) == {}
    assert ("job", "2026-03-02T10:00:10+00:00", "paused") in seen.skipped
    assert redis_client.hget(KEYS.state("job"), "runs") in (None, b"0")


def test_probe_a_skip_singleton_whose_marker_is_held_sends_nothing(
    redis_url: str, redis_client: redis.Redis, clock: FakeClock, seen: Seen
) -> None:
    """Probe (held): overlap ``skip`` with its running marker held by an earlier run: the
    claim with the message answers ``busy`` and pushes nothing; once the marker is gone the
    next slot is sent by its claim and takes the marker."""
    schedule = {"job": {"task": "t", "schedule": every(10).seconds, "overlap": "skip"}}
    redis_client.set(KEYS.running("job"), "earlier-run", px=60_000)
    scheduler = one_step_beat(redis_url, clock, schedule)
    scheduler.setup_schedule()
    try:
        run_for(scheduler, clock, 10.5)
        assert fired(redis_client) == {}
        assert ("job", "2026-03-02T10:00:10+00:00", "busy") in seen.skipped
        redis_client.delete(KEYS.running("job"))
        run_for(scheduler, clock, 10)
    finally:
        scheduler.close()
    slot = "2026-03-02T10:00:20+00:00"
    assert fired(redis_client) == {("job", slot): 1}
    assert ("job", slot) in seen.dispatched
    assert redis_client.get(KEYS.running("job")) is not None
