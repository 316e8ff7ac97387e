"""The schedule dashboard, ``celery -A proj schedule web`` (see ``docs/web.md``).

A small server-rendered Flask application over the :class:`~celery_fork_scheduler.Manager`,
served by waitress; it needs the ``web`` extra (``pip install 'celery-fork-scheduler[web]'``).

- :mod:`.app` builds the application and turns failures into answers;
- :mod:`.pages` and :mod:`.api` are the pages and the JSON API (the CLI's ``--json`` shapes);
- :mod:`.views` computes what the pages show, :mod:`.forms` reads the entry form;
- :mod:`.security` holds the token, the session, CSRF and the response headers;
- :mod:`.server` serves it.
"""

from __future__ import annotations

from .app import create_app
from .security import WebConfig
from .server import serve

__all__ = ["WebConfig", "create_app", "serve"]
