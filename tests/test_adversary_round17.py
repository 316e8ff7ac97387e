"""Adversary round 17: static entries built page by page at start-up (b480492,
``static_build.StaticBuild``; ``Scheduler._read_entries`` / ``_queue_read_late``).

Real Redis (the session's private redis-server); a fake clock that also drives the monotonic
clock. ``SETUP_LOAD_SECONDS`` and ``TICK_BUILD_SECONDS`` are 0 and ``static_build.PAGE_SIZE``
is small, so each start-up and each tick builds exactly one page.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from replica_helpers import fired, make_app, schedulers, store_raw, tick_for
from startup_helpers import at, one_static_page_per_tick

from celery_fork_scheduler import Manager
from celery_fork_scheduler import scheduler as scheduler_module
from celery_fork_scheduler.testing import FakeClock

#: Minutely entries fall due at 10:01:00, 0.2 s after the replicas start.
BEFORE_SLOT = "2026-03-02T10:00:59.800+00:00"
PAGE = 2


@pytest.fixture(autouse=True)
def one_page_per_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    one_static_page_per_tick(monkeypatch, PAGE)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(BEFORE_SLOT)


@pytest.fixture
def make(redis_url: str) -> Iterator[Any]:
    with schedulers(redis_url) as make:
        yield make


@contextlib.contextmanager
def redis_paused(redis_url: str, seconds: float = 4.0) -> Iterator[float]:
    """Redis answers nobody (``CLIENT PAUSE ... ALL``) for ``seconds``; yields when that ends
    (monotonic) and returns once Redis answers again."""
    control = redis.Redis.from_url(redis_url)
    until = time.monotonic() + seconds
    control.execute_command("CLIENT", "PAUSE", int(seconds * 1000), "ALL")
    try:
        yield until
    finally:
        control.ping()  # held by Redis until the pause ends
        control.close()


def minutely(**extra: Any) -> dict[str, Any]:
    return {"task": "reports.minute", "schedule": "* * * * *", **extra}


def yearly() -> dict[str, Any]:
    return {"task": "reports.yearly", "schedule": "0 0 1 1 *"}


def slots_of(published: Any, name: str) -> list[str]:
    return sorted(slot for (entry, slot), count in published.items() if entry == name)


# -- failing -----------------------------------------------------------------------------------


def test_a_replica_paused_mid_build_replays_every_missed_slot_of_the_entries_built_after_it(
    make: Any, clock: FakeClock
) -> None:
    """Promise (guarantees.md, "A replica wakes up late (long pause, busy host)": "Slots no
    older than `fork_scheduler_catchup_grace` (5 s) are each published; older ones follow the
    entry's `catchup` policy"; "With the default policy, longer gaps give one catch-up task".
    And the brief's promise 7: policies behave identically whether an entry is built in
    set-up or on a later page).

    Sequence: pages of 2 in name order: page 1 `a_latest`, `a_skip`; page 2 two yearly
    pads; page 3 `z_latest`, `z_skip` (all minutely but the pads; `*_skip` has
    catchup="skip"). The replica starts at 10:00:59.8 (page 1 built), ticks once at 10:00:59.9
    (page 2), then the host is paused (SIGSTOP, VM migration, a GC pause) until 10:10:30 and
    ticks again: that tick builds page 3.

    What happens: `a_latest` publishes one catch-up slot (10:10) and `a_skip` none — the
    policy. But `z_latest` and `z_skip`, built after the pause, are queued "as if read when
    beat started" (`Scheduler._queue_read_late`): every slot whose publish instant passed
    since `_started` is pushed as a retry item, which `_work_for` claims "whatever the
    catch-up policy" — ten slots each, 10:01 .. 10:10, for a catchup="skip" entry too.
    """
    schedule = {
        "a_latest": minutely(),
        "a_skip": minutely(catchup="skip"),
        "m_pad0": yearly(),
        "m_pad1": yearly(),
        "z_latest": minutely(),
        "z_skip": minutely(catchup="skip"),
    }
    replica = make(clock, "a", beat_schedule=schedule)
    clock.advance(0.1)
    replica.tick()  # page 2
    assert not replica.static.complete
    clock.set("2026-03-02T10:10:30+00:00")  # the host was paused for 9.5 minutes
    tick_for(replica.tick, clock, 1.0, step=0.25)  # page 3, then a few ticks
    assert replica.static.complete
    published = fired(replica.publisher)
    assert slots_of(published, "a_latest") == [at("10:10")]
    assert slots_of(published, "a_skip") == []
    # Built on a later page, the same definitions must behave the same:
    assert slots_of(published, "z_skip") == [], "catchup='skip' entry replayed missed slots"
    assert slots_of(published, "z_latest") == [at("10:10")]


def test_equal_configurations_get_equal_fingerprints_in_every_process() -> None:
    """Promise (brief 6; settings.md, fork_scheduler_owner_grace: a record is "trusted only
    under the very same view (... the same `beat_schedule`)"; static_build's docstring:
    "replicas whose static entries differ never trust each other's progress" — and, in turn,
    replicas whose static entries are equal do).

    Sequence: the same `beat_schedule` — one entry whose args hold a `datetime` (Celery
    pickles or serialises such args fine; the entry is not lazy) and which has tags — is
    fingerprinted by `StaticBuild` in processes with different hash seeds (every beat process
    draws its own, PYTHONHASHSEED unset).

    What happens: `_page_digest` cannot JSON-encode the args, falls back to
    `_definition_text`, which falls back to `repr(entry)`; the repr shows `tags` as a
    `frozenset`, whose order follows the process's string hash seed. The digests differ, so
    two replicas with identical configurations never share a view: ownership never takes
    effect between them (each non-owner asks about every slot after the grace).
    """
    code = textwrap.dedent(
        """
        from datetime import datetime, timezone
        from celery_fork_scheduler.static_build import StaticBuild
        config = {"x": {"task": "t", "schedule": 60, "args": [datetime(2026, 1, 1)],
                        "tags": ["alpha", "beta", "gamma", "delta", "epsilon"]}}
        build = StaticBuild(config, {}, default_timezone=timezone.utc)
        while not build.complete:
            build.page()
        print(build.digest)
        """
    )
    digests = set()
    for seed in ("1", "2", "3", "4"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        digests.add(out.stdout.strip())
    assert len(digests) == 1, f"equal configurations, digests {sorted(digests)}"


def test_replicas_with_different_default_jitter_never_share_a_view(
    make: Any, clock: FakeClock
) -> None:
    """Promise (brief 6: "differing configs (incl. ... jitter defaults) never look equal";
    ownership.py: the view "fingerprints what decides the slots and their owner").

    Sequence: two replicas with the same `beat_schedule`, one with
    `fork_scheduler_default_jitter=30`, the other without; both build every page.

    What happens: the default jitter decides each slot's publish instant, but the static
    digest is taken in `StaticBuild.page` over the entries before `Scheduler._jittered`
    applies the default, and `RuntimeEntries.basis` does not include it either: both
    replicas compute the same ownership basis. (Carried over from the old `_digest`; the
    owner's `oldest_late_slot` keeps a jittered slot out of its progress, so no slot is lost:
    the promise broken is the fingerprint's, not exactly-once.)
    """
    schedule = {"e0": minutely(), "e1": minutely()}
    a = make(clock, "a", beat_schedule=schedule, fork_scheduler_owner_grace=1)
    b = make(
        clock,
        "b",
        beat_schedule=schedule,
        fork_scheduler_owner_grace=1,
        fork_scheduler_default_jitter=30,
    )
    tick_for(lambda: [r.tick() for r in (a, b)], clock, 0.5, step=0.1)
    assert a.static.complete and b.static.complete
    assert a.entries["e0"].effective_jitter != b.entries["e0"].effective_jitter
    basis_a = (a._static_digest, a.runtime.basis())
    basis_b = (b._static_digest, b.runtime.basis())
    assert basis_a != basis_b, "different default jitter, same ownership basis"


@pytest.mark.xfail(
    strict=True,
    reason=(
        "known and documented (guarantees.md, start-up read row): a slot that fell due during "
        "the read, queued when its page is read, and then met an outage that began in that very "
        "tick is asked about when Redis is back whatever its catch-up policy (an outage already "
        "under way when the page is read, or a pause before it, is judged by the policy)"
    ),
)
def test_a_slot_due_during_the_build_is_replayed_after_an_outage_whatever_its_policy(
    make: Any, clock: FakeClock, redis_url: str
) -> None:
    """Promise (guarantees.md, "Redis unreachable (refused, timeout, loading)": "Then the
    tick publishes **nothing**, puts its slots back and asks again one second later ... Slots
    missed in between follow the catch-up rules"; brief 7: an entry behaves identically
    whether it is built in set-up or on a later page).

    Sequence: pages of 2: `a_pad`, `a_skip` | `m_pad0`, `m_pad1` | `z_pad`, `z_skip`
    (`*_skip`: minutely, catchup="skip"). The replica starts at 10:00:59.8 (page 1), ticks at
    10:00:59.9 (page 2); then the claims Redis stops answering (`CLIENT PAUSE ... ALL`; a
    0.2 s socket timeout, no retries). At 10:01:00.5 a tick builds page 3: `z_skip`'s 10:01
    slot is pushed as a retry item; `a_skip`'s 10:01 chain item is due too. Both fail and are
    put back. Redis answers again; at 10:02:30 the replica ticks on.

    What happens: `a_skip`'s 10:01 (90 s old, catchup="skip") is not published — the rule.
    `z_skip`'s 10:01 is published 90 s late: it was queued by `_queue_read_late` as a retry
    item, which `_on_backend_down` puts back unchanged and `_work_for` claims without any
    catch-up rule (`slots = [item.slot]`).
    """
    schedule = {
        "a_pad": yearly(),
        "a_skip": minutely(catchup="skip"),
        "m_pad0": yearly(),
        "m_pad1": yearly(),
        "z_pad": yearly(),
        "z_skip": minutely(catchup="skip"),
    }
    replica = make(
        clock,
        "a",
        beat_schedule=schedule,
        fork_scheduler_redis_options={"socket_timeout": 0.2, "socket_connect_timeout": 0.2},
        fork_scheduler_max_retries=0,
    )
    clock.advance(0.1)
    replica.tick()  # page 2; every mark of page 1 read
    assert not replica.static.complete
    with redis_paused(redis_url):
        for instant in ("10:01:00.500", "10:01:02", "10:01:30", "10:02:00"):
            clock.set(f"2026-03-02T{instant}+00:00")
            replica.tick()
        assert replica.static.complete
        assert replica.outage.active
    clock.set("2026-03-02T10:02:30+00:00")
    tick_for(replica.tick, clock, 2.0, step=0.25)
    assert not replica.outage.active
    published = fired(replica.publisher)
    assert slots_of(published, "a_skip") == []
    assert slots_of(published, "z_skip") == [], "a missed slot of a catchup='skip' entry fired"


def test_one_outage_is_one_error_and_one_recovery_even_when_a_tick_claims_nothing(
    make: Any, clock: FakeClock, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Promise (guarantees.md, "Redis unreachable (refused, timeout, loading)": "One error:
    `claim backend unavailable, publishing nothing until it is back`, then one warning `claim
    backend reachable again, publishing resumes`, followed by one summary").

    Found while building pages during an outage (test above); it needs no static page.
    Sequence: one static entry `a_skip` (minutely, catchup="skip"). Start at 10:00:59.8, tick
    at 10:00:59.9 (marks read). The claims Redis stops answering (`CLIENT PAUSE ... ALL`,
    0.2 s socket timeout, no retries). 10:01:00.5: the claim of 10:01 fails — the error. At
    10:01:30 the chain item is due again; catchup="skip" leaves no slot to claim, so the
    chunk's claim is an empty list, which "succeeds" without asking Redis; `_run_chunk` calls
    `outage.end()`: `claim backend reachable again` is logged (and the summary write fails)
    while Redis is still paused. At 10:02:00.5 the next claim fails: a second
    `claim backend unavailable` error for the same outage.
    """
    replica = make(
        clock,
        "a",
        beat_schedule={"a_skip": minutely(catchup="skip")},
        fork_scheduler_redis_options={"socket_timeout": 0.2, "socket_connect_timeout": 0.2},
        fork_scheduler_max_retries=0,
    )
    clock.advance(0.1)
    replica.tick()
    with redis_paused(redis_url) as paused_until:
        for instant in ("10:01:00.500", "10:01:30", "10:02:00.500"):
            clock.set(f"2026-03-02T{instant}+00:00")
            replica.tick()
        still_paused = time.monotonic() < paused_until
    assert still_paused
    messages = [r.getMessage() for r in caplog.records]
    down = [m for m in messages if "claim backend unavailable" in m]
    back = [m for m in messages if "claim backend reachable again" in m]
    assert back == [], f"recovery announced while Redis was still unreachable: {back}"
    assert len(down) == 1, f"one outage reported {len(down)} times"


# -- probes (pass: checked and found sound) ----------------------------------------------------


def test_probe_a_slot_due_exactly_when_its_page_is_built_fires_once_across_replicas(
    make: Any, clock: FakeClock
) -> None:
    """Probe. Pages of 2; `z_edge` (minutely) is on page 3. Two replicas start at 10:00:59.8;
    the tick building page 3 runs at exactly 10:01:00.000 (publish instant == now, the
    `> now` edge of `_queue_read_late`). Each slot 10:01 and 10:02 of every entry fires once."""
    schedule = {
        "a0": minutely(),
        "a1": minutely(),
        "m0": yearly(),
        "m1": yearly(),
        "z_edge": minutely(),
    }
    replicas = [make(clock, rid, beat_schedule=schedule) for rid in ("a", "b")]
    clock.advance(0.1)
    for r in replicas:
        r.tick()  # page 2
    clock.set("2026-03-02T10:01:00+00:00")
    for r in replicas:
        r.tick()  # page 3, at the slot
    assert all(r.static.complete for r in replicas)
    tick_for(lambda: [r.tick() for r in replicas], clock, 61, step=0.5)
    published = fired(*[r.publisher for r in replicas])
    for name in ("a0", "a1", "z_edge"):
        assert slots_of(published, name) == [at("10:01"), at("10:02")]
        assert published[(name, at("10:01"))] == 1 and published[(name, at("10:02"))] == 1


def test_probe_runtime_entries_polled_during_the_build(
    make: Any, clock: FakeClock, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Probe. Pages of 2, 3 pages; the static `z_static` is on the last page. During the
    build, a runtime entry named `z_static` is stored (as the Manager writes it, bypassing
    the Manager's own refusal) and `Manager.add("rt_new", every minute)` is made. The
    refresh polls both before the static page is built: the static-named one never runs
    (only `z_static`'s static task is published), `rt_new` fires its 10:01 slot once."""
    schedule = {
        "a0": yearly(),
        "a1": yearly(),
        "m0": yearly(),
        "m1": yearly(),
        "z_static": minutely(),
    }
    replica = make(clock, "a", beat_schedule=schedule, fork_scheduler_refresh_interval=0.1)
    client = redis.Redis.from_url(redis_url)
    manager = Manager(make_app(redis_url), clock=clock)
    manager.add("rt_new", "reports.runtime", "* * * * *")
    store_raw(
        client,
        "z_static",
        json.dumps({"schema": 1, "task": "evil.runtime", "schedule": "* * * * *"}),
    )
    clock.advance(0.1)
    replica.tick()  # page 2; the poll applies both
    assert not replica.static.complete
    assert "rt_new" in replica.entries
    assert "z_static" in replica.runtime.refused  # refused by name: a static entry wins
    assert "z_static" not in replica.entries  # its page is not built yet
    assert any("a static entry of this name exists" in r.getMessage() for r in caplog.records)
    tick_for(replica.tick, clock, 2.0, step=0.25)
    assert replica.static.complete
    assert replica.entries["z_static"].task == "reports.minute"
    published = fired(replica.publisher)
    assert slots_of(published, "z_static") == [at("10:01")]
    assert slots_of(published, "rt_new") == [at("10:01")]
    tasks = {o.task for o in replica.publisher.occurrences if o.entry == "z_static"}
    assert tasks == {"reports.minute"}
    client.close()


def test_probe_an_owner_killed_while_a_peer_builds_costs_a_grace_not_a_slot(
    make: Any, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Probe. Ownership on (grace 1 s). `old` builds every page at start-up and reports
    progress; `new` starts (one page built) and `old` is killed (no close: its record stays
    fresh for the owner lease). `new` builds on, then follows owners and sees `old` live
    with a view it cannot trust: every slot 10:01 .. 10:02 of every entry fires once."""
    schedule = {f"e{i}": minutely() for i in range(9)}
    monkeypatch.setattr(scheduler_module, "SETUP_LOAD_SECONDS", 1.0)  # the fake clock stands
    old = make(clock, "old", beat_schedule=schedule, fork_scheduler_owner_grace=1)
    monkeypatch.setattr(scheduler_module, "SETUP_LOAD_SECONDS", 0.0)
    assert old.static.complete
    tick_for(old.tick, clock, 0.1, step=0.05)  # before 10:01: progress reported
    new = make(clock, "new", beat_schedule=schedule, fork_scheduler_owner_grace=1)
    assert not new.static.complete
    clock.set("2026-03-02T10:01:00+00:00")  # old dies now, before asking about 10:01
    tick_for(new.tick, clock, 70, step=0.25)
    published = fired(old.publisher, new.publisher)
    assert published == {(f"e{i}", at(t)): 1 for i in range(9) for t in ("10:01", "10:02")}


def test_probe_catch_up_all_of_an_entry_built_late_claims_each_missed_slot_once_in_order(
    make: Any, clock: FakeClock
) -> None:
    """Probe. Every replica was down from 10:00:30 (the 10:00 slot published). Two replicas
    start at 10:04:30; `z_all` (minutely, catchup="all") is on the last of 3 pages. Its
    missed 10:01 .. 10:04 and the 10:05 slot each fire once, in slot order."""
    schedule = {
        "a0": yearly(),
        "a1": yearly(),
        "m0": yearly(),
        "m1": yearly(),
        "z_all": minutely(catchup="all"),
    }
    clock.set("2026-03-02T09:59:59.800+00:00")
    first = make(clock, "first", beat_schedule={"z_all": minutely(catchup="all")})
    tick_for(first.tick, clock, 0.5, step=0.1)
    assert slots_of(fired(first.publisher), "z_all") == [at("10:00")]
    first.close()
    clock.set("2026-03-02T10:04:30+00:00")
    replicas = [make(clock, rid, beat_schedule=schedule) for rid in ("a", "b")]
    tick_for(lambda: [r.tick() for r in replicas], clock, 40, step=0.25)
    published = fired(*[r.publisher for r in replicas])
    expected = [at(t) for t in ("10:01", "10:02", "10:03", "10:04", "10:05")]
    assert slots_of(published, "z_all") == expected
    assert all(published[("z_all", s)] == 1 for s in expected)  # none refused as too old


def test_a_page_built_during_an_outage_leaves_its_missed_slots_to_the_catch_up_rule(
    make: Any, clock: FakeClock, redis_url: str
) -> None:
    """The fix of the two findings above, where it applies (guarantees.md, start-up read row:
    slots that fell due while the replica could not have claimed them follow the catch-up
    rule). Pages of 2: `a_pad`, `a_skip` | `m_pad0`, `m_pad1` | `z_pad`, `z_skip`. Redis stops
    answering before 10:01:00.5, whose tick builds page 2 and whose claim of `a_skip`'s 10:01
    begins the outage; page 3 (`z_skip`, its 10:01 due since) is built at 10:01:02, the
    outage under way. Redis is back for the tick at 10:02:30: neither 10:01 is published
    (catchup="skip", 90 s late), and each entry's 10:03 is."""
    schedule = {
        "a_pad": yearly(),
        "a_skip": minutely(catchup="skip"),
        "m_pad0": yearly(),
        "m_pad1": yearly(),
        "z_pad": yearly(),
        "z_skip": minutely(catchup="skip"),
    }
    replica = make(
        clock,
        "a",
        beat_schedule=schedule,
        fork_scheduler_redis_options={"socket_timeout": 0.2, "socket_connect_timeout": 0.2},
        fork_scheduler_max_retries=0,
    )
    with redis_paused(redis_url):
        clock.set("2026-03-02T10:01:00.500+00:00")
        replica.tick()  # page 2; a_skip's 10:01 meets the outage
        assert replica.outage.active and not replica.static.complete
        clock.set("2026-03-02T10:01:02+00:00")
        replica.tick()  # page 3, the outage under way
        assert replica.static.complete
    clock.set("2026-03-02T10:02:30+00:00")
    tick_for(replica.tick, clock, 31.0, step=0.5)
    assert not replica.outage.active
    published = fired(replica.publisher)
    assert slots_of(published, "a_skip") == slots_of(published, "z_skip") == [at("10:03")]
