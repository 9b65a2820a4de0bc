"""What the published schemas say of integer fields beyond JSON Schema's `integer`.

JSON Schema's integer is any number with no fractional part, so 1.0 and 1e0 validate; Python's
JSON reads both as floats, and the strict request models refuse them (on purpose: a client that
writes 1.0 for an id or a count has a number it did not mean as one). The schema's type cannot
say so, so each integer field's description does, where documentation and generated clients
show it.
"""

from __future__ import annotations

from typing import Any

WRITTEN_WHOLE = (
    "written as a whole number, without a decimal point or exponent: 1.0 and 1e0 are refused, "
    "though JSON Schema's integer admits them"
)


def describe_integers(schema: dict[str, Any]) -> None:
    """A model's json_schema_extra: adds WRITTEN_WHOLE to each integer property's description."""
    for field in schema.get("properties", {}).values():
        if _integer(field):
            described = field.get("description")
            field["description"] = f"{described}; {WRITTEN_WHOLE}" if described else WRITTEN_WHOLE


def _integer(field: dict[str, Any]) -> bool:
    # An optional field is anyOf [integer, null].
    return field.get("type") == "integer" or any(
        option.get("type") == "integer" for option in field.get("anyOf", ())
    )
