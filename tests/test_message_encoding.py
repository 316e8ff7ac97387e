"""The encoded template (issue 19): the Redis commands of an occurrence made by replacing
placeholders in its template's encoded text route to the queues Kombu's own ``_put`` routes
Celery's message for that occurrence to, hold that message field by field (delivery tag
aside; times read from the clock within a second), and are Kombu's JSON of it byte for byte."""

from __future__ import annotations

import json
from datetime import timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kombu.utils import json as kombu_json
from publish_helpers import declare_queues, sent_by_celery
from test_message_template import OPTIONS, SLOTS, make_app, same_message

from celery_fork_scheduler import message_encoding
from celery_fork_scheduler.entry import entry_from_config
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.message_template import Rendered, redis_commands
from celery_fork_scheduler.publishing import CeleryPublisher, build_occurrence

#: A header the JSON must escape.
NOTE = 'a " \\ \u00e9 \n'


def kombu_commands(app: Any, producer: Any, occurrence: Any) -> list[Any]:
    captured = sent_by_celery(app, producer, occurrence)
    return redis_commands(producer.channel, Rendered(tuple(captured)))


def assert_kombus(ours: Any, theirs: Any) -> None:
    """``ours`` are Kombu's commands ``theirs``: the same queues, each message Celery's field by
    field, and its text Kombu's JSON of it byte for byte."""
    assert ours is not None and not isinstance(ours, Exception), ours
    assert [(n, a[0]) for n, a in ours] == [(n, a[0]) for n, a in theirs]
    for (kind, (_, *ours_rest)), (_, (_, *theirs_rest)) in zip(ours, theirs, strict=True):
        if kind != "lpush":
            assert ours_rest == theirs_rest
            continue
        ours_message = json.loads(ours_rest[0])
        same_message(ours_message, json.loads(theirs_rest[0]))
        assert kombu_json.dumps(ours_message) == ours_rest[0]


@pytest.mark.parametrize("case", [case for case in OPTIONS if case != "expires-datetime"])
@pytest.mark.parametrize("jitter", [0, 30])
def test_encoded_commands_are_kombus_commands_for_the_occurrence(
    redis_url: str, case: str, jitter: int
) -> None:
    options, conf = OPTIONS[case]
    app = make_app(redis_url, {**conf, "fork_scheduler_default_jitter": jitter})
    definition = {
        "task": "tasks.report",
        "schedule": 60,
        "args": ["eu"],
        "kwargs": {"day": "monday"},
        "options": {**options, "headers": {**options.get("headers", {}), "note": NOTE}},
        "jitter": jitter,
    }
    entry = entry_from_config("nightly", definition, default_timezone=timezone.utc)
    with app.producer_or_acquire() as producer:
        declare_queues(app, producer)
        publisher = CeleryPublisher(app, lambda: producer)
        for number, slot in enumerate(SLOTS * 2):
            capped = number % 3 == 1
            occurrence = build_occurrence(entry, slot, task_id_for("nightly", slot), capped=capped)
            [ours] = publisher.commands_for([occurrence])
            assert_kombus(ours, kombu_commands(app, producer, occurrence))
    app.close()


#: Siblings of one shape whose arguments and names the JSON must escape differently.
SIBLING_ARGS = {
    "plain": (["eu"], {"day": "monday"}),
    "quoted \"name\"": (['zürich ☃ "quoted" \\ \n' * 20], {"day": "日曜日"}),
    "ints": ([1, 2, 3], {}),
    "empty": ([], {}),
}


@pytest.mark.parametrize("case", [case for case in OPTIONS if case != "expires-datetime"])
@pytest.mark.parametrize("jitter", [0, 30])
def test_siblings_commands_are_kombus_commands_for_each_sibling(
    redis_url: str, case: str, jitter: int
) -> None:
    """A sibling's commands come from its shape's encoding with its body, reprs and entry
    header written in: Kombu's routing and its JSON of Celery's message for the sibling."""
    options, conf = OPTIONS[case]
    app = make_app(redis_url, {**conf, "fork_scheduler_default_jitter": jitter})
    with app.producer_or_acquire() as producer:
        declare_queues(app, producer)
        publisher = CeleryPublisher(app, lambda: producer)
        for slot in SLOTS:  # each sibling's first slot (made), then its next (kept)
            for name, (args, kwargs) in SIBLING_ARGS.items():
                definition = {
                    "task": "tasks.unregistered",
                    "schedule": 60,
                    "args": args,
                    "kwargs": kwargs,
                    "options": options,
                    "jitter": jitter,
                }
                entry = entry_from_config(name, definition, default_timezone=timezone.utc)
                occurrence = build_occurrence(entry, slot, task_id_for(name, slot))
                [ours] = publisher.commands_for([occurrence])
                assert_kombus(ours, kombu_commands(app, producer, occurrence))
    app.close()


@given(st.text() | st.text(alphabet=st.characters(max_codepoint=127)))
def test_a_sibling_value_is_written_as_kombus_json_writes_it(text: str) -> None:
    """A sibling's value (:func:`message_encoding._encoded`, with its shortcut for text JSON
    writes as it is) is the inside of Kombu's JSON string of it, printable ASCII included."""
    assert message_encoding._encoded(text) == message_encoding.dumps(text)[1:-1]
