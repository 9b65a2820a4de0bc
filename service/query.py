"""Query strings: no parameter of the API or the dashboard takes a list."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any

from flask import current_app, request

from service.errors import InvalidInput


def refuse_repeated_parameters() -> None:
    """flask-openapi3 and `request.args.get` read the first of a repeated parameter, so
    `?action=prior&action=retire` answered for prior alone, as if retire had not been asked for."""
    for name, values in request.args.lists():
        if len(values) > 1:
            raise InvalidInput(f"{name}: give it once, not {len(values)} times", field=name)


def refuse_unknown_parameters() -> None:
    """A parameter the endpoint does not read is a 400 naming it, as an unknown body field is:
    a misspelt `?befor=` had been ignored, and the first page answered as if it were the one asked
    for."""
    if not request.query_string:
        return
    view = current_app.view_functions.get(request.endpoint or "")
    known = _query_fields(view) if view is not None else frozenset()
    for name in request.args:
        if name not in known:
            takes = ", ".join(sorted(known)) or "none"
            raise InvalidInput(
                f"{name}: unknown query parameter; this address takes {takes}", field=name
            )


@functools.cache
def _query_fields(view: Callable[..., Any]) -> frozenset[str]:
    """The fields of the model a view's `query` argument is validated against (flask-openapi3
    reads the same annotation), none without one."""
    model = typing.get_type_hints(inspect.unwrap(view)).get("query")
    return frozenset(model.model_fields) if model is not None else frozenset()
