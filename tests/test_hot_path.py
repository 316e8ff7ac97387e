"""The burst hot path keeps its answers: the fast task id, the time queue's bulk pop, the batch
claim script and the shared next-slot cache give what the plain forms give."""

from __future__ import annotations

import os
import random
import sys
import unicodedata
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from celery_fork_scheduler.backends.base import Claim, ClaimOutcome
from celery_fork_scheduler.backends.redis import RedisBackend
from celery_fork_scheduler.catchup import slots_due
from celery_fork_scheduler.config import BIDI_CONTROLS, Settings, has_control_characters
from celery_fork_scheduler.entry import entry_from_config
from celery_fork_scheduler.ids import (
    TAGS_PER_READ,
    TASK_ID_NAMESPACE,
    delivery_tag,
    slot_isoformat,
    task_id_for,
)
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.timequeue import POPS_BEFORE_PARTITION, TimeQueue

UTC = timezone.utc


def test_a_delivery_tag_is_a_fresh_uuid4_text_like_kombus() -> None:
    tags = [delivery_tag() for _ in range(10 * TAGS_PER_READ)]
    assert len(set(tags)) == len(tags)
    for tag in tags:
        parsed = uuid.UUID(tag)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, tag)


def test_a_forked_child_never_reuses_its_parents_unread_delivery_tags() -> None:
    delivery_tag()  # the parent holds unread tags now
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child writes its tags and leaves at once
        os.write(write, " ".join(delivery_tag() for _ in range(8)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    with os.fdopen(read) as pipe:
        theirs = set(pipe.read().split())
    ours = {delivery_tag() for _ in range(TAGS_PER_READ)}
    assert len(theirs) == 8 and not theirs & ours


@pytest.mark.parametrize("seed", range(5))
def test_the_task_id_is_the_uuid5_of_entry_and_slot(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(400):
        name = "".join(rng.choice("aZ9-_.:/é☃ \u00a0") for _ in range(rng.randint(1, 40)))
        slot = datetime.fromtimestamp(rng.uniform(0, 4e9), UTC).replace(
            microsecond=rng.choice([0, rng.randint(0, 999_999)])
        )
        expected = str(uuid.uuid5(TASK_ID_NAMESPACE, f"{name}@{slot_isoformat(slot)}"))
        assert task_id_for(name, slot) == expected


@pytest.mark.parametrize("count", [1, POPS_BEFORE_PARTITION, POPS_BEFORE_PARTITION + 1, 3000])
def test_a_burst_pops_earliest_first_first_queued_first_and_leaves_the_rest(count: int) -> None:
    rng = random.Random(count)
    queue = TimeQueue()
    base = datetime(2026, 3, 2, 10, tzinfo=UTC)
    pushed = []
    for index in range(count + 50):
        when = base.timestamp() + rng.choice([0, 0, 1, 2, 3, 500])
        entry = SimpleNamespace(name=f"e{index}")
        slot = base - timedelta(seconds=rng.choice([0, 5]))  # some wake up after their slot
        queue.push(when, entry, slot)  # type: ignore[arg-type]
        pushed.append((when, index, entry))
    now = base.timestamp() + 3
    due = queue.pop_due(now)
    expected = sorted((when, index) for when, index, _ in pushed if when <= now)
    assert [(item.when, int(item.entry.name[1:])) for item in due] == expected
    rest = queue.pop_all()
    assert all(item.when > now for item in rest)
    assert len(due) + len(rest) == len(pushed)
    assert queue.oldest_late_slot() is None  # every late item was counted out


def test_equal_schedules_share_their_slots_and_each_entry_gets_its_own() -> None:
    daily = entry_from_config("daily", {"task": "t", "schedule": "0 9 * * *"}, default_timezone=UTC)
    every = entry_from_config("every", {"task": "t", "schedule": 60.0}, default_timezone=UTC)
    nine = datetime(2026, 3, 2, 9, tzinfo=UTC)
    for _ in range(2):  # the second time from the cache
        assert slots_due(daily, nine - timedelta(days=2), nine, grace=timedelta(days=3)) == [
            nine - timedelta(days=1),
            nine,
        ]
        assert slots_due(every, nine - timedelta(minutes=2), nine, grace=timedelta(hours=1)) == [
            nine - timedelta(minutes=1),
            nine,
        ]


@pytest.fixture
def backend(redis_url: str) -> Iterator[RedisBackend]:
    made = RedisBackend.from_url(redis_url, Settings())
    yield made
    made.close()


def _claim(name: str, slot: datetime, **fields: Any) -> Claim:
    return Claim(name, slot, task_id_for(name, slot), **fields)


def test_one_batch_script_answers_each_claim_as_its_own_script_would(
    backend: RedisBackend, redis_client: redis.Redis, redis_url: str
) -> None:
    keys = Keys("scheduler:")
    slot = backend.server_time().replace(microsecond=0) - timedelta(seconds=30)
    redis_client.hset(keys.state("paused"), "paused", "1")
    backend.claim([_claim("twice", slot)])
    batch = [
        _claim("new", slot),
        _claim("paused", slot),
        _claim("twice", slot),  # already this replica's: renewed
        _claim("future", slot + timedelta(hours=1)),
        _claim("excluded", slot, excluded=True),
        _claim("finished", slot, max_runs=1),
    ]
    redis_client.hset(keys.state("finished"), mapping={"runs": "1", "hwm": "1"})
    results = backend.claim(batch)
    assert [result.outcome for result in results] == [
        ClaimOutcome.WON,
        ClaimOutcome.PAUSED,
        ClaimOutcome.WON,
        ClaimOutcome.EARLY,
        ClaimOutcome.EXCLUDED,
        ClaimOutcome.FINISHED,
    ]
    other = RedisBackend.from_url(redis_url, Settings())
    other.replica_id = "another"
    assert [r.outcome for r in other.claim(batch[:1])] == [ClaimOutcome.PENDING]


def test_the_control_character_check_is_the_unicode_categories_for_every_code_point() -> None:
    refused = ("Cc", "Zl", "Zp", "Cs")
    wrong = [
        code
        for code in range(sys.maxunicode + 1)
        if has_control_characters(chr(code))
        != (chr(code) in BIDI_CONTROLS or unicodedata.category(chr(code)) in refused)
    ]
    assert wrong == []
    assert has_control_characters("name\x1b[31m") and not has_control_characters("zürich ☃ 日")


def test_a_schedule_value_resolved_once_is_still_refused_for_a_look_alike_of_another_type() -> None:
    from celery_fork_scheduler.errors import ConfigError

    made = entry_from_config("one", {"task": "t", "schedule": 1}, default_timezone=UTC)
    assert (
        made.schedule
        == entry_from_config("again", {"task": "t", "schedule": 1}, default_timezone=UTC).schedule
    )
    with pytest.raises(ConfigError, match="schedule"):
        entry_from_config("flag", {"task": "t", "schedule": True}, default_timezone=UTC)
    berlin = entry_from_config(
        "zoned",
        {"task": "t", "schedule": "0 9 * * *", "timezone": "Europe/Berlin"},
        default_timezone=UTC,
    )
    plain = entry_from_config("plain", {"task": "t", "schedule": "0 9 * * *"}, default_timezone=UTC)
    assert berlin.schedule.zone != plain.schedule.zone


def test_a_runtime_write_checks_static_names_without_building_the_static_entries(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from celery import Celery

    from celery_fork_scheduler import Manager
    from celery_fork_scheduler.errors import ConfigError

    app = Celery("names", broker="memory://", set_as_current=False)
    app.conf.update(
        fork_scheduler_redis_url=redis_url,
        beat_schedule={f"static-{i}": {"task": "t", "schedule": 60.0} for i in range(3)},
    )
    manager = Manager(app)
    built: list[int] = []
    real = Manager._static_entries

    def counting(self: Manager) -> Any:
        built.append(1)
        return real(self)

    monkeypatch.setattr(Manager, "_static_entries", counting)
    manager.add("runtime-1", "t", "every 5 minutes")
    manager.add_many([{"name": "runtime-2", "task": "t", "schedule": "every 5 minutes"}])
    with pytest.raises(ConfigError, match="static entry"):
        manager.add("static-1", "t", "every 5 minutes")
    with pytest.raises(ConfigError, match="static"):
        manager.remove("static-2")
    assert built == []
