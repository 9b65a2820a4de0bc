"""The marketer dashboard: server-rendered pages behind a password sign-in.

It is a separate door from the API: pages read only the session cookie, the API reads only the
`Authorization` header, so an API key never opens a page and a signed-in browser never calls the
API. Every form carries a per-session CSRF token, and every page is sent with a strict CSP.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Flask, Request, make_response, redirect, render_template, request, url_for
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from werkzeug.exceptions import HTTPException
from werkzeug.routing import IntegerConverter
from werkzeug.wrappers import Response

from service import errors
from service.config import Settings
from service.dashboard import account_pages, brief_pages, experiment_pages, review_pages
from service.dashboard.blueprint import bp
from service.dashboard.session_auth import page_headers
from service.dashboard.sign_in_limits import SignInLimits
from service.models import MAX_DB_ID

# Imported for their routes, which they attach to `bp`.
_PAGES = (account_pages, brief_pages, experiment_pages, review_pages)


class DashboardOnlySessions(SecureCookieSessionInterface):
    """The signed-cookie session, opened only for dashboard pages: API requests never read a
    cookie (the API authenticates by key alone) and skip the cost of looking for one."""

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if not request.path.startswith("/dashboard/"):
            return self.make_null_session(app)
        return super().open_session(app, request)


class DbIdConverter(IntegerConverter):
    # ASCII digits without a leading zero: the int converter's \d+ also took Arabic-Indic,
    # full-width and other Unicode digits, and "01", and read each as the id it spelled.
    regex = r"[1-9][0-9]*"

    def __init__(self, map: Any) -> None:
        super().__init__(map, min=1, max=MAX_DB_ID)


def register(app: Flask, settings: Settings) -> None:
    app.config.update(
        SESSION_COOKIE_NAME="copybandit_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        # Production is expected behind TLS; a Secure cookie would never be sent over plain HTTP.
        SESSION_COOKIE_SECURE=settings.env == "production",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.dashboard_session_hours),
    )
    app.session_interface = DashboardOnlySessions()
    app.extensions["copybandit.sign_in_limits"] = SignInLimits()
    # Ids are 32-bit in the database: a larger one in a URL is a 404, never a database error.
    app.url_map.converters["id"] = DbIdConverter
    app.register_blueprint(bp)

    # A plain Flask rule: the OpenAPI app's own decorators would document it as part of the API.
    app.add_url_rule("/", "home", _home)
    # Browsers ask for it with every page they have not cached it for: a JSON 404 each time,
    # counted among the 404s a scrape alerts on. No icon, and a day before asking again.
    app.add_url_rule("/favicon.ico", "favicon", _no_icon)
    # No route matched, so no blueprint handler or header hook runs: a mistyped dashboard address
    # got the API's JSON error, without the pages' headers.
    for status in (404, 405):
        app.register_error_handler(status, _unrouted)


def _unrouted(exc: HTTPException) -> Response:
    if not request.path.startswith(f"{bp.url_prefix}/"):
        return errors.http_error(exc)
    page = render_template("error.html", status=exc.code, message=exc.description)
    return page_headers(errors.with_allow_header(make_response(page, exc.code), exc))


def _no_icon() -> Response:
    response = make_response("", 204)
    response.headers["Cache-Control"] = "max-age=86400"
    return response


def _home() -> Response:
    return redirect(url_for("dashboard.experiments"))
