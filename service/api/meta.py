"""Unauthenticated endpoints: liveness and the OpenAPI document."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import current_app
from flask_openapi3 import APIBlueprint, Tag

from service import db
from service.api.common import json_of
from service.errors import ServiceUnavailable
from service.schemas import Alive, ErrorOut, Health

api = APIBlueprint("meta", __name__, abp_tags=[Tag(name="meta")])


@api.get("/livez", responses={200: Alive})
def livez() -> tuple[dict[str, Any], int]:
    """Liveness: the process answers. Touches no database, so it is also the baseline the
    HTTP benchmark compares decisions with."""
    return json_of(Alive(status="ok"))


@api.get("/healthz", responses={200: Health, 503: ErrorOut})
def healthz() -> tuple[dict[str, Any], int]:
    """Liveness and database reachability."""
    try:
        db.session().execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError:
        raise ServiceUnavailable("the database is unreachable", field="database") from None
    return json_of(Health(status="ok", database="ok"))


@api.get("/openapi.json", doc_ui=False)
def openapi() -> dict[str, Any]:
    return current_app.api_doc  # type: ignore[attr-defined]
