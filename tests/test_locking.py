"""RedisLocker / RedisLock against a real redis-server (fixtures in conftest.py)."""

from __future__ import annotations

import dataclasses
import multiprocessing
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from multiprocessing.process import BaseProcess

import pytest
import redis

from celery_fork_scheduler.errors import (
    ConfigError,
    LockError,
    LockNotAcquiredError,
    LockNotOwnedError,
)
from celery_fork_scheduler.locking import RedisLock, RedisLocker, RedisLockerOptions

PATIENT = RedisLockerOptions(max_retries=100_000, retry_delay=timedelta(milliseconds=1))


class RecordingSleep:
    """A ``sleep`` stand-in that records what it was asked and runs an optional hook."""

    def __init__(self, on_sleep: Callable[[int], None] | None = None) -> None:
        self.calls: list[float] = []
        self.on_sleep = on_sleep

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        if self.on_sleep is not None:
            self.on_sleep(len(self.calls))


class Boom(Exception):
    pass


def wait_until_gone(client: redis.Redis, key: str, timeout: float = 5.0) -> None:
    """Poll until ``key`` no longer exists; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while client.exists(key):
        assert time.monotonic() < deadline, f"{key} did not expire within {timeout} s"
        time.sleep(0.005)


def increment_under_lock(locker: RedisLocker, counter: str, times: int) -> None:
    """A deliberately non-atomic read-modify-write of ``counter``, guarded by the lock."""
    for _ in range(times):
        with locker.lock("counter"):
            value = int(locker.client.get(counter) or 0)
            locker.client.set(counter, value + 1)


def increment_in_process(url: str, counter: str, times: int) -> None:
    """Entry point of a spawned process: its own locker, made from the URL."""
    with RedisLocker(url, PATIENT) as locker:
        increment_under_lock(locker, counter, times)


# --- options -------------------------------------------------------------------------------


def test_options_have_the_documented_defaults() -> None:
    options = RedisLockerOptions.default()
    assert options == RedisLockerOptions()
    assert options.lock_duration == timedelta(seconds=30)
    assert options.max_retries == 3
    assert options.retry_delay == timedelta(milliseconds=100)
    assert options.key_prefix == "scheduler:lock:"
    options.validate()


def test_options_convert_seconds_to_timedelta_once() -> None:
    options = RedisLockerOptions(lock_duration=1.5, retry_delay=2)
    assert options.lock_duration == timedelta(seconds=1.5)
    assert options.retry_delay == timedelta(seconds=2)


def test_options_are_frozen_and_keyword_only() -> None:
    options = RedisLockerOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.max_retries = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        RedisLockerOptions(30)  # type: ignore[call-arg]


def test_options_reject_a_duration_that_is_not_a_number() -> None:
    with pytest.raises(TypeError, match="lock_duration must be a timedelta"):
        RedisLockerOptions(lock_duration="30s")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param(
            RedisLockerOptions(lock_duration=0),
            "lock duration must be positive",
            id="zero-duration",
        ),
        pytest.param(
            RedisLockerOptions(lock_duration=timedelta(seconds=-1)),
            "lock duration must be positive",
            id="negative-duration",
        ),
        pytest.param(
            RedisLockerOptions(max_retries=-1), "max retries cannot be negative", id="retries"
        ),
        pytest.param(
            RedisLockerOptions(retry_delay=-0.1), "retry delay cannot be negative", id="delay"
        ),
        pytest.param(RedisLockerOptions(key_prefix=""), "key prefix cannot be empty", id="prefix"),
    ],
)
def test_invalid_options_are_refused_with_an_exact_message(
    options: RedisLockerOptions, message: str, redis_url: str
) -> None:
    with pytest.raises(ValueError) as caught:
        options.validate()
    assert str(caught.value) == message
    assert isinstance(caught.value, ConfigError)
    with pytest.raises(ValueError) as caught_by_locker:
        RedisLocker(redis_url, options)
    assert str(caught_by_locker.value) == message


def test_zero_retries_and_zero_delay_are_valid() -> None:
    RedisLockerOptions(max_retries=0, retry_delay=0).validate()


# --- acquire and release -------------------------------------------------------------------


def test_a_lock_is_a_prefixed_key_holding_a_unique_token_with_a_ttl(
    redis_client: redis.Redis,
) -> None:
    locker = RedisLocker(redis_client)
    lock = locker.lock("job")
    assert lock.key == "scheduler:lock:job"
    assert lock.duration == timedelta(seconds=30)
    assert len(lock.token) == 32
    assert redis_client.get("scheduler:lock:job") == lock.token.encode()
    assert 29_000 < redis_client.pttl("scheduler:lock:job") <= 30_000
    assert lock.owned()
    lock.unlock()
    assert not redis_client.exists("scheduler:lock:job")
    assert not lock.owned()


def test_every_acquisition_gets_a_fresh_token(redis_client: redis.Redis) -> None:
    locker = RedisLocker(redis_client)
    first = locker.lock("job")
    first.unlock()
    second = locker.lock("job")
    assert second.token != first.token


def test_the_key_prefix_is_configurable(redis_client: redis.Redis) -> None:
    locker = RedisLocker(redis_client, RedisLockerOptions(key_prefix="app:"))
    with locker.lock("job") as lock:
        assert lock.key == "app:job"
        assert redis_client.exists("app:job")


def test_an_empty_key_is_refused(redis_client: redis.Redis) -> None:
    with pytest.raises(ValueError, match="lock key cannot be empty"):
        RedisLocker(redis_client).lock("")


def test_a_held_lock_cannot_be_taken_again(redis_client: redis.Redis) -> None:
    locker = RedisLocker(redis_client, RedisLockerOptions(max_retries=0))
    with locker.lock("job"), pytest.raises(LockNotAcquiredError) as caught:
        locker.lock("job")
    assert caught.value.key == "scheduler:lock:job"
    assert caught.value.attempts == 1
    assert isinstance(caught.value, LockError)


def test_unlocking_twice_raises_not_owned(redis_client: redis.Redis) -> None:
    lock = RedisLocker(redis_client).lock("job")
    lock.unlock()
    with pytest.raises(LockNotOwnedError, match=r"^lock not owned by this instance$"):
        lock.unlock()


def test_a_decoding_client_works_too(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        lock = RedisLocker(client).lock("job")
        assert lock.owned()
        lock.extend()
        lock.unlock()
        assert not lock.owned()
    finally:
        client.close()


# --- retries -------------------------------------------------------------------------------


def test_it_sleeps_retry_delay_between_attempts_then_gives_up(redis_client: redis.Redis) -> None:
    redis_client.set("scheduler:lock:job", "someone-else")
    sleep = RecordingSleep()
    options = RedisLockerOptions(max_retries=3, retry_delay=timedelta(milliseconds=250))
    locker = RedisLocker(redis_client, options, sleep=sleep)
    with pytest.raises(LockNotAcquiredError) as caught:
        locker.lock("job")
    assert caught.value.attempts == 4
    assert sleep.calls == [0.25, 0.25, 0.25]
    assert redis_client.get("scheduler:lock:job") == b"someone-else"


def test_it_acquires_when_the_holder_lets_go_during_a_retry(redis_client: redis.Redis) -> None:
    redis_client.set("scheduler:lock:job", "someone-else")

    def release_on_second_sleep(count: int) -> None:
        if count == 2:
            redis_client.delete("scheduler:lock:job")

    sleep = RecordingSleep(release_on_second_sleep)
    locker = RedisLocker(
        redis_client, RedisLockerOptions(max_retries=5, retry_delay=1), sleep=sleep
    )
    lock = locker.lock("job")
    assert sleep.calls == [1.0, 1.0]
    assert lock.owned()


def test_with_no_retries_it_never_sleeps(redis_client: redis.Redis) -> None:
    redis_client.set("scheduler:lock:job", "someone-else")
    sleep = RecordingSleep()
    locker = RedisLocker(redis_client, RedisLockerOptions(max_retries=0), sleep=sleep)
    with pytest.raises(LockNotAcquiredError):
        locker.lock("job")
    assert sleep.calls == []


def test_an_uncontended_lock_never_sleeps(redis_client: redis.Redis) -> None:
    sleep = RecordingSleep()
    RedisLocker(redis_client, sleep=sleep).lock("job").unlock()
    assert sleep.calls == []


# --- contention ----------------------------------------------------------------------------


def start_and_join(workers: Sequence[threading.Thread | BaseProcess], timeout: float) -> None:
    """Start every worker, then wait up to ``timeout`` seconds for each."""
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout)


def test_threads_increment_a_counter_without_losing_updates(redis_url: str) -> None:
    threads_count, times = 8, 25
    with RedisLocker(redis_url, PATIENT) as locker:
        threads = [
            threading.Thread(target=increment_under_lock, args=(locker, "counter", times))
            for _ in range(threads_count)
        ]
        start_and_join(threads, 60)
        assert not any(thread.is_alive() for thread in threads)
        assert int(locker.client.get("counter") or 0) == threads_count * times
        assert not locker.client.exists("scheduler:lock:counter")


def test_processes_increment_a_counter_without_losing_updates(
    redis_url: str, redis_client: redis.Redis
) -> None:
    processes_count, times = 4, 25
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=increment_in_process, args=(redis_url, "counter", times))
        for _ in range(processes_count)
    ]
    start_and_join(processes, 120)
    assert [process.exitcode for process in processes] == [0] * processes_count
    assert int(redis_client.get("counter") or 0) == processes_count * times


# --- expiry, ownership and extension -------------------------------------------------------


def test_an_expired_lock_cannot_be_unlocked(redis_client: redis.Redis) -> None:
    locker = RedisLocker(redis_client, RedisLockerOptions(lock_duration=0.05))
    lock = locker.lock("job")
    wait_until_gone(redis_client, lock.key)
    assert not lock.owned()
    with pytest.raises(LockNotOwnedError) as caught:
        lock.unlock()
    assert caught.value.key == "scheduler:lock:job"


def test_an_expired_lock_does_not_release_the_next_owner(redis_client: redis.Redis) -> None:
    locker = RedisLocker(redis_client, RedisLockerOptions(lock_duration=0.05))
    stale = locker.lock("job")
    wait_until_gone(redis_client, stale.key)
    fresh = RedisLocker(redis_client).lock("job")
    with pytest.raises(LockNotOwnedError):
        stale.unlock()
    with pytest.raises(LockNotOwnedError):
        stale.extend()
    assert redis_client.get(fresh.key) == fresh.token.encode()
    assert fresh.owned()


def test_a_non_owner_cannot_unlock_and_the_owner_keeps_the_key(redis_client: redis.Redis) -> None:
    locker = RedisLocker(redis_client)
    owner = locker.lock("job")
    intruder = RedisLock(locker, owner.key, "not-the-owner-token", owner.duration)
    assert not intruder.owned()
    with pytest.raises(LockNotOwnedError):
        intruder.unlock()
    with pytest.raises(LockNotOwnedError):
        intruder.extend()
    assert redis_client.get(owner.key) == owner.token.encode()
    owner.unlock()


def test_extend_resets_the_ttl_to_the_lock_duration(redis_client: redis.Redis) -> None:
    lock = RedisLocker(redis_client, RedisLockerOptions(lock_duration=10)).lock("job")
    redis_client.pexpire(lock.key, 500)  # as if most of the lock's time had passed
    lock.extend()
    assert 9_000 < redis_client.pttl(lock.key) <= 10_000


@pytest.mark.parametrize(
    ("duration", "expected_ms"),
    [
        pytest.param(timedelta(minutes=1), 60_000, id="timedelta"),
        pytest.param(2.5, 2_500, id="float-seconds"),
    ],
)
def test_extend_sets_the_ttl_to_the_given_duration(
    redis_client: redis.Redis, duration: timedelta | float, expected_ms: int
) -> None:
    lock = RedisLocker(redis_client, RedisLockerOptions(lock_duration=10)).lock("job")
    lock.extend(duration)
    assert expected_ms - 1_000 < redis_client.pttl(lock.key) <= expected_ms
    assert lock.duration == timedelta(seconds=10)


def test_extend_refuses_a_non_positive_duration(redis_client: redis.Redis) -> None:
    lock = RedisLocker(redis_client).lock("job")
    with pytest.raises(ValueError, match="extend duration must be positive"):
        lock.extend(0)


def test_extend_fails_after_expiry(redis_client: redis.Redis) -> None:
    lock = RedisLocker(redis_client, RedisLockerOptions(lock_duration=0.05)).lock("job")
    wait_until_gone(redis_client, lock.key)
    with pytest.raises(LockNotOwnedError):
        lock.extend()
    assert not redis_client.exists(lock.key)


# --- context managers ----------------------------------------------------------------------


def test_the_context_manager_releases_on_exit(redis_client: redis.Redis) -> None:
    with RedisLocker(redis_client).lock("job") as lock:
        assert lock.owned()
    assert not redis_client.exists(lock.key)


def test_the_context_manager_releases_on_exception(redis_client: redis.Redis) -> None:
    locker = RedisLocker(redis_client)
    with pytest.raises(Boom), locker.lock("job"):
        raise Boom
    assert not redis_client.exists("scheduler:lock:job")


def test_leaving_a_lost_lock_raises_not_owned(redis_client: redis.Redis) -> None:
    locker = RedisLocker(redis_client)
    with pytest.raises(LockNotOwnedError), locker.lock("job"):
        redis_client.delete("scheduler:lock:job")


def test_a_failing_body_keeps_its_exception_when_the_lock_was_lost(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    locker = RedisLocker(redis_client)
    with pytest.raises(Boom), locker.lock("job"):
        redis_client.delete("scheduler:lock:job")
        raise Boom
    assert "was lost" in caplog.text


def client_connected(client: redis.Redis, name: str) -> bool:
    return any(entry.get("name") == name for entry in client.client_list())


def test_a_locker_closes_the_client_it_made_from_a_url(
    redis_url: str, redis_client: redis.Redis
) -> None:
    with RedisLocker(f"{redis_url}?client_name=made-by-locker") as locker:
        locker.lock("job").unlock()
        assert client_connected(redis_client, "made-by-locker")
    deadline = time.monotonic() + 5
    while client_connected(redis_client, "made-by-locker"):
        assert time.monotonic() < deadline, "the locker left its connection open"
        time.sleep(0.01)


def test_a_locker_leaves_a_given_client_open(redis_url: str, redis_client: redis.Redis) -> None:
    mine = redis.Redis.from_url(redis_url, client_name="given-client")
    try:
        with RedisLocker(mine) as locker:
            locker.lock("job").unlock()
        assert client_connected(redis_client, "given-client")
    finally:
        mine.close()


def test_a_locker_from_the_app_uses_the_scheduler_settings(redis_url: str) -> None:
    from celery import Celery

    app = Celery("locks", set_as_current=False, broker=redis_url)
    app.conf.update(
        fork_scheduler_lock_duration=7,
        fork_scheduler_max_retries=1,
        fork_scheduler_key_prefix="myapp:",
    )
    locker = RedisLocker.from_app(app)
    try:
        with locker.lock("nightly") as lock:
            assert lock.key == "myapp:lock:nightly"
            assert 6000 < locker.client.pttl("myapp:lock:nightly") <= 7000
        assert locker.options.max_retries == 1
    finally:
        locker.close()
