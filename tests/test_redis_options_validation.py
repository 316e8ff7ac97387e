"""``fork_scheduler_redis_options`` and the Redis URL are checked before redis-py sees them
(issue 17, docs/settings.md): a mistake is a ``ConfigError`` naming the setting, in beat and
the CLI; a worker logs it once and goes on. Manager calls refuse an entry name that is not a
string the way ``add`` does."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from celery_fork_scheduler import Manager, config
from celery_fork_scheduler.backends.redis_connection import client_from_url
from celery_fork_scheduler.config import read_settings
from celery_fork_scheduler.errors import ConfigError
from celery_fork_scheduler.testing import free_port
from celery_fork_scheduler.worker import WorkerHooks

OPTIONS = "fork_scheduler_redis_options"
URL = "fork_scheduler_redis_url"
SECRET = "hunter2-secret"


@pytest.fixture
def closed_url() -> str:
    """A Redis URL nobody listens on (nothing here may connect)."""
    return f"redis://127.0.0.1:{free_port()}/0"


def make_app(url: str, **conf: Any) -> Celery:
    app = Celery("options", broker="memory://", set_as_current=False)
    app.conf.fork_scheduler_redis_url = url
    app.conf.update(conf)
    return app


# -- the options, when the settings are read ---------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message", "fixed"),
    [
        (
            {"socket_timout": 5},
            "unknown option 'socket_timout'; did you mean 'socket_timeout'?",
            {"socket_timeout": 5},
        ),
        ({"ssl_ca_cert": "/ca.pem"}, "did you mean 'ssl_ca_certs'?", {"ssl_ca_certs": "/ca.pem"}),
        (
            {"socket_timeout": "5"},
            "option 'socket_timeout' must be a number of seconds",
            {"socket_timeout": 5, "socket_connect_timeout": 1.5, "health_check_interval": 0},
        ),
        (
            {"socket_timeout": None},
            "option 'socket_timeout' must be a number of seconds",
            {"socket_timeout": 0.5},
        ),
        (
            {"socket_connect_timeout": -1},
            "option 'socket_connect_timeout' must be a number",
            {"socket_connect_timeout": 1},
        ),
        (
            {"max_connections": 0},
            "option 'max_connections' must be a whole number above 0",
            {"max_connections": 10, "client_name": "beat", "decode_responses": False},
        ),
        (
            {"cluster": "yes"},
            "option 'cluster' must be True or False, not 'yes'",
            {"cluster": True, "read_from_replicas": True},
        ),
        (
            {"ssl_cert_reqs": "requierd"},
            "option 'ssl_cert_reqs' must be 'none', 'optional'",
            {"ssl_cert_reqs": "required", "ssl_ca_certs": "/ca.pem", "ssl_keyfile": None},
        ),
        (
            {"master_name": ""},
            "option 'master_name' must be a non-empty string",
            {"master_name": "mymaster", "sentinel_kwargs": {"password": "s3cret"}},
        ),
        ({5: 1}, "option names must be strings", {"db": 1}),
    ],
    ids=[
        "typo",
        "typo-ssl",
        "string-timeout",
        "no-timeout",
        "negative-timeout",
        "no-connections",
        "cluster-not-bool",
        "cert-reqs",
        "empty-master",
        "key-not-string",
    ],
)
def test_a_bad_option_is_a_config_error_naming_the_setting(
    options: Any, message: str, fixed: dict[str, Any]
) -> None:
    with pytest.raises(ConfigError, match=r"^field 'fork_scheduler_redis_options': ") as caught:
        read_settings({OPTIONS: options})
    assert caught.value.field == OPTIONS
    assert message in str(caught.value)
    assert dict(read_settings({OPTIONS: fixed}).redis_options) == fixed


def test_a_password_of_the_wrong_type_is_not_shown() -> None:
    with pytest.raises(ConfigError, match="option 'password' must be a string") as caught:
        read_settings({OPTIONS: {"password": 123456789}})
    assert "123456789" not in str(caught.value)


# -- the options against the URL, when the client is built -------------------------------------


@pytest.mark.parametrize(
    ("options", "message", "fitting_url"),
    [
        (
            {"master_name": "mymaster"},
            "'master_name' is a Sentinel option: it needs a sentinel://",
            "sentinel://127.0.0.1:1;sentinel://127.0.0.1:2/0",
        ),
        (
            {"sentinel_kwargs": {}, "master_name": "m"},
            "is a Sentinel option",
            "redis+sentinel://127.0.0.1:1",
        ),
        (
            {"ssl_ca_certs": "/ca.pem"},
            "option 'ssl_ca_certs': TLS options need a rediss:// URL",
            "rediss://127.0.0.1:1/0",
        ),
        ({"ssl": True}, "use a rediss:// URL instead of 'ssl'", None),
        ({"read_from_replicas": True}, "a Redis Cluster option: it needs 'cluster': True", None),
    ],
    ids=["master-name", "sentinel-kwargs", "tls-option", "ssl-flag", "cluster-option"],
)
def test_options_that_do_not_fit_a_plain_url_are_refused(
    closed_url: str, options: dict[str, Any], message: str, fitting_url: str | None
) -> None:
    with pytest.raises(ConfigError) as caught:
        client_from_url(closed_url, options)
    assert caught.value.field == OPTIONS
    assert message in str(caught.value)
    if fitting_url is not None:  # built without connecting
        client_from_url(fitting_url, options).close()


def test_cluster_with_a_sentinel_url_is_refused() -> None:
    with pytest.raises(ConfigError, match="'cluster' cannot be used with a sentinel://"):
        client_from_url("sentinel://127.0.0.1:1", {"cluster": True, "master_name": "m"})


def test_a_redis_that_is_no_cluster_is_a_connection_error_naming_the_option(
    redis_url: str,
) -> None:
    with pytest.raises(redis.ConnectionError) as caught:
        client_from_url(redis_url, {"cluster": True})
    assert str(caught.value) == (
        "not usable as a Redis Cluster (fork_scheduler_redis_options has 'cluster': True): "
        "Cluster mode is not enabled on this node"
    )


# -- the URL ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "redis://127.0.0.1:1/abc",
            "bad Redis URL redis://127.0.0.1:1/abc: the database (the path after the host) "
            "must be a number, such as /0",
        ),
        (
            f"redis://:{SECRET}@127.0.0.1:1/abc",
            "bad Redis URL redis://:**@127.0.0.1:1/abc: the database",
        ),
        (
            "rediss://127.0.0.1:1/0?ssl_cert_reqs=requierd",
            "ssl_cert_reqs must be one of none, optional, required",
        ),
        (
            "redis://127.0.0.1:1/0?socket_timout=3",
            "unknown query parameter 'socket_timout'; did you mean 'socket_timeout'?",
        ),
    ],
    ids=["database", "database-with-password", "tls-flag", "query-typo"],
)
def test_a_malformed_url_is_a_config_error_naming_the_url_setting(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        client_from_url(url)
    assert caught.value.field == URL
    assert message in str(caught.value)
    assert SECRET not in str(caught.value)
    for good in WELL_FORMED:  # built without connecting
        client_from_url(good).close()


#: URLs that stay accepted.
WELL_FORMED = (
    "redis://127.0.0.1:1/0",
    "redis://127.0.0.1:1",
    "redis://127.0.0.1:1/",
    f"redis://:{SECRET}@127.0.0.1:1/3",
    "rediss://127.0.0.1:1/2?ssl_cert_reqs=none",
    "redis://127.0.0.1:1/0?socket_timeout=3&client_name=beat",
    "unix:///tmp/redis.sock?db=1",
)


# -- the Manager: entry names -----------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.get(None),
        lambda m: m.remove(None),
        lambda m: m.trigger(None),
        lambda m: m.run_now(None),
        lambda m: m.update(None, description="x"),
        lambda m: m.next_runs(None),
        lambda m: m.history(None),
        lambda m: m.stats(None),
        lambda m: m.is_paused(None),
        lambda m: m.pause(""),
        lambda m: m.resume(5),
        lambda m: m.add(None, "proj.task", 60),
    ],
    ids=[
        "get",
        "remove",
        "trigger",
        "run_now",
        "update",
        "next_runs",
        "history",
        "stats",
        "is_paused",
        "pause",
        "resume",
        "add",
    ],
)
def test_manager_calls_refuse_a_name_that_is_not_a_string(closed_url: str, call: Any) -> None:
    manager = Manager(make_app(closed_url))
    with pytest.raises(ConfigError, match="entry names must be non-empty strings") as caught:
        call(manager)
    assert caught.value.field == "name"


# -- the worker: logs once, goes on -----------------------------------------------------------


@pytest.fixture
def lenient(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings read as in a worker process (problems logged once), isolated from others."""
    monkeypatch.setattr(config, "_lenient", [])
    monkeypatch.setattr(config, "_reported", set())
    yield


def _hooks(app: Celery) -> WorkerHooks:
    config.tolerate_bad_settings(app.conf)
    return WorkerHooks(app)


def _lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    assert not any(record.exc_info for record in caplog.records), caplog.text
    return [(record.levelno, record.getMessage()) for record in caplog.records]


def _read_twice(hooks: WorkerHooks) -> None:
    """Defaults used: a client; the settings read again say nothing more."""
    client = hooks.client
    hooks.settings  # noqa: B018 -- read again: said once
    assert client is not None
    client.close()


def _connect_twice(hooks: WorkerHooks) -> None:
    """Defaults used: a plain client, made again without another word."""
    client = hooks.client
    hooks._client = None
    assert hooks.client is not None
    assert isinstance(client, redis.Redis)
    client.close()


def _no_client_twice(hooks: WorkerHooks) -> None:
    """No client, asked twice, and the worker goes on."""
    assert hooks.client is None
    assert hooks.client is None
    hooks._mark_seen()


@pytest.mark.parametrize(
    ("options", "use", "level", "said"),
    [
        pytest.param(
            {"socket_timout": 5},
            _read_twice,
            logging.ERROR,
            "unknown option 'socket_timout'",
            id="mistyped-option-uses-the-defaults",
        ),
        pytest.param(
            {"master_name": "mymaster"},
            _connect_twice,
            logging.ERROR,
            "'master_name' is a Sentinel option",
            id="options-that-do-not-fit-the-url-use-the-defaults",
        ),
        pytest.param(
            {"cluster": True},
            _no_client_twice,
            logging.WARNING,
            "cannot reach Redis",
            id="no-usable-cluster-goes-on",
        ),
    ],
)
def test_a_worker_logs_a_bad_option_once(
    lenient: None,
    closed_url: str,
    caplog: pytest.LogCaptureFixture,
    options: dict[str, Any],
    use: Callable[[WorkerHooks], None],
    level: int,
    said: str,
) -> None:
    hooks = _hooks(make_app(closed_url, **{OPTIONS: options}))
    with caplog.at_level(logging.WARNING):
        use(hooks)
    [(logged, message)] = _lines(caplog)
    assert logged == level
    assert said in message and OPTIONS in message
