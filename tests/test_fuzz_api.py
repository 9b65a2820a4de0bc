"""Property-based fuzzing of the JSON API from its own OpenAPI document (schemathesis).

Every documented operation is sent generated requests, valid and invalid, with a valid key, against
a database seeded with an experiment (two segments, four variants, impressions, a conversion and a
finished generation job), so ids such as 1 name real rows. No answer may be a 5xx, and each must
carry a documented status code, content type and body schema. Bounded and deterministic: a fixed
number of examples per operation, derandomized, and no Hypothesis example database.
"""

from __future__ import annotations

import copy
import json
import zlib
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from generation.writer import Sample
from service import create_app

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
SERVE_PATHS = {"/v1/decide", "/v1/events"}
SEGMENTS = ("tea-lovers", "busy-parents")  # the conftest `experiment` fixture's
MAX_EXAMPLES = 25


class FakeWriter:
    """Stands in for the language model: neither the seed job nor a fuzzed one may load it."""

    model_id = "fuzz-test-writer"

    def sample(self, messages: list[dict[str, str]], n: int, seed: int) -> list[Sample]:
        lines = [
            "Brew every cup right with the Aurora kettle.",
            "The Aurora kettle boils in three minutes flat.",
        ]
        return [Sample(text=line, finished=True, logprob=-1.0) for line in lines]


@pytest.fixture
def seeded(app: Any, api: Any, experiment: dict[str, Any]) -> dict[str, Any]:
    """The `experiment` fixture's rows plus traffic, one conversion and a finished job."""
    jobs = app.extensions["copybandit.jobs"]
    jobs.writer_factory = FakeWriter
    impressions = [api.decide(experiment["id"])["impression_id"] for _ in range(4)]
    response = api.post(
        "/v1/events", json={"impression_id": impressions[0], "type": "conversion"}, key="serve"
    )
    assert response.status_code == 200, response.get_json()
    response = api.post(f"/v1/experiments/{experiment['id']}/generate", json={"n": 1})
    assert response.status_code == 202, response.get_json()
    jobs.join(timeout=30)
    return {"experiment": experiment, "impressions": impressions}


def _load_schema() -> Any:
    """The spec as the app serves it; building it touches no database, so any URL will do."""
    app = create_app({"database_url": "sqlite://", "env": "test", "scheduler": "off"})
    try:
        return schemathesis.openapi.from_wsgi("/openapi.json", app)
    finally:
        app.extensions["copybandit.engine"].dispose()


# Loaded at import so that each operation is a test of its own, sent to that test's `app` fixture
# (and so run on each conftest backend). schemathesis.pytest.from_fixture would load it from a
# fixture instead, but its runner reads `Function._nodeid`, which pytest 9.2 no longer has.
schema = _load_schema()


def _pick(options: Any, key: str) -> Any:
    """A choice keyed on the generated data: deterministic, so replays and shrinking are stable."""
    return options[zlib.crc32(key.encode("utf-8", "surrogatepass")) % len(options)]


def _aim(case: Any, seeded: dict[str, Any]) -> None:
    """Point some generated bodies at rows and forms the fuzzer cannot guess.

    Impression ids are 32 random hex digits and segment keys free text, so generated ones almost
    never exist, and the paths that record events or add variants would only ever see "unknown".
    Three in four well-formed ones are swapped for a seeded one of the same form. Two bodies take
    one of two forms (a oneOf in their schema): /v1/events one event or a list, never both, and a
    variant's PATCH exactly one of status and text. So half of theirs drop the fields sent as
    null, and keep only one of status and text, which turns most of them into a usable form.
    """
    if not isinstance(case.body, dict):
        return
    key = json.dumps(case.body, sort_keys=True, default=repr)
    # A copy: Hypothesis may hand the same generated object to a later example.
    body = case.body = copy.deepcopy(case.body)
    if case.path in {"/v1/events", "/v1/variants/{variant_id}"} and _pick((0, 1), "form" + key):
        for name in [name for name, value in body.items() if value is None]:
            del body[name]
        if {"status", "text"} <= body.keys():
            del body[_pick(("status", "text"), "one" + key)]
    if case.path == "/v1/events":
        items = [body]
        if isinstance(body.get("events"), list):
            items += [item for item in body["events"] if isinstance(item, dict)]
        for index, item in enumerate(items):
            value = item.get("impression_id")
            if isinstance(value, str) and len(value) == 32 and _pick(range(4), f"{index}{key}"):
                item["impression_id"] = _pick(seeded["impressions"], f"{index}{key}")
    elif case.path in {
        "/v1/decide",
        "/v1/experiments/{experiment_id}/variants",
        "/v1/experiments/{experiment_id}/generate",
    }:
        value = body.get("segment")
        if isinstance(value, str) and value[:1].isalnum() and _pick(range(4), key):
            body["segment"] = _pick(SEGMENTS, "segment" + key)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    # Function-scoped fixtures are intended: every operation starts from the same seeded rows,
    # and what one operation's examples store only widens what its later examples meet.
    suppress_health_check=list(HealthCheck),
)
def test_api_answers_as_documented(case: Any, app: Any, api: Any, seeded: dict[str, Any]) -> None:
    _aim(case, seeded)
    key = api.keys["serve" if case.path in SERVE_PATHS else "admin"]
    case.call_and_validate(app=app, headers={"Authorization": f"Bearer {key}"}, checks=CHECKS)
    # A fuzzed POST .../generate queues a job (on FakeWriter): let it finish before the next call.
    app.extensions["copybandit.jobs"].join(timeout=30)


# --- what the fuzzer found, kept as plain regression tests -------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"impression_id": None, "type": None},
        {"impression_id": None, "type": "conversion"},
        {"impression_id": "0" * 32, "type": None},
    ],
    ids=["both-null", "impression-null", "type-null"],
)
def test_single_event_with_null_required_fields_is_400(api: Any, body: dict[str, Any]) -> None:
    """`EventsIn._one_form` counts a field sent as null as given, so the single-event form got
    past validation and `as_list()` raised pydantic's ValidationError inside the view: a 500."""
    response = api.post("/v1/events", json=body, key="serve")
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"] == "invalid"
