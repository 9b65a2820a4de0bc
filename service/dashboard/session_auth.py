"""Who is signed in, CSRF tokens, and the headers every dashboard response carries.

Flask's signed session cookie carries a random session token and the CSRF token. The token names a
row in `marketer_session`, so signing out, or changing the password (`copybandit users
set-password`), ends the session on the server, not only in this browser.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    current_app,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.wrappers import Response

from service import db
from service.experiments import text_version
from service.jsonbody import refuse_a_body_cut_short, refuse_an_unsized_body_over_the_limit
from service.marketers import close_session, open_session, session_owner
from service.models import Marketer
from service.schemas import stored_form

# Pages may load only the app's own stylesheet; no script runs, no other site may frame them.
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
# A running job's page alone runs a script: the app's own static/job.js (never an inline one),
# which asks this origin for the job's progress (connect-src). Set g.runs_script for it.
SCRIPTED_CSP = f"{CSP}; script-src 'self'; connect-src 'self'"
# Open without a live sign-in. Signing out too: after the session expired, or a password change
# ended it, its button should still lead to the sign-in page, not to "sign in first".
_PUBLIC_ENDPOINTS = {"dashboard.sign_in", "dashboard.sign_out", "dashboard.static"}
_FORM_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# The boxes a marketer types into, by the label their form gives them. Only these are shown back
# after the sign-in ran out: a field's name is the poster's to choose, and any site can post here.
_TYPED_FIELDS = {
    "text": "Copy",
    "name": "Experiment name",
    "product_name": "Product name",
    "product_description": "Product description",
    "price": "Price",
    "product_url": "Product URL",
    "brand_voice": "Brand voice",
    "segments": "Segments",
    "key": "Segment key",
    "description": "Segment description",
}


def start_session(marketer: Marketer) -> bool:
    """Sign the browser in as `marketer`; False when the account was removed meanwhile."""
    lifetime = current_app.permanent_session_lifetime
    # Signing in while signed in (as someone else, or again) ends the session from before on the
    # server too: left alive, any copy of the old cookie stayed signed in until it expired.
    before = session.get("token")
    token = open_session(
        session=db.session(),
        marketer=marketer,
        lifetime=lifetime,
        replacing=before if isinstance(before, str) else None,
    )
    if token is None:
        return False
    # A fresh session on sign-in: nothing set before it (a planted token, an old CSRF token)
    # carries over.
    session.clear()
    session.permanent = True
    session["token"] = token
    session["csrf"] = secrets.token_urlsafe(32)
    return True


def end_session() -> None:
    token = session.get("token")
    if isinstance(token, str):
        close_session(session=db.session(), token=token)
    session.clear()


def current_marketer() -> Marketer | None:
    token = session.get("token")
    if not isinstance(token, str):
        return None
    return session_owner(session=db.session(), token=token)


def csrf_token() -> str:
    token = session.get("csrf")
    if not isinstance(token, str):
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def safe_next(target: str | None, default: str) -> str:
    """`target` if it is a path inside the dashboard, else `default`: no open redirects."""
    # A control character cannot go into a Location header (a newline there would split it):
    # werkzeug refuses it with an error, after the form's change was already stored.
    if not target or any(ord(char) < 0x20 or ord(char) == 0x7F for char in target):
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/dashboard/"):
        return default
    return target


def protect(bp: Blueprint) -> None:
    @bp.before_request
    def _require_sign_in() -> Response | tuple[str, int] | None:
        if request.method == "OPTIONS":
            # Flask answers it with the methods the address takes, and nothing else, as the API
            # does without a key; signed out it was "Your sign-in ran out; nothing was saved".
            return None
        if request.method in _FORM_METHODS:
            # Before anything reads request.form, which would hold only the first MiB of it.
            refuse_an_unsized_body_over_the_limit()
            refuse_a_body_cut_short()
        if request.endpoint == "dashboard.sign_out" and not isinstance(session.get("token"), str):
            # Signed out already (in another tab, say): the CSRF token went with the session, and
            # there is nothing left for a forged sign-out to end.
            return redirect(url_for("dashboard.sign_in"), code=303)
        if request.endpoint not in _PUBLIC_ENDPOINTS:
            g.marketer = current_marketer()
            if g.marketer is None:
                # HEAD is a GET without the body (link checkers, curl -I): the same redirect.
                if request.method in ("GET", "HEAD"):
                    return redirect(
                        url_for("dashboard.sign_in", next=request.full_path.rstrip("?"))
                    )
                # Before the CSRF check: a sign-in that ran out while the cookie did too would be
                # "this form has expired", and the text typed into it lost just the same.
                return _signed_out_form()
            # The header's name as text: an error page is drawn after a rollback, which expires
            # g.marketer, and reading it again would need the database that may have just failed.
            g.signed_in_as = g.marketer.email
        if request.method in _FORM_METHODS:
            sent = request.form.get("csrf_token", "")
            expected = session.get("csrf")
            # As bytes: compare_digest refuses str with non-ASCII characters (TypeError, a 500).
            if not isinstance(expected, str) or not hmac.compare_digest(
                sent.encode(), expected.encode()
            ):
                return _expired_form()
            g.form_is_ours = True
        return None

    bp.after_request(page_headers)


def _signed_out_form() -> tuple[str, int]:
    """The sign-in ran out while the marketer filled in a form. Nothing is stored; the page shows
    what they typed, read-only, since the form's own page is no-store and going back to it after
    signing in finds it empty."""
    # SameSite=Lax leaves the cookie off every cross-site POST, so another site's form lands here
    # as "signed out": showing its text would put that site's words on the dashboard's page.
    page = render_template(
        "error.html",
        status=401,
        message="Your sign-in ran out; nothing was saved. Copy what you typed, then sign in again.",
        unsaved_fields=typed_back(),
        sign_in_url=url_for("dashboard.sign_in", next=_form_page()),
    )
    return page, 401


def _expired_form() -> tuple[str, int]:
    """The form's CSRF token is not this session's: signing in again (in another tab, say) made a
    new one after the page was drawn. Nothing is stored, and, as for a sign-in that ran out, the
    page shows what was typed: reloading the form's page, as it says to, empties the form."""
    page = render_template(
        "error.html",
        status=400,
        message="this form has expired; reload the page and try again",
        unsaved_fields=typed_back(),
    )
    return page, 400


def typed_back() -> list[tuple[str, str]]:
    """The boxes a marketer typed into, to show on the page that refuses their form; none for a
    form the browser does not say came from the dashboard, whose words are not ours to show."""
    return typed_fields() if _same_origin() else []


def typed_fields() -> list[tuple[str, str]]:
    """What was typed into the form's boxes, under their labels."""
    return [
        (label, value)
        for name, label in _TYPED_FIELDS.items()
        for value in request.form.getlist(name)
        if value.strip()
    ] + _review_edits()


def _review_edits() -> list[tuple[str, str]]:
    """The review page's boxes that were edited: it sends one a row, and those left as shown
    hold nothing typed."""
    edits = []
    for name in request.form:
        variant_id = name.removeprefix("text-")
        if variant_id != name and (typed := review_edit(variant_id)) is not None:
            edits.append((f"Copy #{variant_id}", typed))
    return edits


def review_edit(variant_id: int | str) -> str | None:
    """What was typed into the review page's box of `variant_id` (`text-<id>`) where it is not
    the text the page showed (`shown-<id>`, that text's version); None where the box was left
    as it was, or not sent."""
    return edited_text(
        request.form.get(f"text-{variant_id}"), request.form.get(f"shown-{variant_id}")
    )


def edited_text(typed: str | None, shown: str | None) -> str | None:
    """`typed`, where it is not the text whose version is `shown`; None where it was left as it
    was, or not sent."""
    if typed is None:
        return None
    # A browser sends the box's line breaks as CRLF. Read as typed too: a row stored before text
    # was stored in its stored_form (a trailing space, say) read as edited, and its approval
    # rewrote it "after editing".
    as_sent = (typed, typed.replace("\r\n", "\n"), stored_form(typed))
    if any(text_version(text) == shown for text in as_sent):
        return None
    return typed


def _same_origin() -> bool:
    """Whether the browser says the form came from the dashboard's own pages."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        return fetch_site == "same-origin"
    source = request.headers.get("Origin") or request.referrer or ""
    return _same_host(source)


def _same_host(url: str) -> bool:
    # By host alone: behind a TLS proxy the app sees http:// while the browser sent https://.
    return urlsplit(url).netloc == request.host


def _form_page() -> str:
    """The page the form was on, to return to once signed in again."""
    return page_came_from(safe_next(request.form.get("next"), url_for("dashboard.experiments")))


def page_came_from(default: str) -> str:
    """The dashboard page this request came from (its Referer, on this host), else `default`."""
    referrer = request.referrer or ""
    if not _same_host(referrer):
        return default
    parts = urlsplit(referrer)
    return safe_next(parts.path + (f"?{parts.query}" if parts.query else ""), default)


def page_headers(response: Response) -> Response:
    """What every dashboard response carries."""
    response.headers["Content-Security-Policy"] = SCRIPTED_CSP if g.get("runs_script") else CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    if request.endpoint != "dashboard.static":
        # Pages show private numbers; no shared cache or back-button cache after sign-out.
        response.headers["Cache-Control"] = "no-store"
    return response
