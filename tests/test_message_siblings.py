"""A new entry of a known shape gets its template from a sibling's (no message sent through
Celery), and that template sends what Celery would send for the new entry: for every option
the docs allow, field by field (delivery tag aside; times computed at send within a second)."""

from __future__ import annotations

from datetime import timezone
from typing import Any

import pytest
from celery import Celery
from celery.utils.saferepr import saferepr
from hypothesis import given
from hypothesis import strategies as st
from publish_helpers import declare_queues, sent_by_celery
from test_message_template import OPTIONS, SLOTS, broker, make_app, same_message

from celery_fork_scheduler import message_siblings, publishing
from celery_fork_scheduler.entry import Entry, entry_from_config
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.publishing import CeleryPublisher, build_occurrence

__all__ = ["broker"]  # the fixture, shared with test_message_template

#: A task name no other test registers (``app.task`` without ``shared=False`` registers a task
#: for every app made later, which would replace this module's own definitions).
TASK = "siblings.report"

SIBLINGS = {
    "nightly": (["eu"], {"day": "monday"}),
    "weekly": (["us-east"], {"day": "friday"}),
    "empty": ([""], {}),
    "unicode": (['zürich ☃ "quoted" \\ ' * 40], {"day": "日曜日"}),
}


def entry(name: str, options: dict[str, Any], task: str = "tasks.report", **extra: Any) -> Entry:
    args, kwargs = SIBLINGS[name]
    definition = {
        "task": task,
        "schedule": 60,
        "args": args,
        "kwargs": kwargs,
        "options": options,
        "singleton": True,
        **extra,
    }
    return entry_from_config(name, definition, default_timezone=timezone.utc)


@pytest.fixture
def captures(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The entries whose message went through Celery to make their template."""
    made: list[str] = []
    real = publishing.capture

    def counting(channel: Any, send: Any) -> Any:
        made.append("capture")
        return real(channel, send)

    monkeypatch.setattr(publishing, "capture", counting)
    return made


@pytest.mark.parametrize("case", [case for case in OPTIONS if case != "expires-datetime"])
def test_a_sibling_template_is_the_message_celery_builds_for_the_sibling(
    broker: str, case: str, captures: list[str]
) -> None:
    options, conf = OPTIONS[case]
    app = make_app(broker, conf)
    with app.producer_or_acquire() as producer:
        declare_queues(app, producer)
        publisher = CeleryPublisher(app, lambda: producer)
        for number, name in enumerate(SIBLINGS):
            slot = SLOTS[number % len(SLOTS)]
            occurrence = build_occurrence(entry(name, options), slot, task_id_for(name, slot))
            rendered = publisher.render(occurrence, producer, producer.channel)
            assert rendered is not None
            expected = sent_by_celery(app, producer, occurrence)
            assert [queue for queue, _ in rendered.messages] == [queue for queue, _ in expected]
            for (_, ours), (_, theirs) in zip(rendered.messages, expected, strict=True):
                same_message(ours, theirs)
    if options.get("serializer") == "pickle":  # references in a pickle: each one is captured
        assert len(captures) == len(SIBLINGS)
    else:
        assert len(captures) == 1, "one message through Celery for the whole shape"
    app.close()


def test_another_shape_is_captured_and_refused_arguments_raise_as_in_celery(
    redis_url: str, captures: list[str]
) -> None:
    app = Celery("shapes", broker=redis_url, set_as_current=False)

    @app.task(name=TASK, shared=False)  # type: ignore[untyped-decorator]
    def report(region: str, *, day: str = "today") -> None: ...

    with app.producer_or_acquire() as producer:
        publisher = CeleryPublisher(app, lambda: producer)
        slot = SLOTS[0]

        def render(made: Entry) -> Any:
            occurrence = build_occurrence(made, slot, task_id_for(made.name, slot))
            return publisher.render(occurrence, producer, producer.channel)

        render(entry("nightly", {}, TASK))
        render(entry("weekly", {"queue": "other"}, TASK))  # other options: another shape
        render(entry("empty", {}, TASK, pause_on_failure=True))  # another header: another shape
        assert len(captures) == 3
        wrong = entry_from_config(
            "wrong",
            {"task": TASK, "schedule": 60, "args": ["a", "b", "c"]},
            default_timezone=timezone.utc,
        )
        with pytest.raises(TypeError):
            render(wrong)
        with pytest.raises(TypeError):  # Celery refuses them the same way
            sent_by_celery(app, producer, build_occurrence(wrong, slot, "id"))
    app.close()


def test_a_task_with_its_own_apply_async_is_never_shared_nor_captured(
    redis_url: str, captures: list[str]
) -> None:
    """Its override may publish past the capture (on a producer of its own): no template, no
    sibling; each message goes through Celery, with what the override adds."""
    app = Celery("own", broker=redis_url, set_as_current=False)

    class Stamping(app.Task):  # type: ignore[name-defined,misc]
        def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
            options.setdefault("headers", {})["first-arg"] = str((args or [""])[0])
            return super().apply_async(args, kwargs, **options)

    @app.task(name=TASK, base=Stamping, shared=False)  # type: ignore[untyped-decorator]
    def report(region: str, *, day: str = "today") -> None: ...

    with app.producer_or_acquire() as producer:
        publisher = CeleryPublisher(app, lambda: producer)
        for name in ("nightly", "weekly"):
            made = entry(name, {}, TASK)
            occurrence = build_occurrence(made, SLOTS[0], task_id_for(name, SLOTS[0]))
            assert publisher.render(occurrence, producer, producer.channel) is None
            [(_, sent)] = publisher_sent(publisher, producer, occurrence)
            assert sent["headers"]["first-arg"] == SIBLINGS[name][0][0]
    assert captures == []
    app.close()


def publisher_sent(publisher: CeleryPublisher, producer: Any, occurrence: Any) -> list[Any]:
    """What ``publisher.publish_many`` put on the channel for ``occurrence``."""
    sent: list[Any] = []
    channel = producer.channel
    channel._put = lambda queue, message, **_: sent.append((queue, message))
    try:
        assert publisher.publish_many([occurrence]) == [None]
    finally:
        del channel._put
    return sent


@given(
    value=st.one_of(
        st.tuples(),
        st.just({}),
        st.lists(st.integers(), max_size=20).map(tuple),
        st.lists(st.integers(min_value=-(10**400), max_value=10**400), max_size=3).map(tuple),
        st.lists(st.one_of(st.integers(), st.booleans(), st.none(), st.text()), max_size=5).map(
            tuple
        ),
        st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    ),
    maxsize=st.sampled_from([None, 0, 1, 8, 63, 64, 1024]),
    maxlevels=st.integers(min_value=-2, max_value=3),
)
def test_argument_reprs_are_celerys_saferepr(
    value: Any, maxsize: int | None, maxlevels: int
) -> None:
    """The shortcut for integer tuples and empty arguments writes what ``saferepr`` writes,
    long ones (truncated by ``saferepr``), no size, no room and negative levels included."""
    ours = message_siblings._saferepr(value, maxsize, maxlevels)
    assert ours == saferepr(value, maxsize, maxlevels=maxlevels)


def test_siblings_with_integer_arguments_get_celerys_message(
    broker: str, captures: list[str]
) -> None:
    """Integer arguments take the ``argsrepr`` shortcut: each sibling's message is still the
    one Celery builds, field by field, from one capture for the shape."""
    app = make_app(broker, {})
    arguments = [(), (0,), (7, -3), (10**30,), tuple(range(16)), tuple(range(17)), (2**64,) * 9]
    with app.producer_or_acquire() as producer:
        declare_queues(app, producer)
        publisher = CeleryPublisher(app, lambda: producer)
        for number, args in enumerate(arguments):
            made = entry_from_config(
                f"ints{number}",
                {"task": "siblings.ints", "schedule": 60, "args": args},
                default_timezone=timezone.utc,
            )
            slot = SLOTS[number % len(SLOTS)]
            occurrence = build_occurrence(made, slot, task_id_for(made.name, slot))
            rendered = publisher.render(occurrence, producer, producer.channel)
            assert rendered is not None
            expected = sent_by_celery(app, producer, occurrence)
            for (_, ours), (_, theirs) in zip(rendered.messages, expected, strict=True):
                same_message(ours, theirs)
    assert len(captures) == 1
    app.close()


def sibling_entries(count: int) -> list[Entry]:
    return [
        entry_from_config(
            f"tenant{number}",
            {"task": "siblings.kept", "schedule": 60, "args": [number]},
            default_timezone=timezone.utc,
        )
        for number in range(count)
    ]


def test_siblings_are_kept_at_an_eighth_of_a_template_and_made_again_when_dropped(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, captures: list[str]
) -> None:
    """With room for one template, the eight siblings used last stay kept (none is made again
    for its next slot); one used before them was dropped, and is made again from its shape,
    the commands still Kombu's."""
    from test_message_encoding import assert_kombus, kombu_commands

    monkeypatch.setattr(publishing, "TEMPLATES_KEPT", 1)
    made: list[str] = []
    real = publishing.for_sibling

    def counting(*args: Any, **kwargs: Any) -> Any:
        made.append(kwargs["entry"])
        return real(*args, **kwargs)

    monkeypatch.setattr(publishing, "for_sibling", counting)
    app = make_app(redis_url, {})
    entries = sibling_entries(10)
    with app.producer_or_acquire() as producer:
        publisher = CeleryPublisher(app, lambda: producer)

        def commands(entry: Entry, slot: Any) -> Any:
            occurrence = build_occurrence(entry, slot, task_id_for(entry.name, slot))
            [ours] = publisher.commands_for([occurrence])
            assert_kombus(ours, kombu_commands(app, producer, occurrence))

        for entry in entries:  # the first is captured, the others made from it
            commands(entry, SLOTS[0])
        assert made == [entry.name for entry in entries[1:]]
        made.clear()
        for entry in entries[2:]:
            commands(entry, SLOTS[1])
        assert made == []
        commands(entries[1], SLOTS[1])
        assert made == [entries[1].name]
    assert len(captures) == 1
    app.close()


def test_a_kept_sibling_takes_well_under_a_kib(redis_url: str) -> None:
    """A sibling's kept template is its body and headers, not a message of its own: 2 000 of
    them, each sent twice, keep less than 1 KiB each (a whole template kept ~3.4 KiB)."""
    import gc
    import tracemalloc

    app = make_app(redis_url, {})
    entries = sibling_entries(2000)
    with app.producer_or_acquire() as producer:
        publisher = CeleryPublisher(app, lambda: producer)
        first = build_occurrence(entries[0], SLOTS[0], "first")
        publisher.commands_for([first])
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for slot in SLOTS[:2]:
                occurrences = [build_occurrence(e, slot, f"{e.name}-{slot}") for e in entries]
                publisher.commands_for(occurrences[1:])
                del occurrences
            gc.collect()
            kept = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
    assert kept / (len(entries) - 1) < 1024
    app.close()
