"""Event listeners: registered in code or by the setting, they see the same events.

Beat-side events come from an in-process Scheduler (fake clock, real Redis); worker-side events
are sent as the worker hooks send them (``signals.job_*``) — the real worker is covered by
tests/e2e/test_events_e2e.py.
"""

from __future__ import annotations

import importlib
import logging
import sys
import textwrap
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import replica_helpers
from celery import Celery
from replica_helpers import BrokenPublisher

from celery_fork_scheduler import (
    EventListener,
    LoggingEventListener,
    Manager,
    Scheduler,
    every,
    install,
    listeners,
    register_event_listeners,
    signals,
)
from celery_fork_scheduler.errors import ConfigError
from celery_fork_scheduler.testing import FakeClock

START = "2026-03-02T10:00:00.300+00:00"

LISTENER_MODULE = """
EVENTS = []
INSTANCES = []


class FileListener:
    '''Records every hook call, with the listener that got it.'''

    def __init__(self):
        INSTANCES.append(self)

    def on_job_run(self, job_id, job_name):
        EVENTS.append((self, "run", job_id, job_name))

    def on_job_complete(self, job_id, job_name, duration):
        EVENTS.append((self, "complete", job_id, job_name, duration))

    def on_job_error(self, job_id, job_name, error):
        EVENTS.append((self, "error", job_id, job_name, error))

    def on_entry_due(self, job_name, slot):
        EVENTS.append((self, "due", job_name, slot))

    def on_entry_dispatched(self, job_name, slot, job_id, replica):
        EVENTS.append((self, "dispatched", job_name, slot, job_id, replica))

    def on_entry_skipped(self, job_name, slot, reason):
        EVENTS.append((self, "skipped", job_name, slot, reason))

    def on_entry_failed(self, job_name, slot, job_id, error):
        EVENTS.append((self, "failed", job_name, slot, job_id, error))


SHARED = FileListener()
"""


@pytest.fixture
def listener_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A fresh module, importable by a unique name, with a listener class and an instance."""
    name = f"listener_mod_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(LISTENER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    yield module
    listeners.unregister_event_listeners(*module.INSTANCES)
    sys.modules.pop(name, None)


@pytest.fixture
def registered() -> Iterator[list[Any]]:
    """Listeners a test registers in code; unregistered at the end."""
    made: list[Any] = []
    yield made
    listeners.unregister_event_listeners(*made)


SCHEDULE = {
    "ok": {"task": "t", "schedule": every(1).seconds},
    "paused": {"task": "t", "schedule": every(1).seconds},
    "broken": {"task": "t", "schedule": every(2).seconds},
}


def make_app(redis_url: str, **conf: Any) -> Celery:
    return replica_helpers.make_app(redis_url, SCHEDULE, main="listeners", **conf)


def run_beat(app: Celery, seconds: float = 3) -> Scheduler:
    clock = FakeClock(START)
    scheduler = Scheduler(app, clock=clock, publisher=BrokenPublisher(), exit_on_config_error=False)
    try:
        Manager(app).pause("paused")
        replica_helpers.tick_for(scheduler.tick, clock, seconds)
    finally:
        scheduler.close()
    return scheduler


def send_job_events() -> tuple[str, str, BaseException]:
    """Send the worker-side signals of one completed and one failed run."""
    good, bad = str(uuid.uuid4()), str(uuid.uuid4())
    error = ValueError("task bug")
    slot = "2026-03-02T10:00:01+00:00"
    signals.job_started.send(sender=None, entry="ok", slot=slot, task_id=good)
    signals.job_completed.send(sender=None, entry="ok", slot=slot, task_id=good, duration=0.25)
    signals.job_started.send(sender=None, entry="broken", slot=slot, task_id=bad)
    signals.job_failed.send(sender=None, entry="broken", slot=slot, task_id=bad, exception=error)
    return good, bad, error


def calls_of(module: Any, listener: Any) -> list[tuple[Any, ...]]:
    return [event[1:] for event in module.EVENTS if event[0] is listener]


def test_listeners_registered_in_code_and_by_the_setting_get_the_same_events(
    redis_url: str, listener_module: Any, registered: list[Any]
) -> None:
    in_code = listener_module.FileListener()
    registered.append(in_code)
    register_event_listeners(in_code)
    app = make_app(
        redis_url, fork_scheduler_event_listeners=[f"{listener_module.__name__}.FileListener"]
    )
    scheduler = run_beat(app)
    good, bad, error = send_job_events()

    from_setting = [
        i for i in listener_module.INSTANCES if i not in (in_code, listener_module.SHARED)
    ]
    assert len(from_setting) == 1
    expected = calls_of(listener_module, in_code)
    assert calls_of(listener_module, from_setting[0]) == expected

    kinds = [call[0] for call in expected]
    assert {"due", "dispatched", "skipped", "failed", "run", "complete", "error"} <= set(kinds)
    replica = scheduler.backend.replica_id
    first = datetime.fromisoformat("2026-03-02T10:00:01+00:00")
    assert ("due", "ok", first) in expected
    assert ("skipped", "paused", first, "paused") in expected
    dispatched = [c for c in expected if c[0] == "dispatched"]
    assert [c[1] for c in dispatched] == ["ok", "ok", "ok"]
    assert all(c[4] == replica for c in dispatched)
    [failed, *_] = [c for c in expected if c[0] == "failed"]
    assert failed[1] == "broken" and isinstance(failed[4], ConnectionError)
    assert expected[-4:] == [
        ("run", good, "ok"),
        ("complete", good, "ok", 0.25),
        ("run", bad, "broken"),
        ("error", bad, "broken", error),
    ]


def test_a_setting_may_name_a_listener_object(redis_url: str, listener_module: Any) -> None:
    shared = listener_module.SHARED
    app = make_app(redis_url, fork_scheduler_event_listeners=f"{listener_module.__name__}.SHARED")
    run_beat(app, seconds=1)
    assert [shared] == listener_module.INSTANCES
    assert ("skipped", "paused", datetime.fromisoformat("2026-03-02T10:00:01+00:00"), "paused") in (
        calls_of(listener_module, shared)
    )


def test_the_manager_registers_listeners_too(
    redis_url: str, listener_module: Any, registered: list[Any]
) -> None:
    listener = listener_module.FileListener()
    registered.append(listener)
    app = make_app(redis_url)
    assert Manager(app).register_event_listeners(listener) is not None
    good, _, _ = send_job_events()
    assert calls_of(listener_module, listener)[:2] == [
        ("run", good, "ok"),
        ("complete", good, "ok", 0.25),
    ]


def test_a_listener_class_from_the_setting_gets_each_event_once_under_install(
    redis_url: str, listener_module: Any
) -> None:
    app = make_app(
        redis_url, fork_scheduler_event_listeners=[f"{listener_module.__name__}.FileListener"]
    )
    install(app)  # what the project module does; `celery beat` then starts the Scheduler
    run_beat(app, seconds=1)
    dispatched = [e for e in listener_module.EVENTS if e[1] == "dispatched"]
    assert len(dispatched) == 1


def test_an_unknown_listener_path_is_a_config_error(redis_url: str) -> None:
    app = make_app(redis_url, fork_scheduler_event_listeners=["no_such_module_xyz.Listener"])
    with pytest.raises(ConfigError) as raised:
        Scheduler(app, clock=FakeClock(START), exit_on_config_error=False)
    assert raised.value.field == "fork_scheduler_event_listeners"


def test_a_raising_listener_is_logged_and_the_others_still_run(
    redis_url: str, listener_module: Any, registered: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        def on_entry_dispatched(self, *args: Any) -> None:
            raise RuntimeError("listener bug")

        def on_job_complete(self, *args: Any) -> None:
            raise RuntimeError("listener bug")

    broken, healthy = Broken(), listener_module.FileListener()
    registered.extend([broken, healthy])
    register_event_listeners(broken, healthy)
    with caplog.at_level(logging.ERROR, logger="celery_fork_scheduler.events"):
        run_beat(make_app(redis_url), seconds=2)
        send_job_events()
    calls = calls_of(listener_module, healthy)
    assert [c[1] for c in calls if c[0] == "dispatched"] == ["ok", "ok"]
    assert [c[0] for c in calls[-4:]] == ["run", "complete", "run", "error"]
    raised = [r for r in caplog.records if r.getMessage().startswith("event listener")]
    assert len(raised) == 3  # two dispatches, one completion
    assert all(r.exc_info and "listener bug" in str(r.exc_info[1]) for r in raised)


def test_registering_is_idempotent_and_unregistering_stops_the_calls(
    listener_module: Any, registered: list[Any]
) -> None:
    listener = listener_module.FileListener()
    registered.append(listener)
    register_event_listeners(listener)
    register_event_listeners(listener)
    send_job_events()
    assert len(calls_of(listener_module, listener)) == 4
    listeners.unregister_event_listeners(listener)
    send_job_events()
    assert len(calls_of(listener_module, listener)) == 4


def test_an_object_without_any_hook_is_refused() -> None:
    with pytest.raises(TypeError, match="has none of the hooks"):
        register_event_listeners(object())


def test_a_listener_with_only_an_optional_beat_hook_is_accepted(registered: list[Any]) -> None:
    class FailuresOnly:
        def __init__(self) -> None:
            self.seen: list[str] = []

        def on_entry_failed(self, job_name: str, slot: Any, job_id: str, error: Any) -> None:
            self.seen.append(job_name)

    listener = FailuresOnly()
    registered.append(listener)
    register_event_listeners(listener)
    signals.entry_failed.send(sender=None, entry="x", slot=None, task_id="i", exception=None)
    assert listener.seen == ["x"]


def test_the_logging_listener_logs_each_event(
    redis_url: str, registered: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    listener = LoggingEventListener()
    assert isinstance(listener, EventListener)
    registered.append(listener)
    register_event_listeners(listener)
    with caplog.at_level(logging.INFO, logger="celery_fork_scheduler.events"):
        run_beat(make_app(redis_url), seconds=1)
        good, bad, _ = send_job_events()
    records = [r for r in caplog.records if r.name == "celery_fork_scheduler.events"]
    messages = [(r.levelno, r.getMessage()) for r in records]
    assert (logging.INFO, f"job ok started (id {good})") in messages
    assert any(m.startswith("job ok completed in 0.250 s") for _, m in messages)
    assert (logging.ERROR, f"job broken failed (id {bad}): ValueError('task bug')") in messages
    assert any(
        level == logging.INFO
        and m.startswith("job ok slot 2026-03-02 10:00:01+00:00 dispatched by")
        for level, m in messages
    )
    assert (logging.INFO, "job paused slot 2026-03-02 10:00:01+00:00 skipped: paused") in messages
