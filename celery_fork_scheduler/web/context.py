"""What every request of one dashboard shares: the Manager, the configuration, the clock."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from flask import current_app

from ..manager import Manager
from .security import WebConfig

__all__ = ["Dashboard", "dashboard"]


@dataclass(frozen=True)
class Dashboard:
    """One dashboard: one Manager (one Redis connection pool) for every request."""

    manager: Manager
    config: WebConfig

    def now(self) -> datetime:
        return datetime.now(timezone.utc)


def dashboard() -> Dashboard:
    """The dashboard of the current request."""
    found: Dashboard = current_app.extensions["fork_scheduler"]
    return found
