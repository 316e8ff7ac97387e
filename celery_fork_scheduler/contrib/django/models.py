"""An unmanaged model: no table, only what the admin needs to list a page, check permissions
(``view``, ``change``, ``delete``) and log actions. The entries themselves live in Redis and are
read through the Manager."""

from __future__ import annotations

from django.db import models


class ScheduleEntry(models.Model):
    """One entry of the Celery schedule, by name (never saved: ``managed = False``)."""

    name = models.CharField(primary_key=True, max_length=200)

    class Meta:
        managed = False
        verbose_name = "schedule entry"
        verbose_name_plural = "schedule entries"
        # view: see the page; change: pause, resume, trigger; delete: remove runtime entries.
        default_permissions = ("view", "change", "delete")

    def __str__(self) -> str:
        return str(self.name)
