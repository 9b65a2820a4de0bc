"""One error family, one JSON shape: {"error": code, "message": text, "field"?: name}."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, NamedTuple

import sqlalchemy as sa
from flask import Flask, Response, current_app, jsonify, request
from pydantic import ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError
from werkzeug.exceptions import ClientDisconnected, HTTPException, MethodNotAllowed

from service import db, write_health

log = logging.getLogger(__name__)

# Werkzeug's status codes mapped to stable, machine-readable codes for clients to branch on.
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    412: "precondition_failed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    # Only gunicorn gives these, for a request it could not parse (service/gunicorn.py).
    414: "uri_too_long",
    417: "expectation_failed",
    431: "request_header_fields_too_large",
    500: "internal",
    501: "not_implemented",
}
# The part of the request a refusal by status alone is about: an address no route has, a method it
# does not take, a body over the size limit (werkzeug's), a request line or header too long
# (gunicorn's, service/gunicorn.py). Clients branch on `field` as they do for every other 4xx.
FIELDS_AT_FAULT = {404: "url", 405: "method", 413: "body", 414: "url", 431: "headers"}


# Seconds a 503's client is told to wait (Retry-After): the pool replaces a dropped connection at
# once, and a lock held past the 10 s wait is rarely free a moment later.
UNAVAILABLE_RETRY_AFTER = "5"


def quoted(text: str) -> str:
    """`text` in quotes for a message people read, with each character that shows nothing or is
    not text (an RLM, a no-break space, a newline) written as its code point in brackets,
    [U+200F]. repr() wrote one as \\u200f, which the dashboard's page showed as those six
    characters, and a name holding both quote marks with a backslash before one of them."""
    return f"'{spelled_out(text)}'"


def cut(text: str, at_most: int) -> str:
    """`text`, or its first `at_most - 1` characters and "…" when it is longer."""
    return text if len(text) <= at_most else text[: at_most - 1] + "…"


# An exception's name alone on a line, as f"{type(exc).__name__}: {exc}" leaves it where the
# message begins with a line break.
_NAME_ALONE = re.compile(r"\w+:")


class Headline(NamedTuple):
    """What an error says on its first line; `ends_it`: no line break follows (where the error was
    read cut short, the line may have been cut too)."""

    text: str
    ends_it: bool


def headline(error: str) -> Headline:
    """The first line of `error` (a job's, as stored: "RuntimeError: ..."), stripped, that says
    what failed: "ImportError:" alone said nothing, the message beginning on the next line, as
    transformers words a library it misses, and those lines are joined. An exception's message
    may run on over lines (a library's hint under it): the first says what failed."""
    said: list[str] = []
    line = ""
    for line in error.splitlines(keepends=True):
        if line.strip():
            said.append(line.strip())
            if not _NAME_ALONE.fullmatch(said[-1]):
                break
    return Headline(" ".join(said), line.splitlines() == [line])


def counted(n: int, noun: str) -> str:
    """`n` and its noun, in the singular for one: "1 variant checked" where it read "1 variants"."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def spelled_out(text: str) -> str:
    """`text` with each character that shows nothing or is not text written as its code point
    in brackets, as `quoted` shows it, without the quotes."""
    return "".join(char if char.isprintable() else f"[U+{ord(char):04X}]" for char in text)


# NUL, which PostgreSQL refuses in text, and lone surrogates, which no driver encodes (what Python
# keeps of bytes that were not UTF-8: a file name read with os.fsdecode, an argument, a variable).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """`text` with each character no database stores spelled out as `spelled_out` does.

    For text the service writes of its own, an exception's message above all: a job whose error
    quoted one failed to record its failure, and read running until a pass gave it up an hour
    later. Spelled out, not replaced with U+FFFD, so whoever reads the error still sees which byte
    it was (U+DCFF stands for 0xFF); its line breaks are kept."""
    return _UNSTORABLE.sub(lambda match: spelled_out(match.group()), text)


class APIError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code

    def with_status(self, status: int) -> APIError:
        self.status = status
        return self


class InvalidInput(APIError):
    status = 400
    code = "invalid"


class Unauthorized(APIError):
    status = 401
    code = "unauthorized"


class Forbidden(APIError):
    status = 403
    code = "forbidden"


class NotFound(APIError):
    status = 404
    code = "not_found"


class Conflict(APIError):
    status = 409
    code = "conflict"


class PreconditionFailed(APIError):
    status = 412
    code = "precondition_failed"


class RateLimited(APIError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: str):
        super().__init__(message, field="Authorization")
        self.retry_after = retry_after


class ServiceUnavailable(APIError):
    status = 503
    code = "unavailable"


class InternalError(APIError):
    status = 500
    code = "internal"


def error_response(status: int, code: str, message: str, field: str | None = None) -> Response:
    body: dict[str, Any] = {"error": code, "message": message}
    if field is not None:
        body["field"] = field
    response = jsonify(body)
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="copybandit"'
    if status == 503:
        response.headers["Retry-After"] = UNAVAILABLE_RETRY_AFTER
    return response


def validation_error_response(exc: ValidationError) -> Response:
    return error_response(400, "invalid", *first_problem(exc))


def first_problem(exc: ValidationError) -> tuple[str, str | None]:
    """pydantic's report, reduced to its first problem (message, field), named by its dotted
    path; a rule over several fields adds the field it names (at_fault) to its model's path."""
    first = exc.errors(include_url=False)[0]
    field = field_of(first)
    message = in_words(first)
    return (message if field is None else f"{field}: {message}"), field


def field_of(error: ErrorDetails) -> str | None:
    """The dotted path of the field one error is about, None for the whole input."""
    path = [str(part) for part in error["loc"]]
    if "field" in error.get("ctx", {}):
        path.append(error["ctx"]["field"])
    return ".".join(path) or None


def at_fault(field: str, message: str) -> PydanticCustomError:
    """A model validator's error naming the field it is about, for first_problem: pydantic gives
    a model validator's own errors no location."""
    return PydanticCustomError("invalid", message, {"field": field})


def in_words(error: ErrorDetails) -> str:
    """pydantic's message for one error, without the "Value error, " it puts before the words of
    our own validators: people read these."""
    return error["msg"].removeprefix("Value error, ")


def http_error(exc: HTTPException) -> Response:
    # abort(response) from the validation layer carries a ready response; pass it through.
    if exc.response is not None:
        return exc.response  # type: ignore[return-value]
    status = exc.code or 500
    response = error_response(
        status,
        HTTP_CODES.get(status, "error"),
        _in_words(exc, status),
        FIELDS_AT_FAULT.get(status),
    )
    return with_allow_header(response, exc)


def _in_words(exc: HTTPException, status: int) -> str:
    """werkzeug's description, or for a wrong address, method or size what would be right."""
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        allowed = ", ".join(sorted(set(exc.valid_methods) - {"OPTIONS"}))
        return f"{request.method} is not allowed here; this address takes {allowed}"
    if status == 404:
        return f"no such address: {request.path}; /openapi.json lists the API's"
    if status == 413 and (words := over_the_limit()):
        return words
    return exc.description or ""


def over_the_limit() -> str | None:
    """A 413's words: which limit, and the setting that raises it."""
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if limit is None:
        return None
    return f"the body is over the {limit:,}-byte limit (COPYBANDIT_MAX_REQUEST_BYTES)"


def with_allow_header(response: Response, exc: HTTPException) -> Response:
    """A 405 names the methods the address takes (RFC 9110, 15.5.6)."""
    for name, value in exc.get_headers():
        if name == "Allow":
            response.headers[name] = value
    return response


def register(app: Flask) -> None:
    @app.errorhandler(APIError)
    def _api_error(exc: APIError) -> Response:
        response = error_response(exc.status, exc.code, exc.message, exc.field)
        if isinstance(exc, RateLimited):
            response.headers["Retry-After"] = exc.retry_after
        return response

    app.register_error_handler(HTTPException, http_error)

    @app.errorhandler(ClientDisconnected)
    def _cut_off(exc: ClientDisconnected) -> Response:
        return _api_error(body_cut_off())

    @app.errorhandler(sa.exc.DBAPIError)
    def _database_error(exc: sa.exc.DBAPIError) -> Response:
        return _api_error(database_error(exc))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        return _api_error(unexpected_error(exc))


def database_error(exc: sa.exc.DBAPIError) -> APIError:
    """A database failure, logged and rolled back, as the error that answers it: 503 when the
    database could not be reached or written, else 500."""
    db.roll_back()
    if db.database_unavailable(exc):
        write_health.of_app().met(exc)
        # The pool has dropped the dead connection; the client's retry gets a fresh one.
        log.warning("database unavailable: %s", exc.orig)
        return ServiceUnavailable("the database is unavailable; retry", field="database")
    log.exception("database error")
    return InternalError("internal error; it has been logged")


def unexpected_error(exc: Exception) -> APIError:
    """A bug, logged and rolled back, as the 500 that answers it; or a body the server could not
    read, as the 400 it is."""
    if _unreadable_body(exc):
        db.roll_back()
        return APIError(f"the body's chunked framing is broken: {exc}", field="body")
    log.exception("unhandled error")
    db.roll_back()
    return InternalError("internal error; it has been logged")


def body_cut_off() -> APIError:
    """A body the client stopped sending partway, as the 400 naming `body` that broken chunked
    framing is (unexpected_error). werkzeug raises ClientDisconnected when the server's reader
    runs dry (gunicorn's raises NoMoreData mid-chunk; a Content-Length body just ends short), and
    answered it with its generic "could not understand" 400, naming nothing."""
    declared = request.content_length
    short_of = (
        "before its last chunk"
        if declared is None
        else f"short of its Content-Length ({declared:,} bytes)"
    )
    return APIError(
        f"the body ended {short_of}: the client stopped sending it partway", field="body"
    )


def _unreadable_body(exc: Exception) -> bool:
    """gunicorn's reader raises its own ParseException (not an OSError, which werkzeug answers
    400) on the first read of a chunked body whose framing is broken (a chunk size that is not
    hex, a chunk not ended by CRLF): a client's malformed request, which had been a 500 logged
    as a bug. The app reads a body only after gunicorn parsed the request line and headers, so
    no other ParseException reaches it. Looked up, not imported: only a server run by gunicorn
    raises it, and then the module is loaded (importing it costs every command 40 ms)."""
    errors = sys.modules.get("gunicorn.http.errors")
    return errors is not None and isinstance(exc, errors.ParseException)
