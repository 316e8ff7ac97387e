"""Adversarial first-hour mistakes that still break a promise of issue 17, docs/cli.md,
docs/settings.md, docs/guarantees.md or docs/security.md.

Every test here FAILS today; each docstring says which promise it breaks and what was seen.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from celery_fork_scheduler.testing import CeleryProcess, wait_until

from .harness import run_python, write_project
from .test_first_hour import beat, celery, one_line, project, worker_ran_a_scheduled_run

pytestmark = pytest.mark.e2e


def _entry_project(workdir: Path, redis_url: str, entry: str) -> str:
    """A project whose ``beat_schedule`` has one good entry and the entry ``bad``."""
    return write_project(
        workdir,
        f"""
app.conf.timezone = "Europe/Berlin"
app.conf.fork_scheduler_redis_url = {redis_url!r}
app.conf.beat_schedule = {{
    "every-minute": {{"task": "record", "schedule": timedelta(minutes=1)}},
    "bad": {entry},
}}
import celery_fork_scheduler
celery_fork_scheduler.install(app)
""",
    )


def _run_beat_for(
    module: str, workdir: Path, broker: str, seconds: float
) -> tuple[int | None, str]:
    """Run ``celery beat -S fork`` for at most ``seconds``; (exit code or None, its output)."""
    beat = CeleryProcess.beat(module, cwd=workdir, workdir=workdir, env={"TEST_BROKER_URL": broker})
    assert beat.start().process is not None
    try:
        code: int | None = beat.process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        beat.stop(timeout=15)
    return code, beat.log()


# -- 1. entry options are never checked --------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        '{"queue": 5}',
        '{"countdown": "abc"}',
        '{"expires": -5}',
        "[]",
    ],
)
def test_validate_accepts_entry_options_of_the_wrong_kind(
    redis_url: str, workdir: Path, options: str
) -> None:
    """Promise (guarantees.md "A bad entry or setting": beat refuses to start with a
    ConfigError naming the entry and the field; cli.md `validate` reports every problem, exit 1).

    Seen: `celery schedule validate` says `3 valid entries, 0 errors` (exit 0) for an entry with
    `options={"queue": 5}`, `{"countdown": "abc"}`, `{"expires": -5}` or `options=[]`.
    `celery beat -S fork` starts, and then every slot of `bad` fails at publish:
    `ERROR fork scheduler: publishing bad (record) ... failed: AttributeError("'int' object has
    no attribute 'startswith'")` (queue 5) / `TypeError("'<' not supported between instances of
    'str' and 'int'")` (countdown "abc"); with expires -5 every message is sent already expired
    (Celery: `... has an expiration date in the past (5s ago)`), so the task never runs.
    `Manager(app).add(..., options={"queue": 5})` stores such an entry too.
    """
    entry = f'{{"task": "record", "schedule": "every 5 seconds", "options": {options}}}'
    module = _entry_project(workdir, redis_url, entry)
    result = celery(module, workdir, redis_url, "schedule", "validate")
    one_line(result, 1, "entry 'bad', field 'options'")


def test_beat_publishes_an_entry_whose_queue_is_not_a_string_and_fails_every_slot(
    redis_url: str, workdir: Path
) -> None:
    """Promise (guarantees.md, security.md "Who can do what": beat stops at start-up with a
    ConfigError naming the entry and the field).

    Seen: `celery beat -S fork` with `"options": {"queue": 5}` starts and keeps running; each
    slot of `bad` is claimed, counted as a failure and logged as `publishing bad (record) for slot
    ... failed: AttributeError("'int' object has no attribute 'startswith'")`: no field named.
    """
    entry = '{"task": "record", "schedule": "every 1 seconds", "options": {"queue": 5}}'
    module = _entry_project(workdir, redis_url, entry)
    code, output = _run_beat_for(module, workdir, redis_url, 8)
    assert code == 1, output
    assert "Traceback" not in output, output
    assert "startswith" not in output, output
    assert "entry 'bad', field 'options'" in output, output


# -- 2. beat_cron_starting_deadline of the wrong kind kills beat -------------------------------


def test_a_string_beat_cron_starting_deadline_kills_beat_with_a_traceback(
    redis_url: str, workdir: Path
) -> None:
    """Promise (issue 17 / settings.md: a bad setting stops beat with one line naming it, and
    `schedule validate` reports it; guarantees.md: a bad setting -> ConfigError naming it).

    `beat_cron_starting_deadline = "60"` (as read from an environment variable) is read by the
    fork scheduler (`timedelta(seconds=deadline)` in its catch-up) but never checked.
    Seen: `celery schedule validate` -> `3 valid entries, 0 errors` (exit 0); `celery beat -S
    fork` -> `CRITICAL beat raised exception <class 'TypeError'>: TypeError('unsupported type for
    timedelta seconds component: str')` plus a Traceback, exit 1.
    """
    module = project(
        workdir,
        f"app.conf.fork_scheduler_redis_url = {redis_url!r}\n"
        'app.conf.beat_cron_starting_deadline = "60"',
    )
    validate = celery(module, workdir, redis_url, "schedule", "validate")
    _code, output = _run_beat_for(module, workdir, redis_url, 8)
    assert "Traceback" not in output, output
    assert "unsupported type for timedelta" not in output, output
    one_line(validate, 1, "beat_cron_starting_deadline")


# -- 3. fork_scheduler_redis_options go unchecked into redis-py --------------------------------


@pytest.mark.parametrize(
    "options",
    [
        "{'socket_timout': 5}",  # a typo of socket_timeout
        "{'socket_timeout': '5'}",  # a string, as from an environment variable
        "{'master_name': 'mymaster'}",  # a Sentinel option with a plain redis:// URL
    ],
)
def test_bad_redis_options_are_a_traceback_in_the_cli(
    redis_url: str, workdir: Path, options: str
) -> None:
    """Promise (cli.md Errors: a mistake is one line on stderr, no stack trace, exit 2 for bad
    input; settings.md: a value of the wrong kind names the setting).

    Seen: `celery schedule list` -> exit 1 and a full Traceback ending in
    `TypeError: AbstractConnection.__init__() got an unexpected keyword argument 'socket_timout'`
    (or `'master_name'`), or `TypeError: 'str' object cannot be interpreted as an integer` for
    socket_timeout '5'. `schedule validate` and `celery beat -S fork` print the same traceback
    (beat: `CRITICAL ... TypeError`, logged token by token as WARNING lines).
    """
    module = project(
        workdir,
        f"app.conf.fork_scheduler_redis_url = {redis_url!r}\n"
        f"app.conf.fork_scheduler_redis_options = {options}",
    )
    result = celery(module, workdir, redis_url, "schedule", "list")
    one_line(result, 2, "fork_scheduler_redis_options")


def test_cluster_option_on_a_plain_redis_is_a_traceback_in_the_cli(
    redis_url: str, workdir: Path
) -> None:
    """Promise (cli.md Errors: one line, no stack trace; exit 3 when Redis cannot be used).

    `fork_scheduler_redis_options = {"cluster": True}` against a Redis that is not a cluster
    (a first-hour copy-paste from the docs). Seen: `celery schedule list` and `schedule validate`
    -> exit 1 and a Traceback ending in `redis.exceptions.RedisClusterException: Redis Cluster
    cannot be connected. Please provide at least one reachable node: Cluster mode is not enabled
    on this node`.
    """
    module = project(
        workdir,
        f"app.conf.fork_scheduler_redis_url = {redis_url!r}\n"
        'app.conf.fork_scheduler_redis_options = {"cluster": True}',
    )
    result = celery(module, workdir, redis_url, "schedule", "list")
    one_line(result, 3, "Cluster mode is not enabled")
    validate = celery(module, workdir, redis_url, "schedule", "validate")
    one_line(validate, 1, "Cluster mode is not enabled")
    one_line(beat(module, workdir, redis_url), 1, "Cluster mode is not enabled")


@pytest.mark.parametrize(
    "options", ["{'cluster': True}", "{'socket_timout': 5}"], ids=["cluster", "typo"]
)
def test_bad_redis_options_make_the_worker_hooks_log_tracebacks(
    redis_url: str, workdir: Path, processes: list[CeleryProcess], options: str
) -> None:
    """Promise (settings.md: "a worker logs each bad setting once, at start, as an ERROR line,
    then runs with that setting's default"; issue 17: a worker whose claims Redis is unusable
    logs one WARNING per outage, no traceback).

    Seen, for `fork_scheduler_redis_options = {"cluster": True}` on a plain Redis: `ERROR Signal
    handler <bound method WorkerHooks.on_worker_ready ...> raised: server:RedisClusterException`
    with three chained Tracebacks at start, and again `... WorkerHooks.on_prerun ... raised` with
    tracebacks for the scheduled run. For `{"socket_timout": 5}`: `WARNING fork scheduler: could
    not reach Redis to announce this worker` (Redis is reachable; the setting is not named), then
    a Traceback ending in `TypeError: AbstractConnection.__init__() got an unexpected keyword
    argument 'socket_timout'` for the run. The tasks do run.
    """
    module = project(
        workdir,
        f"app.conf.fork_scheduler_redis_url = {redis_url!r}\n"
        f"app.conf.fork_scheduler_redis_options = {options}",
    )
    worker = worker_ran_a_scheduled_run(module, workdir, redis_url, processes, timeout=30)
    # Celery logs the success after the run's hooks (task_postrun) ran.
    wait_until(lambda: "succeeded in" in worker.log(), timeout=30, what="the run's end logged")
    log = worker.log()
    assert "Traceback" not in log, log
    assert "raised:" not in log, log
    assert "fork_scheduler_redis_options" in log, log


# -- 4. the app's own timezone -----------------------------------------------------------------


def test_an_unknown_app_timezone_is_a_traceback_in_validate(redis_url: str, workdir: Path) -> None:
    """Promise (cli.md: `validate` reports every problem, one line each, exit 1; Errors: no
    stack trace).

    `app.conf.timezone = "Europe/Berln"` (a typo). Seen: `celery schedule validate` (and
    `schedule list`, `schedule next 'every 5 seconds'`) -> exit 1 and a Traceback through
    `celery_fork_scheduler/validation.py` `_static_entries` (`default_timezone=app.timezone`),
    ending in `zoneinfo._common.ZoneInfoNotFoundError: 'No time zone found with key
    Europe/Berln'`.
    """
    module = project(
        workdir,
        f'app.conf.fork_scheduler_redis_url = {redis_url!r}\napp.conf.timezone = "Europe/Berln"',
    )
    result = celery(module, workdir, redis_url, "schedule", "validate")
    one_line(result, 1, "Europe/Berln")
    listing = celery(module, workdir, redis_url, "schedule", "list")
    one_line(listing, 2, "Europe/Berln")


def test_a_wrongly_typed_app_timezone_is_blamed_on_the_entries(
    redis_url: str, workdir: Path
) -> None:
    """Promise (issue 17: ONE clear line naming the entry or setting that is wrong).

    `app.conf.timezone = 5`. Seen: `celery schedule validate` blames every wall-clock entry
    instead of the setting: `error: entry 'nightly', field 'schedule': unknown time zone '5':
    expected an IANA name such as 'Europe/Berlin'` (one such line per entry); the setting
    `timezone` is never named.
    """
    module = project(
        workdir, f"app.conf.fork_scheduler_redis_url = {redis_url!r}\napp.conf.timezone = 5"
    )
    result = celery(module, workdir, redis_url, "schedule", "validate")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "field 'timezone'" in output or "'timezone'" in output.replace("time zone", ""), output
    assert "entry 'nightly', field 'schedule'" not in output, output


# -- 5. a malformed Redis URL that is not reported as such -------------------------------------


def test_a_malformed_tls_option_in_the_redis_url_is_called_unreachable(
    redis_url: str, workdir: Path
) -> None:
    """Promise (issue 17: a malformed `fork_scheduler_redis_url` is one line
    `field 'fork_scheduler_redis_url': bad Redis URL ...`; cli.md: exit 2 is bad input, exit 3
    is Redis that cannot be reached).

    `rediss://127.0.0.1:6390/0?ssl_cert_reqs=requierd` (typo). Seen: `celery schedule list`
    -> `Error: cannot reach Redis at rediss://...?ssl_cert_reqs=requierd: Invalid SSL Certificate
    Requirements Flag: requierd`, exit 3 (an outage), and the setting is not named.
    """
    url = "rediss://127.0.0.1:6390/0?ssl_cert_reqs=requierd"
    module = project(workdir, f"app.conf.fork_scheduler_redis_url = {url!r}")
    result = celery(module, workdir, redis_url, "schedule", "list")
    one_line(result, 2, "field 'fork_scheduler_redis_url'")


def test_a_redis_url_with_a_non_numeric_database_is_silently_database_0(
    redis_url: str, workdir: Path
) -> None:
    """Promise (issue 17: a malformed `fork_scheduler_redis_url` stops beat / the CLI with one
    line naming it; `redis://host:abc/0` is refused that way).

    `<redis>/abc` (a database that is not a number). Seen: `celery schedule list` succeeds
    (exit 0) and the scheduler silently uses database 0 (the broker's), where `schedule add`
    stores its entries.
    """
    url = redis_url.rsplit("/", 1)[0] + "/abc"
    module = project(workdir, f"app.conf.fork_scheduler_redis_url = {url!r}")
    result = celery(module, workdir, redis_url, "schedule", "list")
    one_line(result, 2, "field 'fork_scheduler_redis_url'")


# -- 6. the Manager with a name that is not a string -------------------------------------------


def test_manager_calls_with_no_name_raise_a_redis_data_error(redis_url: str, workdir: Path) -> None:
    """Promise (issue 17 / manager.md Errors: bad input to a Manager call is a `ConfigError`
    naming the field; `Manager.add(None, ...)` already says `entry names must be non-empty
    strings, not None`).

    Seen: `Manager(app).get(None)`, `.remove(None)` and `.trigger(None)` raise
    `redis.exceptions.DataError: Invalid input of type: 'NoneType'. Convert to a bytes, string,
    int or float first.` (a redis-py error, no entry or field named).
    """
    module = project(workdir, f"app.conf.fork_scheduler_redis_url = {redis_url!r}")
    script = f"""
from celery_fork_scheduler import Manager
from celery_fork_scheduler.errors import ForkSchedulerError
from {module} import app
m = Manager(app)
for call in (m.get, m.remove, m.trigger):
    try:
        call(None)
    except ForkSchedulerError as exc:
        print("ok", call.__name__, exc)
    except Exception as exc:
        print("BAD", call.__name__, type(exc).__module__, type(exc).__name__, exc)
"""
    result = run_python(workdir, redis_url, "-c", script)
    assert result.returncode == 0, result.stderr
    assert "BAD" not in result.stdout, result.stdout
