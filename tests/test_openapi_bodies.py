"""Request bodies: the server takes exactly those /openapi.json calls valid, so a client checked
against the document, or generated from it, is not refused for a body the document allowed."""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import pytest

EXPERIMENT = ("patch", "/v1/experiments/{id}", "ExperimentPatch")
SEGMENT = ("post", "/v1/experiments/{id}/segments", "SegmentIn")
VARIANT = ("post", "/v1/experiments/{id}/variants", "VariantCreate")
STATUS = ("patch", "/v1/variants/{variant}", "VariantPatch")


@pytest.fixture
def spec(client: Any) -> dict[str, Any]:
    return client.get("/openapi.json").get_json()  # type: ignore[no-any-return]


def _valid_against(spec: dict[str, Any], schema: str, body: Any) -> bool:
    document = {"$ref": f"#/components/schemas/{schema}", "components": spec["components"]}
    return bool(jsonschema_rs.Draft202012Validator(document).is_valid(body))


@pytest.mark.parametrize(
    ("where", "body"),
    [
        # Text people write: its control characters and refused formatting had no pattern.
        (SEGMENT, {"key": "night-owls", "description": "Brew\x07 after midnight."}),
        (SEGMENT, {"key": "night-owls", "description": "Brew\x85 after midnight."}),
        (SEGMENT, {"key": "night-owls", "description": "Brew\u202e after midnight."}),
        (SEGMENT, {"key": "night-owls", "description": "Brew\tafter\r\nmidnight."}),
        (VARIANT, {"segment": "tea-lovers", "text": "Steep it\x9b right."}),
        (VARIANT, {"segment": "tea-lovers", "text": "Steep it\ufeff right."}),
        (VARIANT, {"segment": "tea-lovers", "text": "Steep it right.\n"}),
        (STATUS, {"status": "paused", "reason": "Off\x00-brand."}),
        (STATUS, {"status": "paused", "reason": "Off-brand."}),
        (EXPERIMENT, {"name": "Spring\x1b launch"}),
        (EXPERIMENT, {"brand_voice": "Warm\u200b and wry."}),
        (EXPERIMENT, {"product": {"description": "A kettle.\x0c"}}),
        (EXPERIMENT, {"product": {"url": "https://shop.example/a\x01"}}),
        # re's $ matched before a final newline: refused by the pattern, stored by the server.
        (EXPERIMENT, {"product": {"url": "https://shop.example/a\n"}}),
        (EXPERIMENT, {"product": {"url": "https://shop.example/a"}}),
        # A field that cannot be cleared was published as nullable; an empty PATCH as valid.
        (EXPERIMENT, {"name": None}),
        (EXPERIMENT, {"product": None}),
        (EXPERIMENT, {"auto_approve": None}),
        (EXPERIMENT, {"product": {"name": None}}),
        (EXPERIMENT, {"product": {"description": None}}),
        (EXPERIMENT, {}),
        (EXPERIMENT, {"product": {}}),
        (EXPERIMENT, {"brand_voice": None}),
        (EXPERIMENT, {"product": {"price": None, "url": None}}),
        (EXPERIMENT, {"auto_approve": True, "name": "Autumn launch"}),
    ],
)
def test_a_body_is_accepted_exactly_when_its_schema_says_so(
    api: Any,
    spec: dict[str, Any],
    experiment: dict[str, Any],
    where: tuple[str, str, str],
    body: dict[str, Any],
) -> None:
    method, path, schema = where
    # Each segment has two active variants: pausing one is allowed.
    variant = experiment["segments"][0]["variants"][1]["id"]
    response = getattr(api, method)(path.format(id=experiment["id"], variant=variant), json=body)
    accepted = response.status_code in (200, 201)
    assert accepted is _valid_against(spec, schema, body), response.get_json()


@pytest.mark.parametrize("schema", ["ExperimentPatch", "ProductPatch"])
def test_a_brief_patch_publishes_no_defaults(spec: dict[str, Any], schema: str) -> None:
    # A generated client that filled in the published null for the fields it did not set cleared
    # the brand voice, the price and the address of every experiment it renamed.
    fields = spec["components"]["schemas"][schema]["properties"]
    assert [name for name, field in fields.items() if "default" in field] == []
