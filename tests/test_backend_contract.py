"""One contract for every claim backend: the in-process one and Redis (a real redis-server)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis

from celery_fork_scheduler.backends import (
    Claim,
    ClaimBackend,
    ClaimOutcome,
    HighWaterMark,
    LocalBackend,
)
from celery_fork_scheduler.backends.redis import RedisBackend
from celery_fork_scheduler.config import Settings
from celery_fork_scheduler.ids import task_id_for

PAST = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def claim(entry: str, slot: datetime) -> Claim:
    return Claim(entry, slot, task_id_for(entry, slot))


@pytest.fixture(params=["local", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ClaimBackend]:
    if request.param == "local":
        yield LocalBackend(tmp_path / "state.json")
        return
    url = request.getfixturevalue("redis_url")
    made = RedisBackend.from_url(url, Settings())
    yield made
    made.close()


def test_a_published_slot_is_never_claimed_again(backend: ClaimBackend) -> None:
    assert [r.outcome for r in backend.claim([claim("a", PAST)])] == [ClaimOutcome.WON]
    backend.mark_sent([claim("a", PAST)])
    assert [r.outcome for r in backend.claim([claim("a", PAST)])] == [ClaimOutcome.CLAIMED]


def test_a_slot_at_or_below_the_high_water_mark_is_never_claimed(backend: ClaimBackend) -> None:
    later = PAST + timedelta(minutes=5)
    assert backend.claim([claim("a", later)])[0].outcome is ClaimOutcome.WON
    backend.mark_sent([claim("a", later)])
    assert backend.claim([claim("a", PAST)])[0].outcome is ClaimOutcome.CLAIMED


def test_entries_have_independent_high_water_marks(backend: ClaimBackend) -> None:
    results = backend.claim([claim("a", PAST), claim("b", PAST)])
    assert [r.outcome for r in results] == [ClaimOutcome.WON, ClaimOutcome.WON]
    marks = backend.high_water_marks(["a", "b", "never"])
    assert {name: mark.slot for name, mark in marks.items()} == {"a": PAST, "b": PAST}


def test_a_batch_keeps_the_order_of_its_claims(backend: ClaimBackend) -> None:
    slots = [PAST + timedelta(seconds=i) for i in range(50)]
    backend.claim([claim("a", slots[10])])
    backend.mark_sent([claim("a", slots[10])])
    results = backend.claim([claim("a", slot) for slot in slots])
    assert [r.claim.slot for r in results] == slots
    won = [r.claim.slot for r in results if r.outcome.publish]
    assert won == slots[11:]


def test_the_local_backend_keeps_marks_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    first = LocalBackend(path)
    first.claim([claim("a", PAST)])
    first.close()
    assert LocalBackend(path).high_water_marks(["a"]) == {"a": HighWaterMark(PAST)}


def test_the_local_backend_refuses_a_state_file_of_an_unknown_schema(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"schema": 99, "high_water_marks": {}}')
    with pytest.raises(ValueError, match="unknown schema"):
        LocalBackend(path)


class TestRedisClaims:
    """Behaviour only the Redis backend has: leases, takeover, Redis TIME, replicas."""

    @pytest.fixture
    def replicas(self, redis_url: str) -> Iterator[tuple[RedisBackend, RedisBackend]]:
        settings = Settings(claim_lease=timedelta(seconds=0.3))
        first = RedisBackend.from_url(redis_url, settings)
        second = RedisBackend.from_url(redis_url, settings)
        first.replica_id, second.replica_id = "host:1", "host:2"
        yield first, second
        first.close()
        second.close()

    def test_an_unsent_claim_is_pending_for_others_until_its_lease_ends(
        self, replicas: tuple[RedisBackend, RedisBackend]
    ) -> None:
        first, second = replicas
        assert first.claim([claim("a", PAST)])[0].outcome is ClaimOutcome.WON
        result = second.claim([claim("a", PAST)])[0]
        assert result.outcome is ClaimOutcome.PENDING
        assert 0 < result.retry_after <= 0.3

    def test_a_claim_whose_owner_never_published_is_taken_over_after_the_lease(
        self, replicas: tuple[RedisBackend, RedisBackend], redis_client: redis.Redis
    ) -> None:
        first, second = replicas
        first.claim([claim("a", PAST)])
        pending = second.claim([claim("a", PAST)])[0]
        deadline = datetime.now(timezone.utc) + timedelta(seconds=10)
        outcome = pending.outcome
        while outcome is ClaimOutcome.PENDING and datetime.now(timezone.utc) < deadline:
            outcome = second.claim([claim("a", PAST)])[0].outcome
        assert outcome is ClaimOutcome.TAKEN_OVER
        assert redis_client.hget(second.state_key("a"), "owner") == b"host:2"
        # The first owner is now refused (pending with the second's fresh lease).
        assert first.claim([claim("a", PAST)])[0].outcome is ClaimOutcome.PENDING

    def test_a_sent_slot_is_never_taken_over(
        self, replicas: tuple[RedisBackend, RedisBackend]
    ) -> None:
        first, second = replicas
        first.claim([claim("a", PAST)])
        first.mark_sent([claim("a", PAST)])
        assert second.claim([claim("a", PAST)])[0].outcome is ClaimOutcome.CLAIMED

    def test_the_claim_state_records_the_replica_and_the_send(
        self, replicas: tuple[RedisBackend, RedisBackend], redis_client: redis.Redis
    ) -> None:
        first, _ = replicas
        first.claim([claim("a", PAST)])
        state = redis_client.hgetall(first.state_key("a"))
        assert state[b"state"] == b"claimed"
        assert state[b"owner"] == b"host:1"
        assert state[b"task_id"] == task_id_for("a", PAST).encode()
        first.mark_sent([claim("a", PAST)])
        state = redis_client.hgetall(first.state_key("a"))
        assert state[b"state"] == b"sent"
        assert state[b"runs"] == b"1"
        assert not redis_client.exists(first.pending_key("a"))

    def test_a_slot_in_the_future_by_redis_time_is_refused_as_early(
        self, replicas: tuple[RedisBackend, RedisBackend], redis_client: redis.Redis
    ) -> None:
        first, _ = replicas
        future = datetime.now(timezone.utc) + timedelta(seconds=30)
        result = first.claim([claim("a", future)])[0]
        assert result.outcome is ClaimOutcome.EARLY
        assert 25 < result.retry_after <= 30
        assert not redis_client.exists(first.state_key("a"))

    def test_keys_of_one_entry_share_a_cluster_hash_tag(
        self, replicas: tuple[RedisBackend, RedisBackend]
    ) -> None:
        first, _ = replicas
        assert first.state_key("x") == "scheduler:{x}:state"
        assert first.pending_key("x") == "scheduler:{x}:pending"

    def test_an_unreachable_redis_raises_backend_unavailable_after_the_retries(self) -> None:
        from celery_fork_scheduler.backends.redis_connection import client_from_url
        from celery_fork_scheduler.errors import BackendUnavailableError
        from celery_fork_scheduler.testing import free_port

        sleeps: list[float] = []
        client = client_from_url(f"redis://127.0.0.1:{free_port()}/0")
        settings = Settings(max_retries=2, retry_delay=timedelta(seconds=0.25))
        backend = RedisBackend(client, settings, sleep=sleeps.append)
        with pytest.raises(BackendUnavailableError, match="unreachable after 3 attempts"):
            backend.claim([claim("a", PAST)])
        assert sleeps == [0.25, 0.25]


def test_the_redis_high_water_mark_tells_whether_the_slot_was_sent(redis_url: str) -> None:
    backend = RedisBackend.from_url(redis_url, Settings())
    try:
        backend.claim([claim("a", PAST)])
        assert backend.high_water_marks(["a"]) == {
            "a": HighWaterMark(PAST, sent=False, unsent=(PAST,))
        }
        backend.mark_sent([claim("a", PAST)])
        assert backend.high_water_marks(["a"]) == {"a": HighWaterMark(PAST, sent=True)}
    finally:
        backend.close()


def test_a_takeover_claim_never_makes_a_new_claim(backend: ClaimBackend) -> None:
    # A slot seen claimed before but unknown now (Redis restarted empty) is not published.
    takeover = Claim("a", PAST, task_id_for("a", PAST), takeover=True)
    assert [r.outcome for r in backend.claim([takeover])] == [ClaimOutcome.CLAIMED]
    assert backend.high_water_marks(["a"]) == {}


def test_claims_that_no_redis_replica_confirms_fail_closed(redis_url: str) -> None:
    from celery_fork_scheduler.errors import BackendUnavailableError

    settings = Settings(wait_replicas=1, wait_timeout=timedelta(milliseconds=50), max_retries=0)
    backend = RedisBackend.from_url(redis_url, settings)
    try:
        with pytest.raises(BackendUnavailableError, match="unreachable"):
            backend.claim([claim("a", PAST)])
        # Reading needs no confirmation.
        assert backend.high_water_marks(["a"])["a"].slot == PAST
    finally:
        backend.close()


def test_marks_report_unsent_claims_and_finished_entries(backend: ClaimBackend) -> None:
    later = PAST + timedelta(seconds=1)
    assert [r.outcome for r in backend.claim([claim("a", PAST), claim("a", later)])] == [
        ClaimOutcome.WON,
        ClaimOutcome.WON,
    ]
    assert backend.high_water_marks(["a"])["a"].unsent == (PAST, later)
    backend.mark_sent([claim("a", PAST)], outcome="uncertain")
    backend.record_failure(claim("a", later), ConnectionError("broker down"))
    mark = backend.high_water_marks(["a"])["a"]
    assert (mark.unsent, mark.sent, mark.finished) == ((), True, False)
    once = Claim("b", PAST, task_id_for("b", PAST), max_runs=1)
    backend.claim([once])
    backend.mark_sent([once])
    next_one = Claim("b", later, task_id_for("b", later), max_runs=1)
    assert backend.claim([next_one])[0].outcome is ClaimOutcome.FINISHED
    assert backend.high_water_marks(["b"])["b"].finished


def test_a_removed_runtime_entry_still_fires_its_slots_due_before_the_removal(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """A replica that has not seen a removal yet claims a slot due before it: that slot still
    fires (it was promised); slots after the removal are refused (``removed``)."""
    backend = RedisBackend.from_url(redis_url, Settings())
    seconds, micros = redis_client.time()
    now = datetime.fromtimestamp(seconds, timezone.utc) + timedelta(microseconds=micros)
    before, after = now - timedelta(seconds=2), now + timedelta(milliseconds=300)
    removed_at = int(now.timestamp() * 1_000_000)
    try:
        redis_client.hset(backend.keys.state("rt"), "removed", removed_at)
        results = backend.claim(
            [
                Claim("rt", before, task_id_for("rt", before), runtime=True),
                Claim("rt", after, task_id_for("rt", after), runtime=True),
            ]
        )
        assert [result.outcome for result in results] == [
            ClaimOutcome.WON,
            ClaimOutcome.REMOVED,
        ]
        redis_client.hset(backend.keys.state("other"), "removed", "1")  # an older version's mark
        older = backend.claim([Claim("other", before, task_id_for("other", before), runtime=True)])
        assert older[0].outcome is ClaimOutcome.REMOVED
    finally:
        backend.close()
