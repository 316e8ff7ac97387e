"""The claim script judges a jittered slot at its publish instant (the slot plus its offset,
``Claim.offset_us``): asked before it, whatever the asking replica's clock says, it answers
``early`` with the wait until that instant, and nothing is recorded (adversary round 57, seed
30477: a replica whose clock stepped while Redis was away claimed a jittered slot 25 s early).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
import redis

from celery_fork_scheduler.backends import Claim, ClaimOutcome
from celery_fork_scheduler.backends.redis import RedisBackend
from celery_fork_scheduler.config import Settings
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.keys import Keys

KEYS = Keys("scheduler:")


@pytest.fixture
def backend(redis_url: str) -> Iterator[RedisBackend]:
    made = RedisBackend.from_url(redis_url, Settings())
    yield made
    made.close()


def redis_now(client: redis.Redis) -> datetime:
    seconds, micros = client.time()
    return datetime.fromtimestamp(seconds, timezone.utc) + timedelta(microseconds=micros)


def test_a_jittered_slot_is_early_until_its_publish_instant(
    backend: RedisBackend, redis_client: redis.Redis
) -> None:
    slot = redis_now(redis_client).replace(microsecond=0) - timedelta(seconds=1)
    claim = Claim("jittered", slot, task_id_for("jittered", slot), offset_us=20_000_000)
    [result] = backend.claim([claim])
    assert result.outcome is ClaimOutcome.EARLY
    assert 17 < result.retry_after <= 19.5  # until slot + 20 s on Redis's clock
    assert not redis_client.exists(KEYS.state("jittered"))  # nothing recorded


def test_a_slot_whose_offset_has_passed_is_won(
    backend: RedisBackend, redis_client: redis.Redis
) -> None:
    slot = redis_now(redis_client).replace(microsecond=0) - timedelta(seconds=5)
    claim = Claim("jittered", slot, task_id_for("jittered", slot), offset_us=2_000_000)
    assert [r.outcome for r in backend.claim([claim])] == [ClaimOutcome.WON]
