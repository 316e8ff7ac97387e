"""Round 23: sibling templates (a shape's Basis read once, the argsrepr shortcut) and the
heap freeze of beat."""

from __future__ import annotations

import enum
import json
import subprocess
import sys
import textwrap
from datetime import timezone
from typing import Any

import pytest
from celery import Celery
from publish_helpers import declare_queues, sent_by_celery
from test_message_template import SLOTS, broker, make_app, same_message

from celery_fork_scheduler import ConfigError, publishing
from celery_fork_scheduler.config import read_settings
from celery_fork_scheduler.entry import entry_from_config
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.publishing import CeleryPublisher, build_occurrence

__all__ = ["broker"]


@pytest.fixture
def captures(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    made: list[str] = []
    real = publishing.capture

    def counting(channel: Any, send: Any) -> Any:
        made.append("capture")
        return real(channel, send)

    monkeypatch.setattr(publishing, "capture", counting)
    return made


def occurrence_of(name: str, number: int, **definition: Any) -> Any:
    made = entry_from_config(
        name,
        {"task": "tasks.report", "schedule": 60, **definition},
        default_timezone=timezone.utc,
    )
    slot = SLOTS[number % len(SLOTS)]
    return build_occurrence(made, slot, task_id_for(name, slot))


def compare(app: Any, producer: Any, publisher: CeleryPublisher, occurrence: Any) -> None:
    rendered = publisher.render(occurrence, producer, producer.channel)
    assert rendered is not None
    expected = sent_by_celery(app, producer, occurrence)
    assert [q for q, _ in rendered.messages] == [q for q, _ in expected]
    for (_, ours), (_, theirs) in zip(rendered.messages, expected, strict=True):
        for header in ("argsrepr", "kwargsrepr"):
            assert ours["headers"][header] == theirs["headers"][header], header
        same_message(ours, theirs)


def test_sibling_kwargsrepr_with_kwargsrepr_maxsize_zero_is_celerys(
    broker: str, captures: list[str]
) -> None:
    """Found failing by round 23, fixed. Promise: a sibling's message is Celery's, field by field
    (docs/guarantees.md, "Entries of one shape share one capture"). ``app.amqp.kwargsrepr_maxsize
    = 0`` (keep keyword arguments out of logs and events) makes Celery's ``saferepr({}, 0)``
    write ``', ...'``; the new ``_saferepr`` shortcut returns ``repr({})`` == ``'{}'`` for every
    empty-kwargs sibling without asking ``saferepr``. Reproduce: two entries of one task, no
    kwargs, ``app.amqp.kwargsrepr_maxsize = 0``; render the second; compare with
    ``sent_by_celery``: ``headers.kwargsrepr`` is ``'{}'`` vs ``', ...'``."""
    app = make_app(broker, {})
    app.amqp.kwargsrepr_maxsize = 0
    with app.producer_or_acquire() as producer:
        declare_queues(app, producer)
        publisher = CeleryPublisher(app, lambda: producer)
        for number, region in enumerate(["eu", "us", "ap"]):
            compare(app, producer, publisher, occurrence_of(f"e{number}", number, args=[region]))
    assert len(captures) == 1
    app.close()


def test_sibling_argsrepr_of_empty_args_with_argsrepr_maxsize_zero_is_celerys(
    broker: str, captures: list[str]
) -> None:
    """Found failing by round 23, fixed. Same promise, the ``argsrepr`` side: with
    ``app.amqp.argsrepr_maxsize = 0`` Celery writes ``saferepr((), 0)`` == ``', ...'`` for an
    entry without args; a sibling gets ``'()'`` from the shortcut. Reproduce: entries with only
    kwargs, ``argsrepr_maxsize = 0``."""
    app = make_app(broker, {})
    app.amqp.argsrepr_maxsize = 0
    with app.producer_or_acquire() as producer:
        declare_queues(app, producer)
        publisher = CeleryPublisher(app, lambda: producer)
        for number, day in enumerate(["monday", "friday"]):
            compare(
                app,
                producer,
                publisher,
                occurrence_of(f"k{number}", number, task="siblings.nokw", kwargs={"day": day}),
            )
    assert len(captures) == 1
    app.close()


def test_sibling_with_unlimited_argsrepr_maxsize_is_sent_as_celery_sends_it(
    broker: str, captures: list[str]
) -> None:
    """Found failing by round 23, fixed. Promise: a sibling Celery accepts is sent (and its message
    is Celery's). ``app.amqp.argsrepr_maxsize = None`` is ``saferepr``'s "no limit" (Celery sends
    ``saferepr(args, None)`` fine); the shortcut evaluates ``len(text) * 2 < None`` for an
    integer tuple and raises ``TypeError``, so every sibling with integer args is refused (its
    slot fails) while Celery would send it. Reproduce: ``argsrepr_maxsize = None``, two entries
    of one task with args ``[1]`` and ``[2]``, render the second."""
    app = make_app(broker, {})
    app.amqp.argsrepr_maxsize = None
    with app.producer_or_acquire() as producer:
        declare_queues(app, producer)
        publisher = CeleryPublisher(app, lambda: producer)
        for number in range(2):
            compare(
                app,
                producer,
                publisher,
                occurrence_of(f"n{number}", number, task="siblings.ints", args=[number]),
            )
    assert len(captures) == 1
    app.close()


@pytest.mark.parametrize("args", [[], [1, 2]], ids=["one-int", "three-ints"])
def test_sibling_argsrepr_with_negative_task_repr_maxlevels_is_celerys(
    broker: str, captures: list[str], args: list[int]
) -> None:
    """Found failing by round 23 (an odd setting value, but one Celery accepts and honours), fixed.
    Same promise: ``task_repr_maxlevels = -1`` makes Celery's ``saferepr`` cut at the top level
    (``'(...,)'``, ``'(...)'``, ``'{...}'``); the shortcut ignores ``maxlevels`` and writes
    ``'(1,)'`` / ``'(1, 2, 1)'`` / ``'{}'``. Before this commit the sibling called ``saferepr``
    and matched. Reproduce: ``app.conf.task_repr_maxlevels = -1``, two entries of one task."""
    app = make_app(broker, {"task_repr_maxlevels": -1})
    with app.producer_or_acquire() as producer:
        declare_queues(app, producer)
        publisher = CeleryPublisher(app, lambda: producer)
        for number in range(2):
            compare(
                app,
                producer,
                publisher,
                occurrence_of(f"m{number}", number, task="siblings.levels", args=[*args, number]),
            )
    assert len(captures) == 1
    app.close()


def test_a_sibling_made_after_argsrepr_maxsize_changed_is_celerys(
    broker: str, captures: list[str]
) -> None:
    """Found failing by round 23, fixed (regression of this commit; see the report on whether config
    changes after start-up are in scope). Promise: a new entry's first message is the one Celery
    sends for it. ``Basis`` reads ``app.amqp.argsrepr_maxsize`` once, at the shape's first
    sibling, and every later sibling (a runtime entry added an hour later) keeps it: Celery
    truncates the new entry's ``argsrepr`` at the size now set, the sibling does not. Before this
    commit each sibling read the size when it was made. Reproduce: entries a, b of one shape
    rendered, ``app.amqp.argsrepr_maxsize = 8``, render a new entry c with a long string
    argument."""
    app = make_app(broker, {})
    with app.producer_or_acquire() as producer:
        declare_queues(app, producer)
        publisher = CeleryPublisher(app, lambda: producer)
        compare(app, producer, publisher, occurrence_of("a", 0, args=["eu"]))
        compare(app, producer, publisher, occurrence_of("b", 1, args=["us"]))
        app.amqp.argsrepr_maxsize = 8
        compare(app, producer, publisher, occurrence_of("c", 2, args=["a-long-region-name"]))
    assert len(captures) == 1
    app.close()


def test_a_sibling_made_after_its_task_got_its_own_apply_async_is_captured(
    redis_url: str, captures: list[str]
) -> None:
    """Found failing by round 23 (regression of this commit; same scope question as above), fixed.
    Promise (docs/ guarantees.md): "A task that overrides ``apply_async`` ... never shares: each
    entry is captured". ``shareable`` is now evaluated once per known shape, at its first
    sibling; when the task registered under that name is replaced afterwards by one whose
    ``apply_async`` stamps a header from the arguments (a module reloaded, a late ``app.task(...,
    base=Stamping)``), a new sibling still copies the shape's template, and its message lacks
    what Celery's ``apply_async`` would add. Before this commit ``shareable`` was asked for each
    sibling. Reproduce: entries a, b of a plain registered task rendered; register a task of that
    name with its own ``apply_async``; render c."""
    app = Celery("replaced", broker=redis_url, set_as_current=False)

    @app.task(name="siblings.replaced", shared=False)  # type: ignore[untyped-decorator]
    def report(region: str) -> None: ...

    with app.producer_or_acquire() as producer:
        publisher = CeleryPublisher(app, lambda: producer)
        for number, region in enumerate(["eu", "us"]):
            occurrence = occurrence_of(
                f"r{number}", number, task="siblings.replaced", args=[region]
            )
            assert publisher.render(occurrence, producer, producer.channel) is not None

        class Stamping(app.Task):  # type: ignore[name-defined,misc]
            def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
                options.setdefault("headers", {})["first-arg"] = str((args or [""])[0])
                return super().apply_async(args, kwargs, **options)

        class Replacement(Stamping):
            name = "siblings.replaced"
            typing = False  # (a class-based task has no ``__header__``: see the next test)

            def run(self, region: str) -> None: ...

        with pytest.warns(UserWarning, match="already registered"):  # Celery says so
            app.register_task(Replacement())
        assert isinstance(app.tasks["siblings.replaced"], Stamping)
        late = occurrence_of("r-late", 2, task="siblings.replaced", args=["ap"])
        expected = sent_by_celery(app, producer, late)
        assert expected[0][1]["headers"]["first-arg"] == "ap"
        # Since round 27 a task that overrides ``apply_async`` gets no template at all: its
        # messages go through Celery (this one's own ``apply_async``), header included.
        assert publisher.render(late, producer, producer.channel) is None
    app.close()


def test_a_sibling_of_a_class_based_task_is_sent_as_celery_sends_it(
    redis_url: str, captures: list[str]
) -> None:
    """Found failing by round 23 (older than this commit, still there), fixed. Promise: a sibling
    Celery accepts is sent, with Celery's message. A class-based task registered with
    ``app.register_task`` (Celery's documented way for ``Task`` subclasses) has ``typing = True``
    but no ``__header__`` (only ``app.task`` on a function makes one); ``Task.apply_async`` skips
    the check then (``except AttributeError: pass``), while ``for_sibling`` calls
    ``task.__header__(...)`` unguarded and raises ``AttributeError``: the second entry of such a
    task is refused, its slot fails, every time. Reproduce: ``app.register_task(Report())``, two
    entries of it, render the second."""
    app = Celery("classy", broker=redis_url, set_as_current=False)

    class Report(app.Task):  # type: ignore[name-defined,misc]
        name = "siblings.classy"

        def run(self, region: str) -> None: ...

    app.register_task(Report())
    with app.producer_or_acquire() as producer:
        publisher = CeleryPublisher(app, lambda: producer)
        for number, region in enumerate(["eu", "us"]):
            occurrence = occurrence_of(f"c{number}", number, task="siblings.classy", args=[region])
            compare(app, producer, publisher, occurrence)
    assert len(captures) == 1
    app.close()


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


#: Sibling argument shapes checked against Celery and found right (the shortcut is taken only
#: for a plain tuple of at most 16 ``int``; bools, IntEnum, nested tuples go to ``saferepr``).
ARGUMENTS: dict[str, tuple[list[Any], dict[str, Any]]] = {
    "ints": ([7, -3], {}),
    "bools": ([True, False, 1], {}),
    "int-enum": ([Level.HIGH, 2], {}),
    "big-ints": ([10**200, -(10**200)], {}),
    "long-int-tuple": ([10**60] * 16, {}),
    "nested-tuples": ([(1, (2, (3, (4, (5,))))), [1, [2, [3, [4]]]]], {}),
    "deep-kwargs": ([], {"a": {"b": {"c": {"d": 1}}}, "n": None}),
    "empty": ([], {}),
    "seventeen": (list(range(17)), {}),
}

#: Per-entry options checked (passing) with the shapes above.
SIBLING_OPTIONS: dict[str, dict[str, Any]] = {
    "json": {},
    "pickle-zlib": {"serializer": "pickle", "compression": "zlib"},
    "given-reprs": {"argsrepr": "<hidden>", "kwargsrepr": "<hidden>", "serializer": "pickle"},
    "given-none-reprs": {"argsrepr": None, "kwargsrepr": None, "serializer": "pickle"},
}


@pytest.mark.parametrize("option_case", list(SIBLING_OPTIONS))
def test_passing_sibling_argument_shapes_are_celerys(
    broker: str, captures: list[str], option_case: str
) -> None:
    """Pinned (checked correct): bool / IntEnum / big int / nested tuple arguments, a per-entry
    serializer and compression, given and ``None`` argsrepr/kwargsrepr, with small
    ``argsrepr_maxsize``, ``kwargsrepr_maxsize`` and ``task_repr_maxlevels`` (set before the
    first sibling): each sibling is Celery's message, one capture per shape."""
    app = make_app(broker, {"task_repr_maxlevels": 2})
    app.amqp.argsrepr_maxsize = 40
    app.amqp.kwargsrepr_maxsize = 12
    options = SIBLING_OPTIONS[option_case]
    with app.producer_or_acquire() as producer:
        declare_queues(app, producer)
        publisher = CeleryPublisher(app, lambda: producer)
        for number, (args, kwargs) in enumerate(ARGUMENTS.values()):
            occurrence = occurrence_of(
                f"s{number}",
                number,
                task="siblings.shapes",
                args=args,
                kwargs=kwargs,
                options=options,
            )
            compare(app, producer, publisher, occurrence)
    # pickle writes repeated objects as references: each pickled entry is captured (round 25)
    expected = len(ARGUMENTS) if options.get("serializer") == "pickle" else 1
    assert len(captures) == expected
    app.close()


def test_passing_config_changed_before_the_first_sibling_is_read(
    broker: str, captures: list[str]
) -> None:
    """Pinned (checked correct): the Basis is read at the shape's first sibling, not at the capture,
    so a repr size changed between the capture and the first sibling is honoured."""
    app = make_app(broker, {})
    with app.producer_or_acquire() as producer:
        declare_queues(app, producer)
        publisher = CeleryPublisher(app, lambda: producer)
        compare(app, producer, publisher, occurrence_of("a", 0, args=["eu"]))
        app.amqp.argsrepr_maxsize = 8
        compare(app, producer, publisher, occurrence_of("b", 1, args=["a-long-region-name"]))
    assert len(captures) == 1
    app.close()


def test_passing_a_refused_sibling_raises_as_celery_and_leaves_the_shape_usable(
    broker: str, captures: list[str]
) -> None:
    """Pinned (checked correct): a sibling the task's signature refuses raises ``TypeError`` as
    ``apply_async`` does (after the Basis was read), and the next sibling is still Celery's."""
    app = make_app(broker, {})

    @app.task(name="round23.refuses", shared=False)  # type: ignore[untyped-decorator]
    def refuses(region: str, *, day: str = "today") -> None: ...

    task = "round23.refuses"  # a name no other test registers for every app
    with app.producer_or_acquire() as producer:
        declare_queues(app, producer)
        publisher = CeleryPublisher(app, lambda: producer)
        compare(app, producer, publisher, occurrence_of("a", 0, task=task, args=["eu"]))
        wrong = occurrence_of("wrong", 1, task=task, args=["a", "b", "c"])
        with pytest.raises(TypeError):
            publisher.render(wrong, producer, producer.channel)
        with pytest.raises(TypeError):
            sent_by_celery(app, producer, wrong)
        compare(app, producer, publisher, occurrence_of("b", 2, task=task, args=["us"]))
    assert len(captures) == 1
    app.close()


# --- the heap freeze: each case runs in a fresh interpreter (the collector is the process's) --

HEAP_SCRIPT = textwrap.dedent(
    """
    import gc, json, sys, tempfile, tracemalloc, weakref
    from celery import signals as celery_signals
    from pathlib import Path
    from celery import Celery
    from celery_fork_scheduler import Scheduler
    from celery_fork_scheduler.backends.local import LocalBackend
    from celery_fork_scheduler.entry import entry_from_config
    from celery_fork_scheduler.testing import FakeClock, RecordingPublisher, ScheduleHarness

    case, threshold = sys.argv[1], json.loads(sys.argv[2])
    gc.set_threshold(*threshold)
    tracemalloc.start()
    result = {}

    def make_app(**conf):
        app = Celery("heap", set_as_current=False, broker="memory://")
        app.conf.update(
            timezone="UTC", beat_schedule={"e": {"task": "t", "schedule": 1.0}}, **conf
        )
        return app

    if case == "harness":
        def run():
            app = make_app()
            harness = ScheduleHarness(app, start="2026-03-02T10:00:00+00:00")
            harness.advance(seconds=3)
            fired = len(harness.fired("e"))
            harness.close()
            return weakref.ref(app), fired
        app_ref, fired = run()
        gc.collect()
        result = {"fired": fired, "app_alive": app_ref() is not None}
    elif case == "removed":
        app = make_app()
        clock = FakeClock("2026-03-02T10:00:00.300+00:00")
        scheduler = Scheduler(
            app, clock=clock, publisher=RecordingPublisher(),
            backend=LocalBackend(Path(tempfile.mkdtemp()) / "state.json"),
            exit_on_config_error=False,
        )
        # what beat.Service.start sends before its first tick: this scheduler is beat's
        service = type("Service", (), {"scheduler": scheduler})()
        celery_signals.beat_init.send(sender=service)
        for number in range(100):
            scheduler.put_entry(entry_from_config(
                f"r{number}", {"task": "t", "schedule": 1.0, "args": [f"{number}" + "x" * 50_000]},
                default_timezone=scheduler.default_timezone, source="runtime",
            ), clock.now)
        for _ in range(3):
            scheduler.tick()
            clock.advance(1.0)
        scheduler.publisher.occurrences.clear()
        gc.collect()
        loaded = tracemalloc.get_traced_memory()[0]
        for number in range(100):
            scheduler.remove_entry(f"r{number}")
        scheduler.tick()
        scheduler.publisher.occurrences.clear()
        gc.collect()
        result = {"frozen": gc.get_freeze_count() > 0,
                  "freed_mb": (loaded - tracemalloc.get_traced_memory()[0]) / 1e6}
        scheduler.close()
    result["freeze_count"] = gc.get_freeze_count()
    result["threshold"] = list(gc.get_threshold())
    print(json.dumps(result))
    """
)


def run_heap(case: str, threshold: tuple[int, int, int] = (700, 10, 10)) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", HEAP_SCRIPT, case, json.dumps(threshold)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_the_schedule_harness_leaves_the_test_process_collector_alone() -> None:
    """Found failing by round 23, fixed. ``ScheduleHarness`` (and the ``fork_scheduler_harness``
    pytest fixture of the package's testing plugin, docs/testing-the-scheduler.md) runs a
    ``Scheduler`` inside the user's test process with the app's settings, so
    ``fork_scheduler_freeze_heap`` defaults to on there: the first test that advances a harness
    calls ``gc.freeze()`` on the whole pytest process (every object alive then, fixtures
    included, is never walked again, so any of them that becomes cyclic garbage later is kept
    until exit), raises the collector's thresholds for the rest of the session (700 -> 20000),
    and pins that harness's closed Scheduler and its app for good (they hold reference cycles).
    docs/settings.md presents the freeze as beat's start-up step ("after the first tick in which
    every entry is read, beat calls ``gc.freeze()``") and says frozen objects "are still freed
    when nothing refers to them". Reproduce: in a fresh interpreter, ``ScheduleHarness(app,
    start=...).advance(seconds=3)``, ``close()``, drop it: ``gc.get_freeze_count() > 0``,
    ``gc.get_threshold()`` is ``(20000, 20, 20)`` and a weak reference to the app is still alive
    after ``gc.collect()``."""
    result = run_heap("harness")
    assert result["fired"] >= 3
    assert result["freeze_count"] == 0, "the harness froze the test process's heap"
    assert result["threshold"] == [700, 10, 10], "the harness changed the test's collector"
    assert result["app_alive"] is False, "the closed harness's app is never freed"


def test_freeze_heap_does_not_turn_on_a_collection_the_process_turned_off() -> None:
    """Found failing by round 23, fixed. ``heap.settle_heap`` promises to collect *less* often
    ("thresholds are only raised, never lowered"; docs/settings.md: "False leaves the collector
    as Python configured it"). But ``gc.set_threshold(0)`` is CPython's documented way to turn
    automatic collection off, and ``max(0, 20000)`` turns it back on: a process that had disabled
    the collector gets a young collection every 20 000 allocations once beat starts. Reproduce:
    in a fresh interpreter ``gc.set_threshold(0, 10, 10)``, run a Scheduler (freeze_heap default)
    past its first tick: ``gc.get_threshold()[0] == 20000``."""
    result = run_heap("removed", (0, 10, 10))
    assert result["frozen"] is True
    assert result["threshold"][0] == 0, "automatic collection was turned back on"


def test_passing_removed_runtime_entries_are_freed_after_the_freeze() -> None:
    """Pinned (checked correct): an entry alive at the freeze and removed later holds no reference
    cycle, so reference counting frees it (and its 50 kB argument) though it is in the permanent
    generation; the thresholds are raised to (20000, 20, 20)."""
    result = run_heap("removed")
    assert result["frozen"] is True
    assert result["freed_mb"] > 4.5, result
    assert result["threshold"] == [20_000, 20, 20]


@pytest.mark.parametrize("value", ["yes", 1, 0, None, "false"])
def test_passing_freeze_heap_validation_names_the_setting(value: object) -> None:
    """Pinned (checked correct): a non-bool ``fork_scheduler_freeze_heap`` is a ConfigError naming
    the setting and the value (``1``/``0`` included: bool only)."""
    app = Celery("validation", set_as_current=False)
    app.conf.fork_scheduler_freeze_heap = value
    with pytest.raises(ConfigError) as raised:
        read_settings(app.conf)
    assert "fork_scheduler_freeze_heap" in str(raised.value)
    assert repr(value) in str(raised.value)
