"""Prometheus metrics of a beat replica (optional extra ``metrics``: ``prometheus-client``).

Enabled by ``fork_scheduler_metrics_port`` (0, the default, keeps them off). Exposed on that port
at ``/metrics``, on ``fork_scheduler_metrics_address`` (default ``127.0.0.1``: this host only;
the endpoint has no authentication):

- ``fork_scheduler_fires_total{entry}`` — slots published by this replica;
- ``fork_scheduler_skips_total{entry,reason}`` — due slots this replica did not publish;
- ``fork_scheduler_publish_failures_total{entry}`` — publishes that raised;
- ``fork_scheduler_dispatch_lag_seconds`` — publish time minus slot (histogram);
- ``fork_scheduler_claim_latency_seconds`` — one claim round trip (histogram);
- ``fork_scheduler_entries`` — entries this replica schedules.

Cardinality: the three counters keep one series per entry (and skip reason) that fired, was
skipped or failed on this replica; an entry's series go when the replica drops the entry.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timezone
from typing import Any

from . import signals
from .config import DEFAULTS
from .errors import ConfigError

LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The metrics of one replica, fed by the beat-side signals and the scheduler."""

    def __init__(self, registry: Any = None) -> None:
        try:
            import prometheus_client as prom
        except ImportError:
            raise ConfigError(
                "needs prometheus-client: pip install 'celery-fork-scheduler[metrics]'",
                field="fork_scheduler_metrics_port",
            ) from None
        self._prom = prom
        self.registry = registry if registry is not None else prom.CollectorRegistry()
        self.fires = prom.Counter(
            "fork_scheduler_fires", "Slots published", ["entry"], registry=self.registry
        )
        self.skips = prom.Counter(
            "fork_scheduler_skips",
            "Due slots not published by this replica",
            ["entry", "reason"],
            registry=self.registry,
        )
        self.failures = prom.Counter(
            "fork_scheduler_publish_failures",
            "Publishes that raised",
            ["entry"],
            registry=self.registry,
        )
        self.lag = prom.Histogram(
            "fork_scheduler_dispatch_lag_seconds",
            "Publish time minus slot",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.claim_latency = prom.Histogram(
            "fork_scheduler_claim_latency_seconds",
            "Claim round trip",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.entries = prom.Gauge(
            "fork_scheduler_entries", "Entries scheduled", registry=self.registry
        )
        self.address: str = DEFAULTS["metrics_address"]
        #: The skip reasons seen per entry, to drop their series with the entry.
        self._skip_reasons: dict[str, set[str]] = {}

    def connect(self, scheduler: Any) -> None:
        """Follow the beat-side signals sent by ``scheduler``; serve on its settings' address."""
        self.address = scheduler.settings.metrics_address
        signals.entry_dispatched.connect(self._on_dispatched, sender=scheduler, weak=False)
        signals.entry_skipped.connect(self._on_skipped, sender=scheduler, weak=False)
        signals.entry_failed.connect(self._on_failed, sender=scheduler, weak=False)

    def serve(self, port: int, address: str | None = None) -> None:
        """Expose ``/metrics`` on ``port`` of ``address`` (default: :attr:`address`)."""
        self._prom.start_http_server(port, addr=address or self.address, registry=self.registry)

    def forget(self, entry: str) -> None:
        """Drop the series of an entry the replica no longer schedules."""
        with contextlib.suppress(KeyError):  # older prometheus-client: no such series
            self.fires.remove(entry)
        with contextlib.suppress(KeyError):
            self.failures.remove(entry)
        for reason in self._skip_reasons.pop(entry, ()):
            self.skips.remove(entry, reason)

    def _on_dispatched(
        self, sender: Any = None, entry: str = "", slot: Any = None, **_: Any
    ) -> None:
        self.fires.labels(entry).inc()
        if isinstance(slot, datetime):
            self.lag.observe(max((datetime.now(timezone.utc) - slot).total_seconds(), 0.0))

    def _on_skipped(self, sender: Any = None, entry: str = "", reason: str = "", **_: Any) -> None:
        self._skip_reasons.setdefault(entry, set()).add(reason)
        self.skips.labels(entry, reason).inc()

    def _on_failed(self, sender: Any = None, entry: str = "", **_: Any) -> None:
        self.failures.labels(entry).inc()
