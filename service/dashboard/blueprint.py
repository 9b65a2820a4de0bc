"""The dashboard blueprint: HTML error pages, template helpers, and the shared form plumbing."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from typing import Any, SupportsFloat, TypeVar, cast

import sqlalchemy as sa
from flask import Blueprint, current_app, flash, g, get_flashed_messages, render_template, url_for
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import ClientDisconnected, HTTPException
from werkzeug.http import HTTP_STATUS_CODES

from service import db
from service.dashboard.session_auth import csrf_token, page_came_from, protect, typed_fields
from service.errors import (
    UNAVAILABLE_RETRY_AFTER,
    APIError,
    InvalidInput,
    body_cut_off,
    database_error,
    first_problem,
    over_the_limit,
    unexpected_error,
)
from service.models import MAX_DB_ID

bp = Blueprint(
    "dashboard",
    __name__,
    url_prefix="/dashboard",
    template_folder="templates",
    static_folder="static",
)
protect(bp)

Model = TypeVar("Model", bound=BaseModel)


def validated(model: type[Model], data: dict[str, Any]) -> Model:
    """`data` as `model`, or a 400 naming the first field that is wrong (same rules as the API)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, field = first_problem(exc)
        raise InvalidInput(message, field=field) from None


def form_int(name: str, text: str, *, low: int = 1, high: int = MAX_DB_ID) -> int:
    """A form field as an int in [low, high], or a 400 naming it. ASCII digits only: str.isdigit
    accepts '²', which int() then refuses."""
    text = text.strip()
    # Long digit strings first: int() refuses more than 4,300 digits with an error (a 500).
    if len(text) > len(str(high)) or not (text.isascii() and text.isdecimal()):
        raise InvalidInput(f"{name}: must be a whole number from {low} to {high}", field=name)
    if not low <= int(text) <= high:
        raise InvalidInput(f"{name}: must be a whole number from {low} to {high}", field=name)
    return int(text)


def invalidate(experiment_id: int) -> None:
    """Workers serve from a cached posterior; a status change must reach this one at once."""
    current_app.extensions["copybandit.snapshots"].invalidate(experiment_id)


# A flash about one segment's copy carries the segment's id in its category ("message:segment-12"):
# the experiment page shows it in that segment's section, where the action's redirect lands
# (#segment-key). At the top of the page it was out of view, 1,900 px above the third segment.
# Any other page, or one without that segment's section, shows it at the top with the rest.
_ABOUT_SEGMENT = ":segment-"


def flash_about_segment(message: str, segment_id: int, kind: str = "message") -> None:
    """`kind`: "message", or "error" for an action refused."""
    flash(message, f"{kind}{_ABOUT_SEGMENT}{segment_id}")


@dataclass(frozen=True)
class Flash:
    # "message" or "error": the class it is drawn with.
    kind: str
    message: str
    segment_id: int | None


def _flashes() -> list[Flash]:
    # Flask keeps a request's messages once they are read, so every call here sees them all.
    found = []
    messages = cast(list[tuple[str, str]], get_flashed_messages(with_categories=True))
    for category, message in messages:
        kind, _, segment = category.partition(_ABOUT_SEGMENT)
        found.append(Flash(kind, message, int(segment) if segment.isdecimal() else None))
    return found


@bp.app_template_global()
def flashes_at_top(sections: Collection[int] = ()) -> list[Flash]:
    """The messages a page shows at its top: all but those about a segment whose section (by id)
    the page shows them in."""
    return [found for found in _flashes() if found.segment_id not in sections]


@bp.app_template_global()
def flashes_about(segment_id: int) -> list[Flash]:
    return [found for found in _flashes() if found.segment_id == segment_id]


@bp.app_template_filter("when")
def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value is not None else ""


@bp.app_template_filter("pct")
def _pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}%"


@bp.app_template_filter("pct_down")
def _pct_down(value: SupportsFloat | None, digits: int = 1) -> str:
    """A probability the lifecycle compares with a threshold, rounded down: rounded to nearest,
    0.94996 read "95.0%; no winner declared yet" beside declare_at 0.95, 0.04996 read 5.0% for a
    variant retired below 5%, and 0.99996 read 100.0%. Rounded down, a shown figure at or over a
    threshold (on the shown grid) means the value is too, and one under it means it is under."""
    if value is None:
        return "-"
    # Through the shortest decimal that reads back as the number: 0.29 * 100 is 28.999999999999996.
    shown = (_shortest_decimal(value) * 100).quantize(
        Decimal(1).scaleb(-digits), rounding=ROUND_FLOOR
    )
    return f"{shown}%"


def _shortest_decimal(value: SupportsFloat) -> Decimal:
    """`value` as the shortest decimal that reads back as it, for a float of any width.

    A float's str is that decimal, and so is a numpy float's (np.float32(0.29) is "0.29"), whose
    repr is not: "np.float64(0.29)" was an InvalidOperation, a 500 for the page."""
    try:
        return Decimal(str(value))
    except InvalidOperation:
        # Written some other way, as a Fraction's "1/3" is.
        return Decimal(repr(float(value)))


@bp.app_template_filter("audit_value")
def _audit_value(value: object) -> str:
    """One of an audit row's numbers as GET /v1/experiments/<id>/audit writes it: the page showed
    Python's spelling, `informed_priors=True` and `fields=['auto_approve']`, to a marketer who
    reads the API's `true` and `["auto_approve"]` for the same row."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


@bp.app_template_filter("status_phrase")
def _status_phrase(status: int) -> str:
    """An error page's status in words, as a sentence starts: 'Not found' for 404."""
    return HTTP_STATUS_CODES.get(status, "Error").capitalize()


@bp.app_context_processor
def _helpers() -> dict[str, Callable[..., Any]]:
    return {"csrf_token": csrf_token, "came_from": _came_from}


def _came_from() -> str:
    # By host, as the sign-in link does: behind a TLS proxy the Referer's scheme is not ours.
    return page_came_from(url_for("dashboard.experiments"))


@bp.errorhandler(APIError)
def _api_error(exc: APIError) -> tuple[str, int, dict[str, str]]:
    db.roll_back()  # the connection may be as dead as the one that failed
    return error_page(exc)


def error_page(
    exc: APIError,
    now_stored: Collection[tuple[str, str]] = (),
    unsaved: Collection[tuple[str, str]] | None = None,
) -> tuple[str, int, dict[str, str]]:
    """The error page for a refused request. `now_stored`, (label, text) pairs: what is stored now
    where the form was refused for being drawn from something changed since, shown beside what
    was typed, so the marketer can merge the two. `unsaved`, the same: what of the typed text
    was not saved, where some of the form's boxes were."""
    # A refused form shows what was typed into it: the "Go back" link, and reloading the form's
    # page, find it empty. Only once its CSRF token passed, so the text is the marketer's own: a
    # database failure can come before the check.
    if unsaved is not None:
        typed = list(unsaved)
    else:
        typed = typed_fields() if g.get("form_is_ours") else []
    page = render_template(
        "error.html",
        status=exc.status,
        message=exc.message,
        unsaved_fields=typed,
        now_stored=now_stored,
    )
    headers = {"Retry-After": UNAVAILABLE_RETRY_AFTER} if exc.status == 503 else {}
    return page, exc.status, headers


# The app's handlers answer these in JSON, which a marketer's browser showed as raw text: a lock
# held past its wait, a lost database or a bug gets the pages' own error page, the text typed
# into a form included.
@bp.errorhandler(sa.exc.DBAPIError)
def _database_error(exc: sa.exc.DBAPIError) -> tuple[str, int, dict[str, str]]:
    return _api_error(database_error(exc))


@bp.errorhandler(Exception)
def _unexpected(exc: Exception) -> tuple[str, int, dict[str, str]]:
    return _api_error(unexpected_error(exc))


@bp.errorhandler(ClientDisconnected)
def _cut_off(exc: ClientDisconnected) -> tuple[str, int, dict[str, str]]:
    return _api_error(body_cut_off())


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> tuple[str, int]:
    status = exc.code or 500
    # werkzeug's "exceeds the capacity limit" named neither the limit nor how to raise it, which
    # a review queue of many lines reaches (every button sends every line's text).
    message = (status == 413 and over_the_limit()) or exc.description
    return render_template("error.html", status=status, message=message), status
