"""Who may change the schedule through the dashboard, and what every response carries.

- Writes need the token. The JSON API reads it from ``Authorization: Bearer <token>`` on each
  request (no cookie is ever accepted there, so another site cannot make a browser write);
  the pages ask for it once (``/login``) and keep a signed session cookie (``HttpOnly``,
  ``SameSite=Strict``, signed with a key made at start, so a restart logs everyone out).
- Every form posts a CSRF token bound to the session; a form without it is refused.
- Without a token, or with ``--read-only``, every write is refused and no form is shown.
- Bound to a loopback address, only a loopback ``Host`` header is served (a DNS-rebinding page
  cannot read the schedule through the browser).
- Every response forbids scripts from anywhere, framing and referrers; the pages need none.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, abort, request, session

__all__ = [
    "WebConfig",
    "bearer_ok",
    "check_csrf",
    "csrf_token",
    "install",
    "is_loopback",
    "log_in",
    "log_out",
    "logged_in",
]

#: The names a loopback server answers to.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
#: The form field that carries the CSRF token.
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True, kw_only=True)
class WebConfig:
    """How one dashboard runs: its token (``None``: no writes), read-only or not, the host it
    is bound to, the key its session cookies are signed with."""

    token: str | None = None
    read_only: bool = False
    host: str = "127.0.0.1"
    secret_key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    @property
    def writable(self) -> bool:
        """True when writes are possible at all (a token, and not ``--read-only``)."""
        return self.token is not None and not self.read_only

    @property
    def why_read_only(self) -> str:
        """Why writes are refused (when they are)."""
        if self.read_only:
            return "this dashboard is read-only (--read-only)"
        return "this dashboard is read-only: no token is set (--token or fork_scheduler_web_token)"

    def __repr__(self) -> str:  # never the token
        return f"WebConfig(read_only={self.read_only}, host={self.host!r})"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and any loopback IP address."""
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The name of a ``Host`` header, without its port (``[::1]:8555`` -> ``::1``)."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())


def bearer_ok(config: WebConfig) -> bool:
    """True when the request carries ``Authorization: Bearer <the token>``."""
    if config.token is None:
        return False
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and _same(given.strip(), config.token)


def csrf_token() -> str:
    """The session's CSRF token (made on first use)."""
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def check_csrf() -> None:
    """Refuse (403) a form post whose CSRF token is not the session's."""
    given = request.form.get(CSRF_FIELD, "")
    expected = session.get("csrf")
    if not isinstance(expected, str) or not given or not _same(given, expected):
        abort(403, "the form expired or did not come from this dashboard: reload it and retry")


def logged_in(config: WebConfig) -> bool:
    """True when this browser gave the token (and writes are possible)."""
    return config.writable and session.get("auth") is True


def log_in(config: WebConfig, given: str) -> bool:
    """Start a writing session when ``given`` is the token; a new CSRF token either way."""
    ok = config.writable and config.token is not None and _same(given, config.token)
    session.clear()
    if ok:
        session["auth"] = True
    csrf_token()
    return ok


def log_out() -> None:
    session.clear()


def install(app: Flask, config: WebConfig) -> None:
    """Session cookie settings, the ``Host`` check and the headers of every response."""
    app.secret_key = config.secret_key
    app.config.update(
        SESSION_COOKIE_NAME="fork_scheduler_web",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        MAX_CONTENT_LENGTH=1_048_576,
    )
    loopback = is_loopback(config.host)

    @app.before_request
    def _check_host() -> Any:
        if loopback and not is_loopback(_host_name(request.host)):
            abort(400, "this dashboard answers to localhost only")
        return None

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'self'; img-src 'self' data:; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response
