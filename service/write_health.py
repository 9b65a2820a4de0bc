"""Whether this process's last writes to a SQLite database failed for want of space, or because
the file had become read-only, as /healthz reports it.

With the disk full, SELECT 1 still answered and the file's permissions still allowed writing, so
/healthz said ok while every decision and event answered 503. Nothing here writes: the state
comes from the writes requests made anyway. A write that fails that way marks it; a decision or
a creation that succeeds, having stored its row, clears it; and it lapses HOLD_SECONDS after the
last failure, so that a server a load balancer took out of service, which then has no writes to
succeed with, is tried again.

PostgreSQL is left out: every server shares its one database, so a full disk there would take
them all out of service at once, which helps no one; its errors are logged, one line each.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import sqlalchemy as sa
from flask import Flask, Response, current_app, request

# SQLite's primary result codes for "database or disk is full" (a full disk, a quota,
# max_page_count) and "attempt to write a readonly database" (a file or mount made read-only
# under a running server).
_SQLITE_FULL, _SQLITE_READONLY = 13, 8
HOLD_SECONDS = 30.0


class WriteHealth:
    """Per process: each gunicorn worker keeps its own, from the writes it made."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._failed: tuple[str, float] | None = None

    def met(self, exc: sa.exc.DBAPIError) -> None:
        """Note `exc` if it says the database cannot take writes."""
        code = getattr(exc.orig, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in (_SQLITE_FULL, _SQLITE_READONLY):
            with self._lock:
                self._failed = (str(exc.orig), self._clock())

    def succeeded(self) -> None:
        if self._failed is not None:
            with self._lock:
                self._failed = None

    def problem(self) -> str | None:
        """Why writes are failing, or None."""
        with self._lock:
            if self._failed is None:
                return None
            reason, at = self._failed
            if self._clock() - at >= HOLD_SECONDS:
                self._failed = None
                return None
        return f"the last write failed: {reason}"


def of_app() -> WriteHealth:
    return current_app.extensions["copybandit.write_health"]


def init_app(app: Flask) -> None:
    app.extensions["copybandit.write_health"] = WriteHealth()
    app.after_request(_cleared_by_a_write)


def _cleared_by_a_write(response: Response) -> Response:
    # Only answers that always stored a row: a decision's impression, or something created (201).
    # An events batch answers 200 with every event rejected or a duplicate, and a PATCH that
    # changes nothing 200, having written nothing: on a full disk one of those said ok again.
    stored = response.status_code == 201 or (
        response.status_code == 200 and request.path == "/v1/decide"
    )
    if stored and request.method == "POST" and request.path.startswith("/v1/"):
        of_app().succeeded()
    return response
