"""Prometheus metrics of a replica: they change with what it does; /metrics serves them."""

from __future__ import annotations

import builtins
import time
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import replica_helpers
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families
from replica_helpers import BrokenPublisher

from celery_fork_scheduler import Manager, Scheduler, every
from celery_fork_scheduler.errors import ConfigError
from celery_fork_scheduler.metrics import Metrics
from celery_fork_scheduler.testing import FakeClock, free_port, wait_until

SCHEDULE = {
    name: {"task": "t", "schedule": every(1).seconds} for name in ("ok", "paused", "broken")
}


def make_app(redis_url: str, **conf: Any) -> Celery:
    return replica_helpers.make_app(redis_url, SCHEDULE, main="metrics", **conf)


@pytest.fixture
def make_scheduler(redis_url: str, clock: FakeClock) -> Iterator[Any]:
    """``make(name, **conf)``: a replica of an app with ``conf`` whose publishes all fail."""
    with replica_helpers.schedulers(redis_url, monotonic=time.monotonic) as make:

        def made(name: str, **conf: Any) -> Scheduler:
            app = make_app(redis_url, **conf)
            return make(clock, name, app=app, publisher=BrokenPublisher())

        yield made


def value(metrics: Metrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_counters_follow_fires_skips_and_failures_of_the_connected_replica_only(
    make_scheduler: Any, clock: FakeClock
) -> None:
    first = make_scheduler("replica-1")
    second = make_scheduler("replica-2")
    Manager(first.app).pause("paused")
    metrics = Metrics()
    metrics.connect(second)

    assert value(metrics, "fork_scheduler_fires_total", entry="ok") == 0
    assert value(metrics, "fork_scheduler_dispatch_lag_seconds_count") == 0
    clock.advance(1)
    second.tick()  # slot 1: second publishes ok, skips paused, fails broken
    first.tick()  # first: ok already claimed; not counted here (another sender)
    assert value(metrics, "fork_scheduler_fires_total", entry="ok") == 1
    assert value(metrics, "fork_scheduler_skips_total", entry="paused", reason="paused") == 1
    assert value(metrics, "fork_scheduler_publish_failures_total", entry="broken") == 1
    assert value(metrics, "fork_scheduler_skips_total", entry="ok", reason="claimed") == 0
    assert value(metrics, "fork_scheduler_dispatch_lag_seconds_count") == 1

    clock.advance(1)
    first.tick()  # slot 2: first publishes ok; second sees it claimed
    second.tick()
    assert value(metrics, "fork_scheduler_fires_total", entry="ok") == 1
    assert value(metrics, "fork_scheduler_skips_total", entry="ok", reason="claimed") == 1
    # the first replica handled (skipped) paused slot 2: for the second it is "claimed"
    assert value(metrics, "fork_scheduler_skips_total", entry="paused", reason="paused") == 1
    assert value(metrics, "fork_scheduler_skips_total", entry="paused", reason="claimed") == 1
    assert value(metrics, "fork_scheduler_dispatch_lag_seconds_count") == 1
    assert value(metrics, "fork_scheduler_dispatch_lag_seconds_sum") >= 0


def test_metrics_are_off_by_default(make_scheduler: Any) -> None:
    assert make_scheduler("replica-1").metrics is None


def test_without_prometheus_client_metrics_are_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_import = builtins.__import__

    def no_prometheus(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("prometheus_client"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_prometheus)
    with pytest.raises(ConfigError, match="prometheus-client") as raised:
        Metrics()
    assert raised.value.field == "fork_scheduler_metrics_port"


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_metrics_port_setting_serves_metrics_that_can_be_scraped(
    make_scheduler: Any, clock: FakeClock
) -> None:
    port = free_port()
    scheduler = make_scheduler("replica-1", fork_scheduler_metrics_port=port)
    Manager(scheduler.app).pause("paused")
    assert scheduler.metrics is not None
    wait_until(lambda: bool(scrape(port)), timeout=10, what="/metrics")
    before = scrape(port)
    assert before[("fork_scheduler_entries", ())] == len(SCHEDULE)
    assert ("fork_scheduler_fires_total", (("entry", "ok"),)) not in before
    assert before[("fork_scheduler_claim_latency_seconds_count", ())] == 0

    end = clock.now + timedelta(seconds=3)
    while clock.now < end:
        scheduler.tick()
        clock.advance(0.25)
    after = scrape(port)
    assert after[("fork_scheduler_fires_total", (("entry", "ok"),))] == 3
    assert after[("fork_scheduler_skips_total", (("entry", "paused"), ("reason", "paused")))] == 3
    assert after[("fork_scheduler_publish_failures_total", (("entry", "broken"),))] >= 3
    assert after[("fork_scheduler_dispatch_lag_seconds_count", ())] == 3
    assert after[("fork_scheduler_claim_latency_seconds_count", ())] >= 3
