"""Adversary round 50: what changed since 5eff4d4 -- the heartbeat that takes a lost marker
back (and asks every 0.2 s after a Redis error), the one-line CLI errors that tell "Redis
answered with an error" from "Redis cannot be reached", the URL scrubber (``@`` after a
space), and ASCII-only numbers in schedule strings, times and durations.

Each test's docstring names the promise (with its page), the sequence, what happened instead
and where. Every test failed on the code of this round (2db33d8); all were found failing by
round 50 and fixed (scrubber: the ``@user_script:`` of a Lua error is the one ``@`` passed over,
and a scheme after other letters is found; trigger, history and pause/resume name the entry of
a wrong-typed key, pause/resume writing nothing then; ``--jitter`` ASCII digits only; the
worker's announce failure is rate-limited with the others). Claims, markers and history
are on a real Redis (a private ``redis-server`` where the test kills it); the worker side is
driven through the real ``WorkerHooks`` (the handlers ``install(app)`` connects); the CLI runs
through click's ``CliRunner``.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any

import pytest
import redis
import restart_helpers
from celery import Celery
from hand_driven_helpers import HandDrivenWorker as Worker
from restart_helpers import crash, servers_fixture, start_server  # noqa: F401 - the fixture servers

from celery_fork_scheduler.ids import ENTRY_HEADER, OVERLAP_HEADER, SLOT_HEADER
from celery_fork_scheduler.keys import Keys
from celery_fork_scheduler.testing import RedisServer

KEYS = Keys("scheduler:")
#: The task of every entry.
TASK = "adv50.job"
SLOT = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)


#: ``make_app(url, beat_schedule, *, broker="memory://", **conf)``: beat and worker of one app.
make_app = partial(restart_helpers.make_app, "adv50", TASK)


def run_cli(app: Celery, args: list[str], input: str | None = None) -> Any:
    from celery.bin.base import CLIContext
    from click.testing import CliRunner

    from celery_fork_scheduler.cli import schedule

    return CliRunner().invoke(
        schedule, args, obj=CLIContext(app=app, no_color=True, workdir=None), input=input
    )


def fail_a_run(app: Celery, error: BaseException) -> None:
    """A worker runs slot 10:00 of ``e`` and the task raises ``error`` (final failure):
    the handlers record it in the entry's history, as Celery's signals call them."""
    worker = Worker(app, TASK)
    task_id = "run-of-e-at-10-00"
    headers = {ENTRY_HEADER: "e", SLOT_HEADER: SLOT.isoformat()}
    assert worker.start(task_id, headers)
    worker.hooks.on_failure(sender=worker.task, task_id=task_id, exception=error)
    worker.end(task_id, state="FAILURE")


# -- 1. the scrubber: a password that ends in a space (or a tab) before the '@' ------------------


@pytest.mark.parametrize("blank", [" ", "\t", "\u00a0"], ids=["space", "tab", "no-break-space"])
def test_a_password_ending_in_a_blank_is_shown_by_history(
    redis_url: str, redis_client: redis.Redis, blank: str
) -> None:
    """Promise: docs/cli.md, Conventions: "passwords in URLs are masked" in everything the
    commands print; docs/security.md / the scrubber's own docstring (backends/redis_connection.py
    ``_CREDENTIALS_IN_TEXT``): "an unencoded ``@``, ``/``, ``#``, ``?`` or space in a password
    ends nothing early" -- the round's brief asks for passwords with spaces.

    Sequence: a run of ``e`` fails with an error that quotes the URL it could not use,
    ``redis://:hunter2<blank>@db.internal:6379/0`` (a password whose last character is a space,
    a tab or a no-break space, unencoded, as redis-py accepts it). The worker stores the error
    text (held.py ``error_text`` scrubs it), and ``celery schedule history e --json`` prints
    it (inspection.py ``history_data`` scrubs it again).

    What happens: the password is printed in clear both times. Round 49 changed the pattern
    to ``(\\b[a-z][a-z0-9+.\\-]*://)([^:@\\s/]*:)?(?:[^\\n]*\\S)?@`` so that a Lua error's
    `` @user_script`` after a URL is not taken for a password's end: the ``@`` must now follow
    a non-blank character, so a URL whose password ends in a blank has no ``@`` the pattern
    accepts and nothing is masked (the earlier pattern, ``[^\\n]*@``, masked it). Expected: no
    ``hunter2`` in the output. Where: backends/redis_connection.py ``_CREDENTIALS_IN_TEXT`` /
    ``scrub_secrets``.
    """
    app = make_app(redis_url, {"e": {"task": TASK, "schedule": timedelta(minutes=1)}})
    try:
        url = f"redis://:hunter2{blank}@db.internal:6379/0"
        fail_a_run(app, ConnectionError(f"cannot use {url}: connection refused"))
        stored = [json.loads(raw) for raw in redis_client.lrange(KEYS.history("e"), 0, -1)]
        assert stored and "db.internal" in stored[0]["error"], stored  # the run's error is kept
        result = run_cli(app, ["history", "e", "--json"])
    finally:
        app.close()
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output, result.output
    assert "hunter2" not in stored[0]["error"], stored[0]["error"]


# -- 2. the scrubber: a URL written right after a word in a script without spaces ----------------


@pytest.mark.parametrize(
    "message",
    [
        "无法连接redis://:s3cr3t-pw@cache.internal:6379/0",  # Chinese: "cannot connect"
        "接続先redis://:s3cr3t-pw@cache.internal:6379/0に失敗しました",  # Japanese
    ],
    ids=["chinese", "japanese"],
)
def test_a_url_right_after_cjk_text_keeps_its_password(
    redis_url: str, redis_client: redis.Redis, message: str
) -> None:
    """Promise: docs/cli.md, Conventions: "passwords in URLs are masked"; the brief's scrubber
    attack (unicode). ``scrub_secrets``: "``text`` with the credentials of any URL in it
    replaced by ``**``" (error messages, stored task errors, log lines).

    Sequence: a run fails with a message in Chinese or Japanese, which write words without
    spaces: ``无法连接redis://:s3cr3t-pw@cache.internal:6379/0``. ``celery schedule history e
    --json`` prints the stored error.

    What happens: the password is printed in clear. The pattern starts a URL at ``\\b[a-z]``:
    ``re`` is Unicode-aware, so a CJK character is a word character, there is no word
    boundary between ``接`` and ``redis``, and no later start matches either (``edis://`` has a
    word character before it too): the URL is not seen at all. Expected: no ``s3cr3t-pw`` in
    the output. Where: backends/redis_connection.py ``_CREDENTIALS_IN_TEXT`` (``\\b`` before
    the scheme).
    """
    app = make_app(redis_url, {"e": {"task": TASK, "schedule": timedelta(minutes=1)}})
    try:
        fail_a_run(app, RuntimeError(message))
        result = run_cli(app, ["history", "e", "--json"])
    finally:
        app.close()
    assert result.exit_code == 0, result.output
    assert "cache.internal" in result.output, result.output  # the error is shown
    assert "s3cr3t-pw" not in result.output, result.output


# -- 3. trigger: Redis answered with an error, reported as "cannot reach Redis", exit 3 ----------


def test_trigger_of_an_entry_whose_state_has_the_wrong_type_says_redis_cannot_be_reached(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Promise: docs/cli.md, exit codes: ``1`` "the operation failed: ... Redis answering with
    an error (``... refused the command: WRONGTYPE ...``: one entry's state is a key of the
    wrong type ...)"; ``3`` "Redis is not configured or cannot be reached; for ``trigger``,
    also the broker cannot be reached"; docs/guarantees.md failure row "One entry's stored
    state is corrupted (... a key of the wrong type)": "Error naming the entry". This round's
    change: "Redis unreachable -> exit 3; Redis answered with an error -> exit 1 naming the
    entry where it can".

    Sequence: two static entries on a reachable Redis; ``P{broken}:state`` holds a string (the
    corruption the failure table names). ``celery schedule trigger broken``.

    What happens: exit 3, ``Error: cannot reach Redis at redis://127.0.0.1:.../0: WRONGTYPE
    Operation against a key holding the wrong kind of value; nothing was sent`` -- Redis
    answered, and the entry is not named (``show broken`` and ``history broken`` on the same
    data exit 1 naming it). ``trigger`` catches every ``redis.RedisError`` itself and turns it
    into ``RedisUnavailableError`` before the session's ``_translate`` / ``redis_failure`` can
    tell the two apart. Expected: exit 1, one line naming ``broken``, no "cannot reach".
    Where: cli/edit.py ``trigger`` (``except (redis.RedisError, BackendUnavailableError)``).
    """
    schedule = {
        "fine": {"task": TASK, "schedule": timedelta(seconds=10)},
        "broken": {"task": TASK, "schedule": timedelta(seconds=10)},
    }
    app = make_app(redis_url, schedule, broker=redis_url)
    try:
        redis_client.set(KEYS.state("broken"), "not a hash")
        shown = run_cli(app, ["show", "broken"])
        result = run_cli(app, ["trigger", "broken"])
    finally:
        app.close()
    assert shown.exit_code == 1 and "broken" in shown.output, shown.output  # what show says
    output = result.output
    assert result.exit_code == 1, (result.exit_code, output)
    assert "cannot reach" not in output and "broken" in output, output


# -- 4. --jitter with digits that are not ASCII ---------------------------------------------------


@pytest.mark.parametrize(
    "jitter",
    ["\uff13\uff10", "\u0663\u0660", "\uff13.\uff15"],
    ids=["fullwidth", "arabic-indic", "fullwidth-decimal"],
)
def test_cli_add_takes_a_jitter_written_in_non_ascii_digits(redis_url: str, jitter: str) -> None:
    """Promise: docs/schedules.md, String forms: "numbers are ASCII digits, as in a cron
    field: a fullwidth ``\uff15`` is refused"; this round's change: "schedule strings, times and
    durations take ASCII digits only" (durations.py ``parse_duration`` compiles its pattern
    with ``re.ASCII``: ``"\uff13\uff10s"`` is refused); docs/cli.md ``add``:
    ``--jitter SECONDS|TEXT``
    (``30``, ``30s``, ``2 minutes``); a bad value is exit 2.

    Sequence: ``celery schedule add e adv50.job "every 1 minute" --jitter \uff13\uff10`` (fullwidth
    digits; or Arabic-Indic ``\u0663\u0660``).

    What happens: exit 0, the entry is stored with a 30 s jitter, while
    ``--jitter \uff13\uff10s`` is refused (exit 2). The CLI turns the option into a number
    with ``float()``, which reads any Unicode decimal digits, before the entry's checks see it
    as text. Expected: exit 2 (bad input), nothing stored, as for ``\uff13\uff10s``. Where:
    cli/edit.py ``_number_or_text``.
    """
    app = make_app(redis_url, {})
    try:
        with_unit = run_cli(app, ["add", "u", TASK, "every 1 minute", "--jitter", f"{jitter}s"])
        result = run_cli(app, ["add", "e", TASK, "every 1 minute", "--jitter", jitter])
    finally:
        app.close()
    assert with_unit.exit_code == 2, with_unit.output  # the same digits with a unit: refused
    assert result.exit_code == 2, (result.exit_code, result.output)


# -- 5. the heartbeat's 0.2 s retry floods the worker's log while Redis is away -----------------


def test_a_worker_holding_a_run_logs_a_warning_every_heartbeat_while_redis_is_away(
    servers: list[RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    """Promise: worker.py, the worker's logging contract (``REDIS_WARNING_SECONDS``: "While
    Redis cannot be reached, the worker says so at most once in this many seconds" (60);
    ``_redis_failed``: "while Redis cannot be reached, one WARNING a minute (no traceback, the
    failures counted)"); docs/singleton.md, Failure behaviour: "Redis is unreachable ...
    Workers cannot renew or free markers and log a warning". This round's change: "after a
    Redis error the heartbeat asks every 0.2 s".

    Sequence: a worker holds a singleton run (executing, lease 3 s); Redis goes away for 3 s.

    What happens: every heartbeat first announces the worker (``_mark_seen``), whose failure
    is logged as its own WARNING ``could not reach Redis to announce this worker`` outside the
    rate limit; the renewal then fails and switches the heartbeat to 0.2 s, so that WARNING is
    logged five times a second (per process: each prefork pool process holding a run has its
    own heartbeat) -- some 18 000 lines an hour of outage, where the rate-limited path says it
    once a minute. Expected: at most one "cannot reach Redis" warning (plus at most one
    announce warning) over 3 s. Where: worker.py ``_beat_hearts`` (the 0.2 s retry) with
    ``_mark_seen`` (``except Exception: logger.warning(...)``, not through ``_redis_failed``).
    """
    server = start_server(servers)
    app = make_app(server.url, {}, fork_scheduler_singleton_lease=3)
    worker = Worker(app, TASK)
    headers = {ENTRY_HEADER: "e", SLOT_HEADER: SLOT.isoformat(), OVERLAP_HEADER: "skip"}
    assert worker.start("run-of-e", headers)  # executing, its heartbeat thread started
    try:
        with caplog.at_level(logging.WARNING, logger="celery_fork_scheduler.worker"):
            crash(server)
            time.sleep(3.2)
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    finally:
        worker.hooks.on_worker_shutdown()
        app.close()
    announce = [w for w in warnings if "announce this worker" in w]
    assert len(warnings) <= 2 and len(announce) <= 1, (
        f"{len(warnings)} warnings in 3 s, {len(announce)} of them 'announce': {warnings[:3]}"
    )


# -- 6. one entry's history key of the wrong type: the error does not name the entry -------------


@pytest.mark.parametrize("command", ["show", "history"])
def test_one_entrys_history_of_the_wrong_type_is_an_error_that_does_not_name_it(
    redis_url: str, redis_client: redis.Redis, command: str
) -> None:
    """Promise: docs/guarantees.md failure row "One entry's stored state is corrupted (a
    non-numeric mark, a key of the wrong type)": "Error naming the entry"; docs/cli.md exit
    code 1 "Redis answering with an error"; this round's change: "Redis answered with an error
    -> exit 1 naming the entry where it can" (``show broken`` with the *state* key corrupted
    says ``Error: entry 'broken': its state in Redis cannot be read: WRONGTYPE ...``).

    Sequence: static entry ``broken``; its history list ``P{broken}:history`` is a string.
    ``celery schedule show broken`` / ``history broken``.

    What happens: exit 1 with ``Error: Redis at redis://127.0.0.1:.../0 refused the command:
    WRONGTYPE Operation against a key holding the wrong kind of value``: neither the entry nor
    the key is named, though the command was given the name (a ``list`` of many entries, or a
    script calling ``show`` for each, cannot tell which one is broken). Only the state key got
    the entry-naming ``StoredStateError``; the history read goes to ``redis_failure``, which
    knows no entry. Expected: one line naming ``broken``. Where: manager.py
    ``history_items`` (no ``StoredStateError``-like wrapping) with cli/session.py
    ``_translate`` / ``redis_failure``.
    """
    app = make_app(redis_url, {"broken": {"task": TASK, "schedule": timedelta(seconds=10)}})
    try:
        redis_client.set(KEYS.history("broken"), "not a list")
        result = run_cli(app, [command, "broken"])
    finally:
        app.close()
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert "broken" in result.output, result.output


# -- 7. pause --tag with one broken entry: an error, yet the others are paused ----------------


def test_pause_by_tag_fails_on_one_broken_entry_after_pausing_the_others_silently(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Promise: docs/cli.md, exit codes: ``1`` "the operation failed"; the failure row of
    docs/guarantees.md "One entry's stored state is corrupted (... a key of the wrong type)":
    the error is that entry's, "every other entry ... go[es] on" (store.py ``read_states``:
    "one entry's corrupted state is that entry's alone"); docs/manager.md ``pause(tag=...)``
    "returns the names" paused.

    Sequence: static entries ``fine`` and ``broken``, both tagged ``g``; ``P{broken}:state``
    is a string. ``celery schedule pause --tag g``, answered ``y``.

    What happens: exit 1, ``Error: Redis at redis://... refused the command: Command # 1 (HSET
    scheduler:{broken}:state paused 1 ...) of pipeline caused error: WRONGTYPE ...`` -- the
    command says it failed, and says nothing of ``fine``, which **is paused** for every
    replica (the pipeline ran every HSET; only the reply of one raised). An operator reading
    "failed" does not resume it: ``fine`` silently stops firing. Expected: either nothing is
    paused, or the output says which entries were paused (``fine``) and names ``broken`` as the
    one that failed. Where: store.py ``RuntimeStore.pause`` (one non-transactional pipeline,
    ``execute()`` raising on the first error reply) under manager.py ``pause``.
    """
    schedule = {
        "fine": {"task": TASK, "schedule": timedelta(seconds=10), "tags": ["g"]},
        "broken": {"task": TASK, "schedule": timedelta(seconds=10), "tags": ["g"]},
    }
    app = make_app(redis_url, schedule)
    try:
        redis_client.set(KEYS.state("broken"), "not a hash")
        result = run_cli(app, ["pause", "--tag", "g"], input="y\n")
    finally:
        app.close()
    fine_paused = redis_client.hget(KEYS.state("fine"), "paused") is not None
    said = result.output.split("?", 1)[-1]  # after the question
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert not fine_paused or "fine" in said, (
        f"'fine' paused: {fine_paused}; the command said: {said.strip()}"
    )
