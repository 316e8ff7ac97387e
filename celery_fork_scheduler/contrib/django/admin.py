"""The *Schedule entries* admin page: registered with Django's default admin site by the admin's
autodiscovery; register :class:`ScheduleEntryAdmin` with a custom ``AdminSite`` the same way.

Pages (inside the admin site, so staff only, and CSRF-protected by ``admin_view``):

- ``<admin>/fork_scheduler/scheduleentry/``: every entry with its next fire and last outcome;
  search, filters, actions on the selected entries or on a tag (``view`` permission to see).
- ``<admin>/fork_scheduler/scheduleentry/<name>/change/``: one entry: next fires, history,
  counters, definition, its actions.
- ``<admin>/fork_scheduler/scheduleentry/action/``: the actions, POST only (``change``
  permission to pause, resume and trigger; ``delete`` to remove).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.template.response import TemplateResponse
from django.urls import Resolver404, path, resolve, reverse
from django.utils.http import url_has_allowed_host_and_scheme

from ...backends.redis_connection import scrub_secrets
from ...manager import JobNotFoundError
from . import entries
from .models import ScheduleEntry

_LEVELS = {"success": messages.SUCCESS, "warning": messages.WARNING, "error": messages.ERROR}


class ScheduleEntryAdmin(admin.ModelAdmin):
    """The schedule, read and steered through the Manager of the configured Celery app
    (``FORK_SCHEDULER_ADMIN_APP``, else Celery's current app)."""

    def get_manager(self) -> Any:
        """The Manager the page uses; override to give another one."""
        return entries.manager_of(getattr(settings, entries.APP_SETTING, None))

    # -- permissions: the page never adds entries ---------------------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    # -- urls ---------------------------------------------------------------------------------

    def get_urls(self) -> list[Any]:
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        wrap = self.admin_site.admin_view
        return [
            path("", wrap(self.changelist_view), name=f"{prefix}_changelist"),
            path("action/", wrap(self.action_view), name=f"{prefix}_action"),
            path("<path:object_id>/change/", wrap(self.entry_view), name=f"{prefix}_change"),
        ]

    def _url(self, what: str, *args: str) -> str:
        name = f"admin:{self.opts.app_label}_{self.opts.model_name}_{what}"
        url: str = reverse(name, args=args, current_app=self.admin_site.name)
        return url

    def entry_url(self, name: str) -> str:
        return self._url("change", quote(name))

    # -- views --------------------------------------------------------------------------------

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        search = request.GET.get("q", "")
        tag = request.GET.get("tag", "")
        state = request.GET.get("state", "")
        jobs: list[Any] = []
        problems: list[str] = []
        try:
            manager = self.get_manager()
            jobs = manager.jobs()
            problems += [
                f"runtime entry {name!r} cannot be read: {scrub_secrets(why)}"
                for name, why in sorted(manager.unreadable().items())
            ]
        except entries.EXPECTED_ERRORS as exc:
            problems.append(entries.error_text(exc))
        shown = entries.select(jobs, search=search, tag=tag, state=state)
        all_tags = sorted({tag for job in jobs for tag in job.tags})
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Schedule entries",
            "subtitle": None,
            "rows": [(row, self.entry_url(row.name)) for row in entries.rows(shown)],
            "total": len(jobs),
            "problems": problems,
            "search": search,
            "tag": tag,
            "state": state,
            "all_tags": all_tags,
            "state_links": _links(request, "state", ["", *entries.STATES], state),
            "tag_links": _links(request, "tag", ["", *all_tags], tag),
            "actions": self._allowed_actions(request),
            "action_url": self._url("action"),
            "here": request.get_full_path(),
            **(extra_context or {}),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "fork_scheduler/entries.html", context)

    def entry_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        name = unquote(object_id)
        try:
            detail = entries.detail(self.get_manager(), name)
        except JobNotFoundError as exc:
            self.message_user(request, entries.error_text(exc), messages.ERROR)
            return HttpResponseRedirect(self._url("changelist"))
        except entries.EXPECTED_ERRORS as exc:
            self.message_user(request, entries.error_text(exc), messages.ERROR)
            return HttpResponseRedirect(self._url("changelist"))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": name,
            "subtitle": None,
            "detail": detail,
            "row": detail.row,
            "actions": self._allowed_actions(request),
            "action_url": self._url("action"),
            "here": request.get_full_path(),
            "changelist_url": self._url("changelist"),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "fork_scheduler/entry.html", context)

    def action_view(self, request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        action = request.POST.get("action", "")
        needed = entries.ACTION_PERMISSION.get(action, "change")
        allowed = (
            self.has_delete_permission(request)
            if needed == "delete"
            else self.has_change_permission(request)
        )
        if not allowed:
            raise PermissionDenied
        names = request.POST.getlist("names") if request.POST.get("scope") != "tag" else []
        tag = request.POST.get("tag", "") if request.POST.get("scope") == "tag" else ""
        try:
            manager = self.get_manager()
        except entries.EXPECTED_ERRORS as exc:
            outcomes = [entries.Outcome("error", entries.error_text(exc))]
        else:
            outcomes = entries.run_action(
                manager, action, names=names, tag=tag, note=request.POST.get("note", "")
            )
        for outcome in outcomes:
            self.message_user(request, outcome.message, _LEVELS[outcome.level])
            for name in outcome.names:
                self.log_change(request, ScheduleEntry(name=name), outcome.message[:1000])
        back = request.POST.get("next", "")
        if not url_has_allowed_host_and_scheme(
            back, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        ) or (action == "remove" and self._is_entry_page(back)):
            back = ""  # elsewhere, or the page of an entry just removed
        return HttpResponseRedirect(back or self._url("changelist"))

    def _is_entry_page(self, url: str) -> bool:
        try:
            match = resolve(urlsplit(url).path)
        except Resolver404:
            return False
        return bool(match.url_name and match.url_name.endswith("_change"))

    def _allowed_actions(self, request: HttpRequest) -> list[tuple[str, str]]:
        change = self.has_change_permission(request)
        delete = self.has_delete_permission(request)
        return [
            (key, label)
            for key, label in entries.ACTIONS.items()
            if (delete if entries.ACTION_PERMISSION[key] == "delete" else change)
        ]


admin.site.register(ScheduleEntry, ScheduleEntryAdmin)


def _links(request: HttpRequest, key: str, values: list[str], current: str) -> list[Any]:
    """The filter links for ``key``: (label, query string, selected), ``""`` being "All"."""
    links = []
    for value in values:
        query = request.GET.copy()
        query.pop(key, None)
        if value:
            query[key] = value
        links.append((value or "All", "?" + query.urlencode(), value == current))
    return links
