"""The Django app of the schedule admin page."""

from __future__ import annotations

from django.apps import AppConfig


class ForkSchedulerAdminConfig(AppConfig):
    """``celery_fork_scheduler.contrib.django``, labelled ``fork_scheduler`` (its permissions
    are ``fork_scheduler.view_scheduleentry``, ``change_...`` and ``delete_...``)."""

    name = "celery_fork_scheduler.contrib.django"
    label = "fork_scheduler"
    verbose_name = "Celery schedule"
    default_auto_field = "django.db.models.AutoField"
