"""Adversary round 25: a sibling's Redis commands (commit 1178646, ``encode_shape`` /
``EncodedCommands.for_sibling``, and the sibling template of :mod:`.message_siblings` they are
filled from) against Kombu's own ``Channel._put`` of the message Celery builds for that
occurrence.

The promise (docs/guarantees.md "Encoded once" and "siblings", docs/architecture.md steps 7-9):
on a Redis broker the scheduler's commands for an occurrence are Kombu's commands for Celery's
message: the same queue keys, the same message field by field (delivery tag aside, times
computed at send within a second) and Kombu's JSON of it byte for byte. Compared as
tests/test_message_encoding.py compares (``same_message`` and
``kombu_json.dumps(json.loads(text)) == text``)."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from typing import Any

import pytest
from kombu import Exchange, Queue
from publish_helpers import declare_queues
from test_message_encoding import assert_kombus, kombu_commands
from test_message_template import make_app

import celery_fork_scheduler.publishing as publishing
from celery_fork_scheduler.entry import entry_from_config
from celery_fork_scheduler.ids import task_id_for
from celery_fork_scheduler.publishing import CeleryPublisher, build_occurrence

SLOTS = [datetime(2026, 3, 2, 10, minute, tzinfo=timezone.utc) for minute in range(2)]


def job(args: Any = (), kwargs: Any = None, **extra: Any) -> dict[str, Any]:
    return {
        "task": "tasks.unregistered",
        "schedule": 60,
        "args": list(args),
        "kwargs": kwargs or {},
        **extra,
    }


def run_siblings(app: Any, definitions: dict[str, dict[str, Any]]) -> set[str]:
    """Each entry's first slot (the first captured, the others its siblings), then its next
    (from the kept template, and through ``known_commands_for``); the command names seen."""
    seen: set[str] = set()
    with app.producer_or_acquire() as producer:
        declare_queues(app, producer)
        publisher = CeleryPublisher(app, lambda: producer)
        entries = {
            name: entry_from_config(name, definition, default_timezone=timezone.utc)
            for name, definition in definitions.items()
        }
        for slot in SLOTS:
            for name, entry in entries.items():
                task_id = task_id_for(name, slot)
                occurrence = build_occurrence(entry, slot, task_id)
                [ours] = publisher.commands_for([occurrence])
                theirs = kombu_commands(app, producer, occurrence)
                assert_kombus(ours, theirs)
                [known] = publisher.known_commands_for([(entry, slot, task_id)])
                assert_kombus(known, theirs)
                seen.update(name for name, _ in theirs)
    app.close()
    return seen


# --- Findings -------------------------------------------------------------------------------


def test_sibling_without_body_encoding_is_kombus_json(redis_url: str) -> None:
    """Found failing by round 25, fixed. Promise: a sibling's LPUSH text is Kombu's JSON of
    Celery's message, byte for byte.

    Reproduction: ``broker_transport_options={"body_encoding": None}`` (a Kombu virtual channel
    option: the body is then not base64'd; Kombu writes the serialized JSON text as the
    message's ``body`` string). The first entry is captured (its body a str, so ``encode_shape``
    leaves a body placeholder); the sibling's body is made by ``channel.encode_body(payload,
    None)``, which returns the serializer's *bytes*, and ``EncodedCommands.for_sibling`` writes
    ``dumps(bytes)[1:-1]`` — the inside of Kombu's ``{"__type__": "bytes", ...}`` object — into
    the string: the LPUSH text is not even JSON (``"body": ""__type__": "bytes", ...``), where
    Kombu pushes ``"body": "[[\\"b\\"], ...]"``.
    """
    app = make_app(redis_url, {"broker_transport_options": {"body_encoding": None}})
    run_siblings(app, {"first": job(["a"]), "sibling": job(["b"])})


def test_pickled_sibling_body_is_kombus_when_an_argument_is_an_embed_key(
    redis_url: str,
) -> None:
    """Found failing by round 25, fixed. Promise: a sibling's message (its base64 body included) is
    Celery's, field by field.

    Reproduction: ``task_serializer="pickle"``; the first entry has kwargs ``{"day": "x"}``, its
    sibling ``{"chain": "x"}`` (a literal, so the interned ``"chain"``). Celery pickles ``(args,
    kwargs, {"callbacks": .., "errbacks": .., "chain": .., "chord": ..})``, whose embed keys are
    the interned constants of its own code: pickle's memo writes the second ``"chain"`` as a
    back reference (``BINGET``). ``message_siblings.for_sibling`` pickles the sibling's
    arguments with the embed *read back* from the first body (``_basis``: fresh, not interned
    strings), so the key is written out again: a different pickle (72 bytes against Celery's
    66), a different ``body``. ``_basis`` only proved the serializer remakes the *first* entry's
    body; object identity shared between the arguments and the embed is not carried over.
    """
    app = make_app(redis_url, {"task_serializer": "pickle"})
    chain = sys.intern("chain")
    run_siblings(app, {"first": job(["eu"], {"day": "x"}), "sibling": job(["eu"], {chain: "x"})})


def test_sibling_argsrepr_set_by_a_task_route_is_celerys(redis_url: str) -> None:
    """Found failing by round 25, fixed. Promise: a sibling's ``argsrepr`` / ``kwargsrepr`` are
    written as Celery writes them.

    Reproduction: ``task_routes={"tasks.unregistered": {"queue": "routed", "argsrepr":
    "(hidden)", "kwargsrepr": "{hidden}"}}`` (a plain dict route, which templates allow; Celery
    merges the route's options into ``send_task``'s options, so ``as_task_v2`` gets
    ``argsrepr="(hidden)"`` — the usual way of keeping secrets out of the message's reprs). The
    first entry is captured with ``(hidden)``; ``for_sibling`` looks for ``argsrepr`` only in
    the *entry's* options, finds none, and writes ``saferepr(args)``: the sibling's LPUSH
    carries ``"argsrepr": "['secret-b']"`` / ``"kwargsrepr": "{'k': 'v'}"`` where Celery sends
    ``(hidden)`` / ``{hidden}`` (the arguments the route was hiding leak to the broker).
    """
    routes = {
        "tasks.unregistered": {
            "queue": "routed",
            "argsrepr": "(hidden)",
            "kwargsrepr": "{hidden}",
        }
    }
    app = make_app(redis_url, {"task_routes": routes})
    run_siblings(app, {"first": job(["secret-a"]), "sibling": job(["secret-b"], {"k": "v"})})


@pytest.mark.filterwarnings("ignore::celery.exceptions.DuplicateTaskNameWarning")
def test_sibling_of_a_task_registered_again_is_celerys_message(redis_url: str) -> None:
    """Found failing by round 25, fixed. Promise: a new entry's first commands are Kombu's for the
    message Celery builds now ("a task registered again is judged again",
    message_siblings.Known).

    Reproduction: entries ``a`` and ``b`` of ``tasks.report`` (``b`` a sibling of ``a``); then
    ``tasks.report`` is registered again as a class-based task with ``serializer = "pickle"``
    and ``ignore_result = True``; a new entry ``c``. Celery sends ``c`` pickled, with
    ``ignore_result: true``. The shape (keyed by task *name* and registered-or-not) still
    matches ``a``'s template; ``Known`` notices the new task object but only re-judges whether
    it may share and whether ``a``'s body can be remade (``_serializer_name`` falls back to the
    app's ``json`` for ``a``'s content type), so ``c`` gets ``a``'s JSON message: a JSON body,
    ``ignore_result: false``.
    """
    app = make_app(redis_url, {})
    report = {"task": "tasks.report", "schedule": 60}
    with app.producer_or_acquire() as producer:
        declare_queues(app, producer)
        publisher = CeleryPublisher(app, lambda: producer)

        def check(name: str, args: list[str]) -> None:
            entry = entry_from_config(name, {**report, "args": args}, default_timezone=timezone.utc)
            occurrence = build_occurrence(entry, SLOTS[0], task_id_for(name, SLOTS[0]))
            [ours] = publisher.commands_for([occurrence])
            assert_kombus(ours, kombu_commands(app, producer, occurrence))

        check("a", ["eu"])
        check("b", ["us"])

        register_report_again(app)
        check("c", ["asia"])
    app.close()


def register_report_again(app: Any) -> None:
    """Register ``tasks.report`` again, as another task object: pickle, no result."""

    class Report(app.Task):  # type: ignore[name-defined,misc]
        name = "tasks.report"
        serializer = "pickle"
        ignore_result = True

        def run(self, region: str, *, day: str = "today") -> None: ...

    app.register_task(Report())


# --- Pinned (checked correct) ---------------------------------------------------------------

#: Siblings whose arguments JSON, repr and saferepr treat differently.
ARGS = {
    "plain": (["eu"], {"day": "monday"}),
    'names \u00e9 "q" \\ \U0001f600': (["\u2028\u2029\x7f\x00\x1f"], {"k\u2028": "\ud800"}),
    "long": (["x" * 5000, list(range(300))], {"deep": [[[[["d"]]]]]}),
    "ints": ([1, 2, 3], {}),
    "bigint": ([10**30, -1, True], {}),
    "empty": ([], {}),
    "floats": ([1.0, float("inf"), 1e300], {"n": None}),
    "quotes": (["b'x'", "'\"'"], {"q": "'"}),
}

PINNED = {
    "yaml": ({"task_serializer": "yaml"}, {}),
    "pickle-bzip2": ({"task_serializer": "pickle", "task_compression": "bzip2"}, {}),
    "lzma": ({"task_compression": "lzma"}, {}),
    "repr-maxlevels-1": ({"task_repr_maxlevels": 1}, {}),
    "argsrepr-option": ({}, {"options": {"argsrepr": "given"}}),
    "argsrepr-option-empty": ({}, {"options": {"argsrepr": "", "kwargsrepr": None}}),
    "argsrepr-option-list": ({}, {"options": {"argsrepr": [1]}}),
}


@pytest.mark.parametrize("case", list(PINNED))
def test_pinned_siblings_with_escapes_serializers_and_reprs(redis_url: str, case: str) -> None:
    """Pinned (checked correct): siblings whose arguments and names escape differently in
    JSON (U+2028, controls, lone surrogate, astral, quotes), strings ``saferepr`` truncates,
    under yaml / pickle+bzip2 / lzma, repr levels, and ``argsrepr`` options (str, "", list)
    are Kombu's commands, first slot and next, and through ``known_commands_for``."""
    conf, extra = PINNED[case]
    app = make_app(redis_url, conf)
    app.conf.accept_content = ["json", "pickle", "yaml"]
    run_siblings(app, {name: job(a, k, **extra) for name, (a, k) in ARGS.items()})


def check_sequence(app: Any, steps: list[tuple[str, dict[str, Any], int, bool]]) -> set[str]:
    """Each ``(name, definition, minute, capped)`` in turn: ``commands_for``, then (not capped)
    ``known_commands_for``, against Kombu's; the command names seen."""
    seen: set[str] = set()
    with app.producer_or_acquire() as producer:
        declare_queues(app, producer)
        publisher = CeleryPublisher(app, lambda: producer)
        entries: dict[Any, Any] = {}
        for name, definition, minute, capped in steps:
            key = (name, repr(definition))
            if key not in entries:
                entries[key] = entry_from_config(name, definition, default_timezone=timezone.utc)
            entry = entries[key]
            slot = datetime(2026, 3, 2, 10, minute, tzinfo=timezone.utc)
            occurrence = build_occurrence(entry, slot, task_id_for(name, slot), capped=capped)
            [ours] = publisher.commands_for([occurrence])
            theirs = kombu_commands(app, producer, occurrence)
            assert_kombus(ours, theirs)
            if not capped:
                [known] = publisher.known_commands_for([(entry, slot, task_id_for(name, slot))])
                assert_kombus(known, theirs)
            seen.update(name for name, _ in theirs)
    app.close()
    return seen


def test_pinned_siblings_changed_at_runtime_and_capped_first(redis_url: str) -> None:
    """Pinned (checked correct): a sibling whose first slot is capped, redefined (same shape,
    new arguments; another shape; back again), the shape's first entry capped later, a new
    entry with a redefined entry's definition."""
    a, b1, b2 = job(["a"]), job(["b"], {"k": 1}), job(["bb"], {"k": 2})
    b3 = job(["bbb"], options={"queue": "other"})
    steps = [
        ("a", a, 0, False),
        ("b", b1, 0, True),
        ("b", b1, 1, False),
        ("b", b2, 2, True),
        ("b", b2, 3, False),
        ("b", b3, 4, False),
        ("b", b2, 5, False),
        ("a", a, 6, True),
        ("c", b2, 7, False),
        ("b", b1, 8, False),
    ]
    check_sequence(make_app(redis_url, {}), steps)


def test_pinned_siblings_with_templates_evicted(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pinned (checked correct): with ``TEMPLATES_KEPT = 1`` (and a sibling weighing as much
    as a template) each sibling's template (and its encodings) is dropped and made again
    between its slots, capped and not."""
    monkeypatch.setattr(publishing, "TEMPLATES_KEPT", 1)
    monkeypatch.setattr(publishing, "SIBLINGS_PER_TEMPLATE", 1)
    a, b, c = job(["a"]), job(["b"]), job(["c"], {"x": "y"})
    steps = []
    for minute in range(4):
        steps += [("a", a, minute, minute == 1), ("b", b, minute, minute == 2)]
        steps.append(("c", c, minute, False))
    check_sequence(make_app(redis_url, {}), steps)


def test_pinned_registered_siblings_on_exchanges_priority_and_expiring_queues(
    redis_url: str,
) -> None:
    """Pinned (checked correct): siblings of a registered task routed through an exchange
    bound to two queues (two LPUSH), and to an ``x-expires`` priority queue (PEXPIRE), jittered
    and capped variants first."""
    queues = [
        Queue("q1", Exchange("multi"), routing_key="k"),
        Queue("q2", Exchange("multi"), routing_key="k"),
        Queue("exp", expires=60, max_priority=9),
    ]
    app = make_app(redis_url, {"task_queues": queues})
    report = {"task": "tasks.report", "schedule": 60}
    routes = {"x": {"exchange": "multi", "routing_key": "k"}, "p": {"queue": "exp", "priority": 5}}
    steps = []
    for minute in range(3):
        for tag, options in routes.items():
            first = {**report, "args": ["eu"], "kwargs": {"day": "d"}, "options": options}
            jittered = {**report, "args": ["us"], "options": options, "jitter": 5}
            escaped = {**report, "args": ["\u2028 zz"], "options": options}
            steps += [
                (f"first-{tag}", first, minute, minute == 1),
                (f"jittered-{tag}", jittered, minute, minute == 0),
                (f"escaped-{tag}", escaped, minute, False),
            ]
    seen = check_sequence(app, steps)
    assert {"lpush", "pexpire"} <= seen
