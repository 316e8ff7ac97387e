"""Adversary round 26: compact siblings (commit 61fab9b: ``message_siblings.Sibling``,
``message_encoding.EncodedCommands.fill`` / ``sibling_values`` / ``_encoded``, the weighed
template cache of ``publishing.CeleryPublisher``), and the capture path they hang off.

The promises (docs/guarantees.md "Message templates", "Entries of one shape share one
capture", "Encoded once"): what the scheduler sends for an occurrence is what Celery and Kombu
send for it, field by field; a sibling Celery accepts is sent; each occurrence is published
once. The cache keeps at most ``TEMPLATES_KEPT`` templates' worth, a sibling "~0.56 KiB kept
per entry" (commit message; ``tests/test_message_siblings.py`` pins < 1 KiB).

Compared as tests/test_message_encoding.py compares (``assert_kombus`` / ``kombu_commands``).

All five found failing by round 26, fixed: a ``str`` subclass value (a ``StrEnum`` entry name or
repr option) is written as its text (``message_encoding._encoded``); an entry's encodings of
another template are dropped when it is cached anew (``CeleryPublisher._keep``); a cached
template follows the task object registered now, not only whether one is
(``CeleryPublisher._cached``); no template is captured with ``task_always_eager``
(``message_template.templates_allowed``): a capture would run the task.
"""

from __future__ import annotations

import enum
import gc
import tracemalloc
from datetime import datetime, timezone
from typing import Any

import pytest
import redis
from celery import Celery
from kombu.utils import json as kombu_json
from publish_helpers import declare_queues, sent_by_celery
from test_adversary_round25 import register_report_again
from test_message_encoding import assert_kombus, kombu_commands
from test_message_template import make_app, same_message

from celery_fork_scheduler import message_siblings
from celery_fork_scheduler.entry import Entry, entry_from_config
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.publishing import CeleryPublisher, build_occurrence

SLOTS = [datetime(2026, 3, 2, 10, minute, tzinfo=timezone.utc) for minute in range(4)]


def job(args: Any = (), kwargs: Any = None, task: str = "tasks.unregistered", **extra: Any) -> Any:
    return {"task": task, "schedule": 60, "args": list(args), "kwargs": kwargs or {}, **extra}


def make(name: str, definition: dict[str, Any]) -> Entry:
    return entry_from_config(name, definition, default_timezone=timezone.utc)


class Job(enum.StrEnum):
    """Entry names as many projects spell them: ``beat_schedule = {Job.NIGHTLY: {...}}``."""

    NIGHTLY = "nightly"
    WEEKLY = "weekly"


class Shown(enum.StrEnum):
    HIDDEN = "(hidden)"


# --- Findings -------------------------------------------------------------------------------


def test_a_sibling_named_by_a_str_enum_is_sent_as_celery_sends_it(redis_url: str) -> None:
    """Found failing by round 26, fixed. Promise: a sibling Celery accepts is sent, with
    Celery's message (and each slot once).

    Reproduction: two entries of one shape whose names are ``enum.StrEnum`` members (a ``str``
    subclass; ``entry_from_config`` accepts any ``isinstance(name, str)``, and Celery/Kombu
    write it as the plain text ``"weekly"``). The first is captured and sent. For the second,
    ``for_sibling`` -> ``sibling_values`` -> ``message_encoding._encoded(entry name)``: JSON
    writes ``weekly`` unchanged, so ``_encoded`` keeps the *original object* (the StrEnum) and
    ``sys.intern`` it (<= 16 characters): ``TypeError: can't intern Job``. ``publish_many``
    reports that error for the slot (as "Celery refused to build it") and nothing reaches
    Redis; Celery sends it. It fails the same way at every later slot: the entry never runs.
    """
    app = make_app(redis_url, {})
    first, sibling = make(Job.NIGHTLY, job(["eu"])), make(Job.WEEKLY, job(["us"]))
    client = redis.Redis.from_url(redis_url)
    with app.producer_or_acquire() as producer:
        declare_queues(app, producer)
        publisher = CeleryPublisher(app, lambda: producer)
        occurrences = [
            build_occurrence(entry, SLOTS[0], task_id_for(entry.name, SLOTS[0]))
            for entry in (first, sibling)
        ]
        expected = [sent_by_celery(app, producer, occurrence) for occurrence in occurrences]
        errors = publisher.publish_many(occurrences)
        assert errors == [None, None], errors
        pushed = [kombu_json.loads(text) for text in reversed(client.lrange("celery", 0, -1))]
        assert len(pushed) == 2
        for ours, [(_, theirs)] in zip(pushed, expected, strict=True):
            same_message(ours, theirs)
    client.close()
    app.close()


def test_a_sibling_with_a_str_enum_argsrepr_option_gets_kombus_commands(redis_url: str) -> None:
    """Found failing by round 26, fixed. Promise: a sibling's commands are Kombu's for Celery's
    message ("Encoded once").

    Reproduction: entries ``a`` and ``b`` of one shape with ``options={"argsrepr":
    Shown.HIDDEN}`` (a ``StrEnum``: Celery keeps a given ``argsrepr``, Kombu writes it as
    ``"(hidden)"``). ``a`` is captured; its template's message is a ``deepcopy``, which keeps
    the ``str`` subclass. ``b``'s ``for_sibling`` keeps the shape's ``argsrepr`` (the option is
    set) and ``sibling_values`` hands it to ``_encoded``, which interns the unchanged object:
    ``TypeError: can't intern Shown`` from ``commands_for`` (and from ``render`` /
    ``publish_many``), where Kombu pushes the message.
    """
    app = make_app(redis_url, {})
    options = {"argsrepr": Shown.HIDDEN}
    entries = [make("a", job(["eu"], options=options)), make("b", job(["us"], options=options))]
    with app.producer_or_acquire() as producer:
        declare_queues(app, producer)
        publisher = CeleryPublisher(app, lambda: producer)
        for entry in entries:
            occurrence = build_occurrence(entry, SLOTS[0], task_id_for(entry.name, SLOTS[0]))
            [ours] = publisher.commands_for([occurrence])
            assert_kombus(ours, kombu_commands(app, producer, occurrence))
    app.close()


@pytest.mark.filterwarnings("ignore::celery.exceptions.DuplicateTaskNameWarning")
def test_a_kept_sibling_follows_its_task_registered_again(redis_url: str) -> None:
    """Found failing by round 26, fixed. Promise: "A task registered (or unregistered) since its
    template was made gets a new template" (message_template module) / "A task registered again
    since its shape was captured (another task object) is captured anew" (guarantees.md).

    Reproduction: entries ``a`` (captured) and ``b`` (its sibling) of ``tasks.report``, one
    slot each; ``tasks.report`` is then registered again as a class-based task with
    ``serializer = "pickle"`` and ``ignore_result = True``. At the next slot Celery sends
    ``b`` pickled (``content-encoding: binary``, ``ignore_result: true``). Round 25 made
    *new* siblings check the task object (``for_sibling``: ``task is not known.task``), but
    ``CeleryPublisher._cached`` (publishing.py) still serves the kept ``Sibling`` — and ``a``'s
    kept ``Template`` — whenever the name is still *registered*, never comparing the task
    object: ``b`` goes on being sent as the old JSON message.
    """
    app = make_app(redis_url, {})
    entries = [make(n, job([n], task="tasks.report")) for n in ("a", "b")]
    with app.producer_or_acquire() as producer:
        declare_queues(app, producer)
        publisher = CeleryPublisher(app, lambda: producer)

        def check(entry: Entry, slot: datetime) -> None:
            occurrence = build_occurrence(entry, slot, task_id_for(entry.name, slot))
            [ours] = publisher.commands_for([occurrence])
            assert_kombus(ours, kombu_commands(app, producer, occurrence))

        for entry in entries:
            check(entry, SLOTS[0])

        register_report_again(app)
        check(entries[1], SLOTS[1])
    app.close()


def test_entries_turned_siblings_do_not_keep_their_old_encodings(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found failing by round 26, fixed. Promise: the cache holds at most ``TEMPLATES_KEPT``
    templates' worth, a sibling weighing an eighth (~0.56 KiB kept per entry, commit 61fab9b;
    test_message_siblings pins < 1 KiB).

    Reproduction: 300 entries, each first of its own shape (its own header value), sent twice:
    each is a whole ``Template`` and ``_encoded_commands`` stores its encoding in
    ``publisher._encodings[name]``. Then each is redefined into one common shape (a reload):
    each becomes a compact ``Sibling``, ``_keep`` swaps the cache entry and its weight (8 -> 1),
    but ``_encodings[name]`` — the old ``Template`` and its encoded commands — is dropped only
    when the name is evicted (publishing.py ``_keep``), which a weight-1 sibling practically
    never is. So each sibling keeps ~4.9 KiB (against ~0.65 KiB when the old templates were
    never encoded): the weighed budget lets ``TEMPLATES_KEPT * 8`` such siblings each hold a
    whole template's encoding, 8x the bound. (``SHAPES_KEPT`` is lowered so that the old shapes
    themselves, a separate bounded cache, are not counted.)
    """
    monkeypatch.setattr(message_siblings, "SHAPES_KEPT", 4)
    app = make_app(redis_url, {})
    count = 300
    with app.producer_or_acquire() as producer:
        publisher = CeleryPublisher(app, lambda: producer)
        shared = {"headers": {"x-tenant": "shared"}}
        warm = make("warm", job([0], options=shared))
        publisher.commands_for([build_occurrence(warm, SLOTS[0], "warm")])
        old = [
            make(f"e{i}", job([i], options={"headers": {"x-tenant": f"t{i}"}}))
            for i in range(count)
        ]
        new = [make(f"e{i}", job([i], options=shared)) for i in range(count)]
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for entry in old:  # a template each, encoded at its second slot
                for number, slot in enumerate(SLOTS[:2]):
                    occurrence = build_occurrence(entry, slot, f"{entry.name}-{number}")
                    publisher.commands_for([occurrence])
            for entry in new:  # redefined: a sibling each, sent twice
                for number, slot in enumerate(SLOTS[2:]):
                    occurrence = build_occurrence(entry, slot, f"{entry.name}-n{number}")
                    publisher.commands_for([occurrence])
            del old, occurrence
            gc.collect()
            kept = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
    assert kept / count < 1024, f"{kept / count:.0f} bytes kept per sibling"
    app.close()


def test_a_first_publish_runs_an_eager_task_once(redis_url: str) -> None:
    """Found failing by round 26, fixed. Promise: each occurrence is published once (through
    Celery: with ``task_always_eager`` ``apply_async`` runs the task in place, once).

    Reproduction: ``task_always_eager = True`` (common in development settings), a registered
    task, one entry, one ``publish_many``. ``render`` captures the first occurrence by calling
    ``apply_async`` (``message_template.capture``): in eager mode that *runs the task* and puts
    nothing on the channel, so ``capture`` returns ``None`` and ``render`` answers "go through
    Celery" (publishing.py ``render``: ``return None if captured is None``), and
    ``_publish_through_celery`` calls ``apply_async`` again: the task runs twice for one slot
    (``templates=False`` runs it once). ``templates_allowed`` does not look at
    ``task_always_eager``; ``warm`` (documented "Sends nothing") runs it too.
    """
    app = Celery("eager", broker=redis_url, set_as_current=False)
    app.conf.task_always_eager = True
    runs: list[int] = []

    @app.task(name="tasks.count", shared=False)  # type: ignore[untyped-decorator]
    def count(number: int) -> None:
        runs.append(number)

    entry = make("counted", job([1], task="tasks.count"))
    with app.producer_or_acquire() as producer:
        publisher = CeleryPublisher(app, lambda: producer)
        occurrence = build_occurrence(entry, SLOTS[0], task_id_for("counted", SLOTS[0]))
        assert publisher.publish_many([occurrence]) == [None]
    assert runs == [1]
    app.close()
