"""Adversary round 7: the publish hot path (batch scripts, sibling templates, encoded
commands, cached ids). Every test here failed on 7dbc465 and passes since the fixes after it;
each docstring says what should happen. Real redis-server (conftest fixtures), no mocks of
Redis."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
from celery import Celery
from kombu import serialization
from publish_helpers import sent_by_celery

from celery_fork_scheduler.backends.base import Claim, ClaimOutcome
from celery_fork_scheduler.backends.redis import RedisBackend
from celery_fork_scheduler.config import Settings
from celery_fork_scheduler.entry import entry_from_config
from celery_fork_scheduler.ids import TASK_ID_NAMESPACE, slot_isoformat, task_id_for
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.publishing import CeleryPublisher, build_occurrence

UTC = timezone.utc
KEYS = Keys("scheduler:")
SLOTS = [datetime(2026, 3, 2, 10, minute, tzinfo=UTC) for minute in range(3)]


# -- helpers -------------------------------------------------------------------------------------


def make_app(broker: str, **conf: Any) -> Celery:
    app = Celery("round7", broker=broker, set_as_current=False)
    app.conf.update(accept_content=["json", "pickle"], **conf)

    @app.task(name="tasks.report", shared=False)  # type: ignore[untyped-decorator]
    def report(*args: Any, **kwargs: Any) -> None: ...

    return app


def strict(message: dict[str, Any]) -> str:
    """The message as JSON text (keys sorted), delivery tag aside: ``True`` and ``1`` (or
    ``10`` and ``10.0``) differ here as they do on the wire and for the worker, where a
    comparison of decoded values with ``==`` would take them for equal."""
    copied = json.loads(json.dumps(message))
    copied["properties"].pop("delivery_tag", None)
    return json.dumps(copied, sort_keys=True)


def rendered_and_celery(
    app: Celery, definitions: list[tuple[str, dict[str, Any]]], slots: list[datetime]
) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """For each entry and slot: the message the publisher renders, and Celery's own."""
    found = []
    with app.producer_or_acquire() as producer:
        publisher = CeleryPublisher(app, lambda: producer)
        for name, definition in definitions:
            entry = entry_from_config(
                name,
                {"task": "tasks.report", "schedule": 60, **definition},
                default_timezone=UTC,
            )
            for slot in slots:
                occurrence = build_occurrence(entry, slot, task_id_for(name, slot))
                rendered = publisher.render(occurrence, producer, producer.channel)
                assert rendered is not None
                [(_, ours)] = rendered.messages
                [(_, theirs)] = sent_by_celery(app, producer, occurrence)
                found.append((name, ours, theirs))
    app.close()
    return found


# -- 1. sibling templates ------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["argsrepr", "kwargsrepr"])
def test_a_sibling_with_an_explicit_none_repr_option_gets_its_own_repr_not_the_first_entrys(
    redis_url: str, option: str
) -> None:
    """``options={"argsrepr": None}`` (or ``kwargsrepr``) is what Celery's default is: Celery
    computes the repr of *this* entry's args. A sibling of the same shape must carry its own
    ``argsrepr``/``kwargsrepr``, not the repr of the entry its template was derived from
    (``message_siblings.for_sibling`` keeps the template's header whenever the option *name*
    is present, even with the value ``None``)."""
    app = make_app(redis_url)
    found = rendered_and_celery(
        app,
        [
            ("first", {"args": ["secret-1"], "kwargs": {"k": 1}, "options": {option: None}}),
            ("second", {"args": ["other-2"], "kwargs": {"k": 2}, "options": {option: None}}),
        ],
        SLOTS[:1],
    )
    for name, ours, theirs in found:
        assert ours["headers"][option] == theirs["headers"][option], name
        assert strict(ours) == strict(theirs), name


def test_a_sibling_is_not_derived_from_an_entry_whose_header_value_only_compares_equal(
    redis_url: str,
) -> None:
    """Shapes are matched with ``==`` (``message_siblings.Shapes.find``), and ``True == 1 ==
    1.0``: an entry with ``headers={"flag": 1}`` gets the template of an entry with
    ``headers={"flag": True}`` and sends ``"flag": true`` where Celery sends ``"flag": 1`` (the
    worker's ``request.flag is True`` where it should be ``1``). Same with ``time_limit=10`` /
    ``10.0`` (``timelimit`` header ``[10, null]`` instead of ``[10.0, null]``). The sibling's
    message must be Celery's, type for type."""
    app = make_app(redis_url)
    found = rendered_and_celery(
        app,
        [
            ("boolean", {"args": [1], "options": {"headers": {"flag": True}}}),
            ("integer", {"args": [2], "options": {"headers": {"flag": 1}}}),
            ("limit-int", {"args": [3], "options": {"time_limit": 10}}),
            ("limit-float", {"args": [4], "options": {"time_limit": 10.0}}),
        ],
        SLOTS[:1],
    )
    mismatched = [name for name, ours, theirs in found if strict(ours) != strict(theirs)]
    assert mismatched == []


@pytest.fixture
def json_alias() -> Iterator[None]:
    """A second serializer registered for ``application/json`` (a project's own JSON encoder,
    e.g. one that writes datetimes as plain strings); Kombu's ``json`` stays usable by name."""

    def dumps(value: Any) -> str:
        return json.dumps(value, default=str)

    serialization.register(
        "plainjson", dumps, json.loads, content_type="application/json", content_encoding="utf-8"
    )
    try:
        yield
    finally:
        serialization.unregister("plainjson")  # takes application/json's decoder with it
        serialization.register_json()  # Kombu's own json back
        assert serialization.registry.type_to_name["application/json"] == "json"


def test_a_sibling_body_is_encoded_with_the_entrys_serializer_not_the_last_one_for_its_type(
    redis_url: str, json_alias: None
) -> None:
    """An entry with ``serializer="json"`` is encoded by Celery with Kombu's ``json``; its
    sibling's body is encoded again with ``registry.type_to_name[content_type]``
    (``message_siblings.for_sibling``), i.e. whichever serializer was registered last for
    ``application/json`` — here one that writes a datetime as ``"2020-01-01 00:00:00"`` instead
    of Kombu's ``{"__type__": "datetime", ...}``. The body must be what Celery encodes."""
    app = make_app(redis_url)
    found = rendered_and_celery(
        app,
        [
            ("first", {"args": [1], "options": {"serializer": "json"}}),
            ("dated", {"args": [datetime(2020, 1, 1)], "options": {"serializer": "json"}}),
        ],
        SLOTS[:1],
    )
    for name, ours, theirs in found:
        assert ours["body"] == theirs["body"], name


# -- 2. templates and the clock ------------------------------------------------------------------


def test_countdown_zero_sends_no_eta_as_celery_does(redis_url: str) -> None:
    """``countdown=0`` is allowed (0 to ten years) and Celery sends no ``eta`` for it
    (``if countdown:`` in ``AMQP.as_task_v2``). The template takes 0 as a countdown
    (``message_template.make_template``: ``Template.countdown == 0.0``, ``reads_clock``), so
    every templated occurrence after the first carries ``eta = now``. (Present since the
    templates, 2da2c63; still on the hot path.)"""
    app = make_app(redis_url)
    found = rendered_and_celery(app, [("zero", {"options": {"countdown": 0}})], SLOTS[:2])
    for _, ours, theirs in found:
        assert theirs["headers"]["eta"] is None
        assert ours["headers"]["eta"] is None


# -- 3. task ids ---------------------------------------------------------------------------------


def test_task_id_for_a_repeated_wall_time_is_the_uuid5_of_its_own_utc_instant() -> None:
    """``slot_isoformat`` is ``lru_cache``d on the datetime, and two aware datetimes that
    differ only in ``fold`` (1:30 EDT and 1:30 EST on 1 Nov 2026 in New York, an hour apart)
    compare and hash equal: once the first was formatted, the second gets its UTC text, so
    ``task_id_for`` answers the id of the other occurrence. Each must be
    ``uuid5(namespace, "<entry>@<its own UTC instant>")``."""
    zone = ZoneInfo("America/New_York")
    first = datetime(2026, 11, 1, 1, 30, tzinfo=zone)
    second = first.replace(fold=1)
    assert second.astimezone(UTC) - first.astimezone(UTC) == timedelta(hours=1)
    for moment in (first, second):
        utc_text = moment.astimezone(UTC).isoformat()
        assert slot_isoformat(moment) == utc_text
        expected = str(uuid.uuid5(TASK_ID_NAMESPACE, f"report@{utc_text}"))
        assert task_id_for("report", moment) == expected
    assert task_id_for("report", first) != task_id_for("report", second)


# -- 4. batch scripts ----------------------------------------------------------------------------


@pytest.fixture
def decoding_backend(redis_url: str) -> Iterator[RedisBackend]:
    """A backend whose client decodes replies (``fork_scheduler_redis_options``
    ``{"decode_responses": True}``, an option the settings accept)."""
    made = RedisBackend.from_url(redis_url, Settings(redis_options={"decode_responses": True}))
    made.replica_id = "replica-a"
    yield made
    made.close()


def _claim(name: str, slot: datetime, **fields: Any) -> Claim:
    return Claim(name, slot, task_id_for(name, slot), **fields)


def test_a_corrupted_entry_fails_only_its_own_claim_with_a_decoding_client(
    decoding_backend: RedisBackend, redis_client: redis.Redis
) -> None:
    """Guarantees: "a script that fails for one entry answers error for that entry only; the
    other claims of the batch go on". Alone, the corrupted entry answers ``error``; in a batch
    with a client that decodes replies, ``_item_reply`` looks for ``b"__error__"`` only, the
    ``["__error__", msg]`` item goes to ``_claim_result`` and the whole batch raises
    ``ValueError: '__error__' is not a valid ClaimOutcome`` (every claim of the tick lost to
    one bad entry)."""
    slot = decoding_backend.server_time().replace(microsecond=0) - timedelta(seconds=2)
    redis_client.hset(KEYS.state("bad"), "hwm", "garbage")
    [alone] = decoding_backend.claim([_claim("bad", slot)])
    assert alone.outcome is ClaimOutcome.ERROR
    results = decoding_backend.claim([_claim("ok", slot), _claim("bad", slot), _claim("ok2", slot)])
    assert [r.outcome for r in results] == [
        ClaimOutcome.WON,
        ClaimOutcome.ERROR,
        ClaimOutcome.WON,
    ]


def test_a_refused_broker_command_fails_only_its_own_publish_with_a_decoding_client(
    decoding_backend: RedisBackend, redis_client: redis.Redis
) -> None:
    """One PUBLISH_ONCE of a batch whose queue key holds a string (``WRONGTYPE``) must answer
    its error in its own place, the others ``1`` (published and recorded). With a decoding
    client the batch raises ``TypeError`` from ``int(["__error__", ...])`` in ``publish_once``
    after Redis published the other slots: the caller cannot tell they were sent."""
    slot = decoding_backend.server_time().replace(microsecond=0) - timedelta(seconds=2)
    claims = [_claim(name, slot) for name in ("a", "b", "c")]
    assert [r.outcome for r in decoding_backend.claim(claims)] == [ClaimOutcome.WON] * 3
    redis_client.set("not-a-list", "x")
    commands = [
        [("lpush", ("celery", "m-a"))],
        [("lpush", ("not-a-list", "m-b"))],
        [("lpush", ("celery", "m-c"))],
    ]
    replies = decoding_backend.publish_once(claims, commands)
    assert replies[0] == 1 and replies[2] == 1
    assert isinstance(replies[1], Exception)


def test_an_error_reply_in_a_batch_reads_as_the_same_scripts_error_alone(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """``_item_reply`` promises "the error reply a script call of its own would have given".
    Alone, a corrupted mark answers ``corrupted hwm garbage`` (redis-py takes the ``ERR`` code
    off); in a batch it answers ``ERR corrupted hwm garbage`` — the text of ``entry_failed``,
    the log line and the history differ with the size of the batch."""
    backend = RedisBackend.from_url(redis_url, Settings())
    try:
        slot = backend.server_time().replace(microsecond=0) - timedelta(seconds=2)
        redis_client.hset(KEYS.state("bad"), "hwm", "garbage")
        [alone] = backend.claim([_claim("bad", slot)])
        _, batched = backend.claim([_claim("ok", slot), _claim("bad", slot)])
        assert batched.outcome is alone.outcome is ClaimOutcome.ERROR
        assert batched.error == alone.error
    finally:
        backend.close()
