"""Query strings: no parameter of the API or the dashboard takes a list."""

from __future__ import annotations

from flask import request

from service.errors import InvalidInput


def refuse_repeated_parameters() -> None:
    """flask-openapi3 and `request.args.get` read the first of a repeated parameter, so
    `?action=prior&action=retire` answered for prior alone, as if retire had not been asked for."""
    for name, values in request.args.lists():
        if len(values) > 1:
            raise InvalidInput(f"{name}: give it once, not {len(values)} times", field=name)
