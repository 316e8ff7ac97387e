"""celery-fork-scheduler in a Django project: the lines to add to ``settings.py``.

Django projects usually configure Celery from the Django settings, with every Celery setting
prefixed ``CELERY_``::

    app.config_from_object("django.conf:settings", namespace="CELERY")

Celery's own settings (broker, time zone, ``beat_schedule``, ``beat_scheduler``) reach Celery
that way, and so do the ``CELERY_FORK_SCHEDULER_*`` settings below: the scheduler reads them
directly (nothing to copy in ``celery.py``; see ``README.md`` next to this file).

This file is plain Python on purpose: ``tests/test_django_snippet.py`` loads it without Django.
"""

from __future__ import annotations

import os
from datetime import timedelta

from celery.schedules import crontab

from celery_fork_scheduler import cron, every

# -- Celery's own settings, namespaced as usual in Django ----------------------------------------

CELERY_BROKER_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
CELERY_TIMEZONE = "Europe/Berlin"  # usually the same as Django's TIME_ZONE
CELERY_BEAT_SCHEDULER = "fork"  # `celery -A proj beat` without `-S fork`

CELERY_BEAT_SCHEDULE = {
    # Celery's crontab, unchanged: 03:00 in the app's zone (Europe/Berlin)
    "purge-sessions": {
        "task": "shop.tasks.purge_sessions",
        "schedule": crontab(minute=0, hour=3),
    },
    # a timedelta: every 15 minutes, on :00, :15, :30, :45 (anchored at the Unix epoch)
    "sync-exchange-rates": {
        "task": "shop.tasks.sync_exchange_rates",
        "schedule": timedelta(minutes=15),
        "options": {"queue": "io"},
    },
    # the package's builder: every 30 seconds, never two runs at once across the cluster
    "poll-payments": {
        "task": "shop.tasks.poll_payments",
        "schedule": every(30).seconds,
        "singleton": True,
    },
    # a schedule string, in the app's zone
    "weekly-sales-report": {
        "task": "shop.tasks.sales_report",
        "schedule": "monday at 09:00",
        "kwargs": {"period": "week"},
        "tags": ["reports"],
    },
    # cron with a zone of its own: 09:30 New York time on weekdays
    "us-market-open": {
        "task": "shop.tasks.refresh_us_prices",
        "schedule": cron("30 9 * * mon-fri"),
        "timezone": "America/New_York",
        "tags": ["reports"],
    },
    # the last day of each month at 23:00; misses are all caught up
    "close-month": {
        "task": "shop.tasks.close_month",
        "schedule": "monthly on -1 at 23:00",
        "catchup": "all",
        "description": "books the month; every month must run once",
    },
}

# -- celery-fork-scheduler's settings (read directly, like CELERY_* ones) -------------------------

CELERY_FORK_SCHEDULER_KEY_PREFIX = "shop-scheduler:"
CELERY_FORK_SCHEDULER_CLAIM_LEASE = 15  # seconds, or a timedelta
CELERY_FORK_SCHEDULER_HISTORY_SIZE = 50
# CELERY_FORK_SCHEDULER_REDIS_URL = "rediss://:secret@redis.internal:6380/2"  # if the broker
#                                                    # is not Redis, or claims go elsewhere
