"""Unauthenticated endpoints: liveness and the OpenAPI document."""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

import sqlalchemy as sa
from flask import current_app
from flask_openapi3 import APIBlueprint, Tag

from service import db, write_health
from service import migrate as migrations
from service.api.common import AUTH_ERRORS, json_of
from service.errors import ServiceUnavailable
from service.schemas import Alive, Health

log = logging.getLogger(__name__)
api = APIBlueprint("meta", __name__, abp_tags=[Tag(name="meta")])


@api.get("/livez", responses={200: Alive})
def livez() -> tuple[dict[str, Any], int]:
    """Liveness: the process answers, without touching the database.
    That makes it the baseline the HTTP benchmark compares decisions with."""
    return json_of(Alive(status="ok"))


@api.get("/healthz", responses={200: Health, 503: AUTH_ERRORS[503]})
def healthz() -> tuple[dict[str, Any], int]:
    """Liveness, database reachability, migrations, and that the database may be written.
    On SQLite, also that this process's last writes did not fail for want of space."""
    try:
        db.session().execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError:
        raise ServiceUnavailable("the database is unreachable", field="database") from None
    settings = current_app.extensions["copybandit.settings"]
    problem = (
        _sqlite_write_problem(settings.database_url)
        if settings.is_sqlite
        else _postgres_write_problem()
    )
    if problem is None and settings.is_sqlite:
        problem = write_health.of_app().problem()
    if problem is not None:
        raise ServiceUnavailable(problem, field="database")
    # A database restored from an older backup, or an empty one the URL now names, answered
    # SELECT 1: /healthz said ok while every request failed with 500 on a missing table or column.
    pending = migrations.behind(db.session().connection())
    if pending is not None:
        log.warning("healthz: %s; run `copybandit migrate`", pending)
        raise ServiceUnavailable(
            "the database is not migrated to this version; run `copybandit migrate`",
            field="database",
        )
    return json_of(Health(status="ok", database="ok"))


def _sqlite_write_problem(url: str) -> str | None:
    """Why SQLite may not write the database file, as its permissions tell; None when it may.

    A file that reads but cannot be written (read-only, immutable, its folder closed to the
    write-ahead log's files) answered SELECT 1, so /healthz said ok while every write failed.
    Another process holding the write lock is not seen: taking the lock here would stall writers.
    """
    database = db.sqlite_file(url)
    if database is None:
        return None
    for path, what in ((database, "file"), (database.parent, "folder")):
        if not os.access(path, os.W_OK):
            # The path goes to the log only: /healthz answers without a key.
            log.warning("healthz: the database %s %s cannot be written", what, path)
            return f"the database {what} cannot be written"
    return None


def _postgres_write_problem() -> str | None:
    """Why PostgreSQL refuses this connection's writes; None when it takes them.

    A hot standby (where a failover left the URL pointing) or a database set
    default_transaction_read_only answered SELECT 1, so /healthz said ok while every decision
    failed.
    """
    read_only = db.session().execute(sa.text("SHOW transaction_read_only")).scalar_one()
    return "the database is read-only" if read_only == "on" else None


@api.get("/openapi.json", doc_ui=False)
def openapi() -> dict[str, Any]:
    return _without_default_validation_errors(current_app.api_doc)  # type: ignore[attr-defined]


def _without_default_validation_errors(spec: dict[str, Any]) -> dict[str, Any]:
    """flask-openapi3 documents a 400 in its own ValidationErrorModel on every operation that
    declares no 400. Validation errors here answer as ErrorOut, and every route that can give one
    declares it; the rest (/livez, /healthz) take nothing to validate and never answer 400."""
    trimmed = copy.deepcopy(spec)
    for operations in trimmed["paths"].values():
        for operation in operations.values():
            if "ValidationErrorModel" in str(operation["responses"].get("400")):
                del operation["responses"]["400"]
    trimmed["components"]["schemas"].pop("ValidationErrorModel", None)
    return trimmed
