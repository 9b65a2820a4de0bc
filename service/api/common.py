"""What every blueprint shares: the security requirement and the documented error responses."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from flask import current_app, g, request
from flask_openapi3 import APIBlueprint
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema
from werkzeug.routing import BaseConverter

from service.auth import require_key
from service.errors import UNAVAILABLE_RETRY_AFTER, RateLimited
from service.jsonbody import parse_json_body
from service.models import Scope
from service.query import refuse_repeated_parameters, refuse_unknown_parameters
from service.ratelimit import retry_after_header
from service.schemas import LOCATION_HEADER, ErrorOut

BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
# Documented on every authenticated endpoint, so clients (and the fuzzer) know the error shape.
# Each of them reads the key from the database, so each can find it unreachable.
# POSTs that read no body: `curl -X POST` alone does (a 415 asked for a JSON body of nothing).
TAKES_NO_BODY = {"experiments.cancel"}


def retry_later(when: str) -> dict[str, Any]:
    """An ErrorOut answer with its Retry-After header documented: a client generated from the
    document learned of the header only from the README. flask-openapi3 documents no headers for
    a model given alone, so the answer is written out."""
    return {
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}},
        "headers": {
            "Retry-After": {
                "description": f"seconds to wait before retrying: {when}",
                "required": True,
                "schema": {"type": "integer", "minimum": 1},
            }
        },
    }


AUTH_ERRORS: dict[int, Any] = {
    400: ErrorOut,
    401: ErrorOut,
    403: ErrorOut,
    404: ErrorOut,
    409: ErrorOut,
    413: ErrorOut,
    415: ErrorOut,
    # The database is unreachable: {"error": "unavailable"}, retry.
    503: retry_later(f"{UNAVAILABLE_RETRY_AFTER}, as the pool replaces a dropped connection"),
}


# ASCII digits, no leading zero, no plus; bounded so int() never meets Python's digit limit.
_CANONICAL_ID = re.compile(r"-?(0|[1-9][0-9]{0,99})")


class PathIdConverter(BaseConverter):
    """A path id (`<path_id:experiment_id>`): any segment, an int only when written canonically.

    werkzeug's int converter matches `\\d+`, so Arabic-Indic, full-width and other Unicode
    digits, and leading zeros, reached the row of their ASCII twin. Anything else stays a str
    here, which the strict path model refuses as a 400 naming the field; 0 and -1 reach its
    `>= 1` check, as an id that is too large reaches its upper bound.
    """

    def to_python(self, value: str) -> int | str:
        return int(value) if _CANONICAL_ID.fullmatch(value) else value


def with_etag(model: type[BaseModel]) -> dict[str, Any]:
    """A success answer in `model` with its ETag header documented (see retry_later)."""
    etag = {
        "ETag": {
            "description": "the state a PATCH can change, for its If-Match",
            "required": True,
            "schema": {"type": "string"},
        }
    }
    return _with_headers(model, etag)


def located(model: type[BaseModel]) -> dict[str, Any]:
    """A 201 in `model` with its Location header documented; `model` must be some other
    answer's too, which puts it in the components (JobAccepted documents its own)."""
    return _with_headers(model, LOCATION_HEADER)


def _with_headers(model: type[BaseModel], headers: dict[str, Any]) -> dict[str, Any]:
    return {
        "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
        },
        "headers": headers,
    }


class IfMatch(BaseModel):
    """The precondition a PATCH may carry."""

    model_config = ConfigDict(extra="ignore")

    # Documented as the string a header is; absent, the PATCH has no precondition.
    if_match: str | SkipJsonSchema[None] = Field(
        default=None,
        alias="If-Match",
        description=(
            "the ETag of the resource as last read: the change is refused (412, nothing stored) "
            "if it has changed since; without it, the last change wins"
        ),
    )


def etag_matches() -> Callable[[str], bool] | None:
    """The request's If-Match as a test of the resource's ETag; None when it has none."""
    if "If-Match" not in request.headers:
        return None
    return request.if_match.contains_raw


def preconditioned(model: type[BaseModel]) -> dict[Any, Any]:
    """A PATCH's documented answers: the resource with its new ETag, and the 412 of an If-Match
    naming an ETag it no longer has, besides every endpoint's errors."""
    return {**responses(_200=with_etag(model)), 412: ErrorOut}


def responses(*, rate_limited: bool = False, **ok: Any) -> dict[Any, Any]:
    """The endpoint's documented answers: its success, the errors every authenticated endpoint
    can give, and 429 where the key's request budget applies (decide and events only)."""
    limited = (
        {429: retry_later("until the key's request budget has room for one more")}
        if rate_limited
        else {}
    )
    return {
        **AUTH_ERRORS,
        **limited,
        **{int(code.lstrip("_")): model for code, model in ok.items()},
    }


def json_of(model: BaseModel, status: int = 200) -> tuple[dict[str, Any], int]:
    return model.model_dump(mode="json"), status


def settings() -> Any:
    return current_app.extensions["copybandit.settings"]


def guarded(blueprint: APIBlueprint, scope: Scope, *, rate_limited: bool = False) -> APIBlueprint:
    """Every route of `blueprint` checks the key (and, if `rate_limited`, its request budget),
    then the body, before validation sees it."""

    def guard() -> None:
        if request.method == "OPTIONS":
            # It reads only which methods the address takes, as public as the OpenAPI document:
            # no key to check, no request budget to spend.
            return
        require_key(scope)
        if rate_limited:
            wait = current_app.extensions["copybandit.ratelimit"].take(g.api_key_id)
            if wait > 0:
                raise RateLimited(
                    "too many requests for this API key; retry after the Retry-After seconds",
                    retry_after=retry_after_header(wait),
                )
        if request.method in ("GET", "HEAD"):
            # Where the query picks the answer; a storefront's cache-buster on a POST is let be.
            refuse_repeated_parameters()
            refuse_unknown_parameters()
        parse_json_body(optional=request.endpoint in TAKES_NO_BODY)

    blueprint.before_request(guard)
    return blueprint
