"""Adversary round 37: the chain rewind after a clock correction (``_follow_corrections`` /
``_rewound_slot``), the beat side of a held run Redis kept from leaving
(``Scheduler._publish_released`` with ``HeldNotSent``), and probes of the rewind's floor.

Each test's docstring names the promise, the sequence, what happened and where. The three
defects were found failing by round 37 and fixed with it: only a chain whose previous slot is
still to come on Redis's clock is rewound (it was decided on the wrong clock); a released run
Redis kept from leaving is put back at the head of its queue by the beat replica. Tests whose
docstring says "Probe" are things that were checked and held (they pass).
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis
from kombu.utils import json as kombu_json
from replica_helpers import START, make_scheduler

from celery_fork_scheduler import every
from celery_fork_scheduler import held as held_module
from celery_fork_scheduler.backends import lua
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.testing import FakeClock

KEYS = Keys("scheduler:")
T0 = datetime.fromisoformat(START)


class Host:
    """A replica's host: a wall clock (FakeClock) and a monotonic clock that never steps."""

    def __init__(self) -> None:
        self.clock = FakeClock(START)
        self.steady = 0.0

    def monotonic(self) -> float:
        return self.steady

    def run(self, replica: Any, seconds: float, step: float = 0.5) -> None:
        for _ in range(int(seconds / step)):
            self.clock.advance(step)
            self.steady += step
            replica.tick()


class FailsScript:
    """A real client whose ``eval`` of one script raises ``error`` (once, while armed), before
    reaching Redis: the connection dropped (a restart, a failover) between two calls."""

    def __init__(self, real: redis.Redis, script: str, error: Exception) -> None:
        self.real = real
        self.script = script
        self.error = error
        self.armed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def eval(self, script: str, *args: Any) -> Any:
        if script == self.script and self.armed:
            self.armed = False
            raise self.error
        return self.real.eval(script, *args)


# -- 1. a correction rewinds chains that were never on a wrong clock ------------------------------


@pytest.mark.parametrize("catchup", ["latest", "all"])
def test_a_host_clock_stepped_forward_fires_slots_from_before_beat_started(
    redis_url: str, catchup: str
) -> None:
    """Promise (docs/schedules.md, "Start-up"): "An entry that was never claimed waits for its
    next slot; starting beat is no reason to fire." docs/guarantees.md (failure table, "A
    replica's clock steps (NTP, a resumed VM, an operator; ±1 h tested)"): "No early, late or
    duplicate fire".

    Sequence: a replica starts at T0 (10:00:00.3) with an entry every 10 s that was never
    claimed; its chain waits for 10:00:10. Two seconds later this host's wall clock steps
    forward by 60 s (NTP fixing a host that was behind, an operator) and the replica measures
    it at once (``watch_for_steps`` -> ``follow``): the offset drops by 60 s, Redis's clock (and
    so ``now()``) did not move. Nothing was ever decided on a wrong clock.

    What happens: the next tick's ``_follow_corrections`` sees the offset drop and rewinds every
    chain by 60 s: ``_rewound_slot`` moves the chain to the first slot after 10:00:00 - 60 s
    (09:59:10); its floor is the latest slot known decided (``_known_marks``), and an entry
    never claimed has none. The chain then claims and publishes slots from before beat started
    (``latest``: 10:00:00, a recent slot; ``all``: 09:59:10 ... 10:00:00, six runs). The same
    holds for any chain whose previous slot this replica never saw decided: a runtime entry
    added or changed (slots of the new definition before the change), an entry re-enabled.
    Where: scheduler.py ``_follow_corrections`` / ``_rewound_slot`` (a drop of the offset is
    taken as "the chains were decided on a clock that far ahead", without a floor when
    ``_known_marks`` has no entry).
    """
    host = Host()
    replica = make_scheduler(
        redis_url,
        host.clock,
        {"job": {"task": "t", "schedule": every(10).seconds, "catchup": catchup}},
        monotonic=host.monotonic,
    )
    try:
        host.run(replica, 2)
        assert replica.publisher.occurrences == []
        # The wall clock steps forward 60 s and is measured at once: Redis's clock did not move.
        host.clock.advance(60)
        replica.redis_clock.offset = timedelta(seconds=-60)
        host.run(replica, 15)
        published = sorted(o.slot for o in replica.publisher.occurrences)
        assert published, "nothing published"
        early = [slot.isoformat() for slot in published if slot <= T0]
        assert not early, f"slots from before beat started (at {START}) fired: {early}"
    finally:
        replica.close()


def test_probe_a_spurious_correction_never_refires_a_claimed_entry(redis_url: str) -> None:
    """Probe (docs/guarantees.md: "The high-water mark stops any slot from being claimed
    twice"; "No early, late or duplicate fire"): an entry this replica claimed every 2 s, then
    the wall clock steps forward by 60 s and is measured at once. The rewind's floor (the latest
    slot known decided) keeps its chain where it was: no slot published twice, none re-asked
    from before the step, no gap."""
    host = Host()
    replica = make_scheduler(
        redis_url,
        host.clock,
        {"job": {"task": "t", "schedule": every(2).seconds, "catchup": "all"}},
        monotonic=host.monotonic,
    )
    try:
        host.run(replica, 7)
        before = len(replica.publisher.occurrences)
        assert before >= 3
        host.clock.advance(60)
        replica.redis_clock.offset = timedelta(seconds=-60)
        host.run(replica, 7)
        slots = [o.slot for o in replica.publisher.occurrences]
        assert len(slots) == len(set(slots)), slots
        assert slots == sorted(slots)
        gaps = {b - a for a, b in itertools.pairwise(slots)}
        assert gaps == {timedelta(seconds=2)}, slots
    finally:
        replica.close()


# -- 2. the beat side of a released buffer_all run that Redis kept from leaving -----------------


def _history(client: redis.Redis, name: str) -> list[tuple[int, str]]:
    items = [kombu_json.loads(raw) for raw in client.lrange(KEYS.history(name), 0, -1)]
    return [(int(item.get("slot", 0)), str(item.get("outcome"))) for item in items]


@pytest.mark.parametrize(
    "error",
    [redis.ConnectionError("Connection reset by peer"), redis.ReadOnlyError("READONLY")],
    ids=["connection_reset", "read_only_after_failover"],
)
def test_a_queued_run_released_by_a_claim_is_lost_unreported_when_redis_blinks(
    redis_url: str, redis_client: redis.Redis, error: Exception, monkeypatch: Any
) -> None:
    """Promise (docs/singleton.md, ``buffer_all``, "A runner that died"): "The next claim of
    the entry finds the marker gone and the queue not empty: it ... pops the head, sets the
    marker to it and returns it to the beat replica, which publishes it (claim outcome
    `released`). So a dead worker delays the queue by at most one lease plus one interval,
    and loses none of it." and "The rest is as for `buffer_one`: ... a failed publish (the
    message goes back to the head of the queue)". The only documented loss on this path is
    "A beat replica dies right after such a claim".

    Sequence (``fork_scheduler_max_concurrent=2``): a run of ``sync`` (buffer_all) holds the
    marker; slot 10:00:10 is queued behind it. Its worker dies: the marker's lease runs out.
    The claim of 10:00:20 finds the marker gone: it queues 10:00:20, pops 10:00:10 and hands it
    the marker (``released``). The beat replica's ``_publish_released`` -> ``HeldRuns.publish``
    -> ``_prepared``: the ``TAKE_CAP_PLACES`` of 10:00:10 fails before reaching Redis (the
    connection dropped; or a failover left the client on a demoted master, READONLY). Redis
    answers again at once; the beat replica is alive and keeps ticking.

    What happens: ``HeldNotSent`` is caught by ``_publish_released`` and only logged
    ("the run's marker expires with its lease; the queue goes on"): nothing retries it and
    nothing gives it back (the worker side keeps it in ``_unsent`` since round 36; the beat
    side does not). Once that marker's lease runs out the next claim releases 10:00:20:
    10:00:10 was never published, is not back in the queue, and its history holds no
    failure or skip (only ``buffered``). A slot of a buffer_all entry lost unreported by a live
    replica, although the failure came before any message could have left. Where:
    scheduler.py ``Scheduler._publish_released`` (held.py ``HeldRuns._prepared`` raises
    ``HeldNotSent``, which the beat side swallows).
    """
    sent: list[Any] = []  # what HeldRuns publishes (through Celery, not the replica's publisher)
    monkeypatch.setattr(held_module.CeleryPublisher, "publish", lambda self, o: sent.append(o))
    host = Host()
    replica = make_scheduler(
        redis_url,
        host.clock,
        {"sync": {"task": "t", "schedule": every(10).seconds, "overlap": "buffer_all"}},
        monotonic=host.monotonic,
        fork_scheduler_max_concurrent=2,
    )
    try:
        backend = replica.backend
        failing = FailsScript(backend.client, lua.TAKE_CAP_PLACES, error)
        backend.client = failing
        redis_client.set(KEYS.running("sync"), "a-dead-worker's-run", px=600_000)
        host.run(replica, 12)  # 10:00:10 is queued behind the running run
        s10 = datetime.fromisoformat("2026-03-02T10:00:10+00:00")
        s20 = datetime.fromisoformat("2026-03-02T10:00:20+00:00")
        assert redis_client.llen(KEYS.buffered("sync")) == 1
        redis_client.delete(KEYS.running("sync"))  # its worker died: the lease ran out
        failing.armed = True
        host.run(replica, 10)  # 10:00:20's claim releases 10:00:10: its cap place fails
        assert not failing.armed, "the held run's TAKE_CAP_PLACES was never asked"
        host.run(replica, 2)  # Redis answers again; the replica ticks on
        redis_client.delete(KEYS.running("sync"))  # 10:00:10's marker lease runs out
        host.run(replica, 10)  # 10:00:30's claim releases the next queued run (10:00:20)

        published = {o.slot for o in replica.publisher.occurrences} | {o.slot for o in sent}
        s10_us = int(s10.timestamp() * 1_000_000)
        recorded = [outcome for slot, outcome in _history(redis_client, "sync") if slot == s10_us]
        queued = [
            kombu_json.loads(raw)["slot"]
            for raw in redis_client.lrange(KEYS.buffered("sync"), 0, -1)
        ]
        assert {s10, s20} & published, f"the scenario did not move on: {sorted(published)}"
        reported = [outcome for outcome in recorded if outcome != "skipped:buffered"]
        assert s10 in published or reported or s10.isoformat() in queued, (
            f"10:00:10 lost unreported: published {sorted(published)}, its history {recorded}, "
            f"queue {queued}"
        )
    finally:
        replica.close()


# -- 3. probe: the worker's retry after TAKE_CAP_PLACES ran and only its reply was lost ------------


class LosesReply(FailsScript):
    """``eval`` of the script runs on Redis, then its reply is lost (once, while armed)."""

    def eval(self, script: str, *args: Any) -> Any:
        answer = self.real.eval(script, *args)
        if script == self.script and self.armed:
            self.armed = False
            raise self.error
        return answer


def test_probe_a_cap_place_taken_with_its_reply_lost_is_sent_once_holding_one_place(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Probe (docs/singleton.md: a held run handed over that Redis kept from leaving "is sent by
    the same heartbeat, while its marker's lease lasts"; once): run T of ``sync`` (buffer_all,
    cap 1) ends; RELEASE hands the marker to queued H; H's ``TAKE_CAP_PLACES`` runs on Redis
    but its reply is lost. The heartbeat sends H again: TAKE_CAP_PLACES finds H's own place
    (idempotent), H is published once and holds one place; ``_unsent`` is empty after."""
    from datetime import timezone

    from test_adversary_round36 import OnePass, held_of, queued_ids, sync_entry, worker_app

    from celery_fork_scheduler.worker import Run, WorkerHooks

    s1 = datetime(2026, 3, 2, 10, 1, tzinfo=timezone.utc)
    s2 = datetime(2026, 3, 2, 10, 2, tzinfo=timezone.utc)
    app = worker_app(redis_url, fork_scheduler_max_concurrent=1)
    entry = sync_entry("buffer_all")
    run_id, held_id = task_id_for("sync", s1), task_id_for("sync", s2)
    redis_client.set(KEYS.running("sync"), run_id, px=30_000)
    redis_client.zadd(KEYS.cap, {run_id: (datetime.now(timezone.utc).timestamp() + 30) * 1e6})
    redis_client.rpush(KEYS.buffered("sync"), held_of(entry, s2))
    hooks = WorkerHooks(app)
    losing = LosesReply(hooks.client, lua.TAKE_CAP_PLACES, redis.ConnectionError("reset"))
    losing.armed = True
    hooks._client = losing
    run = Run("sync", s1.isoformat(), run_id, 0.0, True, True, "w@h", overlap="buffer_all")
    hooks._finish(run)
    assert not losing.armed
    assert queued_ids(redis_client) == []
    for _ in range(3):
        hooks._beat_hearts(OnePass())  # type: ignore[arg-type]
    assert queued_ids(redis_client) == [held_id]
    assert [m.decode() for m in redis_client.zrange(KEYS.cap, 0, -1)] == [held_id]
    assert hooks._unsent == {}


def test_a_correction_after_a_change_fires_slots_of_the_new_definition_before_the_change(
    redis_url: str,
) -> None:
    """Promise (docs/guarantees.md, "A runtime entry is added, changed or removed"): "every
    replica schedules the entry from its first slot after that instant [the change]: what `add`
    and `update` answer as `next_run` fires"; "still one run per slot" of the definition.
    docs/guarantees.md (clock steps): "No early, late or duplicate fire".

    Sequence: ``job`` runs every 60 s; this replica claims and publishes 10:01:00 (its latest
    known decided slot). At 10:01:30 the entry is changed to every 5 s (``put_entry`` with
    ``since`` = the change): its chain waits for 10:01:35. At 10:01:32 the host's wall clock
    steps forward 60 s and is measured at once (the offset drops by 60 s; Redis's clock did not
    move).

    What happens: ``_follow_corrections`` rewinds the new definition's chain to the first slot
    after max(10:01:30 - 60 s, 10:01:00 = the known mark) = 10:01:05: the slots of the new
    definition from 10:01:05 to 10:01:30, all before the change, are claimed (above the mark)
    and published (``catchup="all"``: six runs nobody scheduled). Where: scheduler.py
    ``_rewound_slot`` (its floor is the name's latest known mark, which says nothing of where
    the current definition's chain began).
    """
    from datetime import timezone

    from celery_fork_scheduler.entry import entry_from_config

    host = Host()
    definition = {"task": "t", "schedule": every(60).seconds, "catchup": "all"}
    replica = make_scheduler(redis_url, host.clock, {"job": definition}, monotonic=host.monotonic)
    try:
        host.run(replica, 60)  # 10:01:00 is published
        assert [o.slot.isoformat() for o in replica.publisher.occurrences] == [
            "2026-03-02T10:01:00+00:00"
        ]
        host.clock.set(datetime(2026, 3, 2, 10, 1, 30, tzinfo=timezone.utc))
        change = replica.now()
        changed = entry_from_config(
            "job", {**definition, "schedule": every(5).seconds}, default_timezone=timezone.utc
        )
        replica.put_entry(changed, change, since=change)
        host.run(replica, 2)
        host.clock.advance(60)
        replica.redis_clock.offset = timedelta(seconds=-60)
        host.run(replica, 10)
        fired = [o.slot for o in replica.publisher.occurrences]
        before = [slot.isoformat() for slot in fired[1:] if slot <= change]
        assert not before, (
            f"slots of the new definition before its change ({change}) fired: {before}"
        )
    finally:
        replica.close()
