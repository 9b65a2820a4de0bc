from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import jsonschema_rs  # schemathesis's validator
import pytest

from service import create_app, db, migrate
from service.integers import WRITTEN_WHOLE

ENDPOINTS = [
    ("post", "/v1/experiments", "ExperimentCreate", "201", "ExperimentOut"),
    ("get", "/v1/experiments", None, "200", "ExperimentList"),
    ("get", "/v1/experiments/{experiment_id}", None, "200", "ExperimentOut"),
    ("post", "/v1/experiments/{experiment_id}/variants", "VariantCreate", "201", "VariantOut"),
    ("patch", "/v1/variants/{variant_id}", "VariantPatch", "200", "VariantOut"),
    ("get", "/v1/experiments/{experiment_id}/report", None, "200", "Report"),
    ("post", "/v1/decide", "DecideIn", "200", "DecideOut"),
    ("post", "/v1/events", "EventsIn", "200", "EventsOut"),
    ("get", "/healthz", None, "200", "Health"),
    ("get", "/livez", None, "200", "Alive"),
]


def _ref(content: dict[str, Any]) -> str:
    return str(content["application/json"]["schema"]["$ref"]).rsplit("/", 1)[-1]


@pytest.fixture
def spec(client: Any) -> dict[str, Any]:
    response = client.get("/openapi.json")  # no key needed
    assert response.status_code == 200
    return response.get_json()  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("method", "path", "request_schema", "status", "response_schema"), ENDPOINTS
)
def test_every_endpoint_is_documented_with_its_schemas(
    spec: dict[str, Any],
    method: str,
    path: str,
    request_schema: str | None,
    status: str,
    response_schema: str,
) -> None:
    operation = spec["paths"][path][method]
    assert _ref(operation["responses"][status]["content"]) == response_schema
    if request_schema is not None:
        assert _ref(operation["requestBody"]["content"]) == request_schema
        assert request_schema in spec["components"]["schemas"]
    if path.startswith("/v1/"):
        assert operation["security"] == [{"bearer": []}]
        assert _ref(operation["responses"]["400"]["content"]) == "ErrorOut"
    if "{" in path:
        # A PATCH's precondition is a header; the ids are the path's.
        ids = [p["in"] for p in operation["parameters"] if p["name"] != "If-Match"]
        assert ids == ["path"]


def test_429_is_documented_only_where_the_key_has_a_request_budget(
    spec: dict[str, Any],
) -> None:
    # The budget covers decide and events; every other endpoint declared a 429 it never gives.
    limited = {
        (method, path)
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if "429" in operation["responses"]
    }
    assert limited == {("post", "/v1/decide"), ("post", "/v1/events")}


def test_nothing_undocumented_is_routed(app: Any, spec: dict[str, Any]) -> None:
    # Not part of the JSON API: the dashboard pages, "/" (a redirect to them), the browsers'
    # /favicon.ico (no icon) and /metrics.
    routed = {
        re.sub(r"<(\w+:)?", "{", rule.rule).replace(">", "}")
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static" and not rule.endpoint.startswith("dashboard.")
    } - {"/openapi.json", "/", "/favicon.ico", "/metrics"}
    assert routed == set(spec["paths"])


def test_livez_needs_no_key_and_no_database() -> None:
    down = create_app(
        {"database_url": "postgresql://nobody@127.0.0.1:1/none", "env": "test", "scheduler": "off"}
    )
    response = down.test_client().get("/livez")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_healthz_needs_no_key(client: Any) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "database": "ok"}


def test_healthz_reports_an_unreachable_database() -> None:
    # Port 1 on loopback: nothing listens, so the connection is refused at once.
    down = create_app(
        {"database_url": "postgresql://nobody@127.0.0.1:1/none", "env": "test", "scheduler": "off"}
    )
    response = down.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["error"] == "unavailable"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("GET", "/healthz", None), ("GET", "/v1/experiments", None), ("POST", "/v1/decide", {})],
)
def test_every_503_says_when_to_retry_and_names_the_database(
    method: str, path: str, body: Any
) -> None:
    down = create_app(
        {"database_url": "postgresql://nobody@127.0.0.1:1/none", "env": "test", "scheduler": "off"}
    )
    key = {"Authorization": "Bearer cb_0123456789abcdef_secret"}
    response = down.test_client().open(path, method=method, json=body, headers=key)
    # The API's 503 had no Retry-After (its 429 has one) and no field, which /healthz's named.
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.get_json()["error"] == "unavailable"
    assert response.get_json()["field"] == "database"


def test_every_api_operation_documents_the_503_of_a_database_that_is_down(
    spec: dict[str, Any],
) -> None:
    down = create_app(
        {"database_url": "postgresql://nobody@127.0.0.1:1/none", "env": "test", "scheduler": "off"}
    )
    key = {"Authorization": "Bearer cb_0123456789abcdef_secret"}
    response = down.test_client().get("/v1/experiments", headers=key)
    assert (response.status_code, response.get_json()["error"]) == (503, "unavailable")
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if path.startswith("/v1/") or path == "/healthz":
                assert _ref(operation["responses"]["503"]["content"]) == "ErrorOut", (method, path)


def test_every_answer_that_says_when_to_retry_documents_its_header(
    spec: dict[str, Any],
) -> None:
    # 429 and 503 carry Retry-After; the document named no header, so generated clients had none.
    undocumented = [
        (method, path, status)
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        for status, answer in operation["responses"].items()
        if status in ("429", "503")
        and answer.get("headers", {}).get("Retry-After", {}).get("required") is not True
    ]
    assert undocumented == []


def test_the_policy_patch_publishes_no_defaults(spec: dict[str, Any]) -> None:
    # A field left out keeps its stored value; a generated client that filled in the published
    # defaults (200, 0.95, ...) reset every policy it changed one field of.
    changes = spec["components"]["schemas"]["PolicyChanges"]["properties"]
    assert "declare_at" in changes
    assert [name for name, field in changes.items() if "default" in field] == []


def test_a_patch_publishes_that_it_needs_a_change(spec: dict[str, Any]) -> None:
    # The policy's `{}` was published as valid, and answered 200, where the brief's was refused.
    schemas = spec["components"]["schemas"]
    assert schemas["PolicyChanges"]["minProperties"] == 1
    assert schemas["ExperimentPatch"]["minProperties"] == 1


def test_a_report_publishes_its_verdict_and_the_leaders_evidence(spec: dict[str, Any]) -> None:
    # The leader alone read as the copy winning, on 3 impressions where the dashboard said too
    # early to tell; the verdict's kinds are the headline's.
    schemas = spec["components"]["schemas"]
    assert {"impressions", "proven"} <= set(schemas["Leader"]["required"])
    assert "verdict" in schemas["SegmentReport"]["required"]
    verdict = schemas["Verdict"]["properties"]
    assert verdict["kind"]["enum"] == ["winner", "leader", "proven", "early"]
    assert set(schemas["ThinLead"]["required"]) == {"variant_id", "impressions", "needed", "alone"}
    # A lone line is promised no winner, and lines never shown have no leader to speak of.
    assert {"alone", "none_shown"} <= set(schemas["Verdict"]["required"])


def test_the_unauthenticated_probes_document_only_what_they_answer(
    spec: dict[str, Any], client: Any
) -> None:
    # They take no parameters and no body, so they never answer 400.
    assert set(spec["paths"]["/livez"]["get"]["responses"]) == {"200"}
    assert set(spec["paths"]["/healthz"]["get"]["responses"]) == {"200", "503"}
    assert client.get("/livez?x=1", data="{", content_type="application/json").status_code == 200
    # Validation errors answer in ErrorOut's shape, never flask-openapi3's default model.
    assert "ValidationErrorModel" not in str(spec)


def test_every_summary_is_a_whole_sentence(spec: dict[str, Any]) -> None:
    # The summary is a docstring's first line: /livez's stopped at "...also the baseline the".
    summaries = [op["summary"] for ops in spec["paths"].values() for op in ops.values()]
    assert [s for s in summaries if not s.endswith(".")] == []


def test_a_decision_names_the_policy_behind_its_propensity(spec: dict[str, Any], api: Any) -> None:
    # A sticky repeat carries the first draw's propensity; without the policy a client could not
    # tell it from a fresh draw's.
    decide_out = spec["components"]["schemas"]["DecideOut"]
    assert decide_out["properties"]["policy"]["enum"] == ["thompson-v1", "sticky-v1"]
    assert "policy" in decide_out["required"]
    created = api.create_experiment(sticky=True)
    api.add_variant(created["id"], "tea-lovers", "Steep it right.", origin="control")
    validator = jsonschema_rs.Draft202012Validator(
        {"$ref": "#/components/schemas/DecideOut", "components": spec["components"]}
    )
    for policy in ("thompson-v1", "sticky-v1"):
        decision = api.decide(created["id"], user_id="returning")
        assert decision["policy"] == policy
        assert validator.is_valid(decision)


def test_no_description_begins_with_markup(spec: dict[str, Any]) -> None:
    # A docstring's lines after its summary become the description, joined with <br/>: the policy
    # PATCH's blank line made it "<br/>Stored fields ...".
    descriptions = [
        op.get("description", "") for ops in spec["paths"].values() for op in ops.values()
    ]
    assert [d for d in descriptions if d.startswith("<br/>")] == []
    assert any(d.startswith("Stored fields this version does not know") for d in descriptions)


@pytest.mark.parametrize(
    ("schema", "body", "valid"),
    [
        ("EventsIn", {"impression_id": "a" * 32, "type": "conversion"}, True),
        ("EventsIn", {"events": [{"impression_id": "a" * 32, "type": "conversion"}]}, True),
        ("EventsIn", {"impression_id": "a" * 32}, False),
        ("EventsIn", {"impression_id": "a" * 32, "type": None}, False),
        ("EventsIn", {}, False),
        (
            "EventsIn",
            {
                "impression_id": "a" * 32,
                "type": "conversion",
                "events": [{"impression_id": "a" * 32, "type": "conversion"}],
            },
            False,
        ),
        ("VariantPatch", {"status": "paused", "reason": "Off-brand."}, True),
        ("VariantPatch", {"text": "New words."}, True),
        ("VariantPatch", {"reason": "Off-brand."}, False),
        ("VariantPatch", {}, False),
        ("VariantPatch", {"status": "paused", "text": "New words."}, False),
        # The server refuses these; the schemas had let them through.
        ("VariantPatch", {"text": "New words.", "reason": "Typo."}, False),
        (
            "EventsIn",
            {"events": [{"impression_id": "a" * 32, "type": "conversion"}], "value": 3},
            False,
        ),
        # A field of the other form sent as null is not given, as the server reads it.
        (
            "EventsIn",
            {"events": [{"impression_id": "a" * 32, "type": "conversion"}], "event_id": None},
            True,
        ),
        ("EventsIn", {"impression_id": "a" * 32, "type": "conversion", "events": None}, True),
        ("VariantPatch", {"status": "paused", "text": None}, True),
        ("VariantPatch", {"text": "New words.", "status": None, "reason": None}, True),
    ],
)
def test_bodies_of_two_forms_publish_both(
    spec: dict[str, Any], schema: str, body: dict[str, Any], valid: bool
) -> None:
    # Both schemas had every field optional: a client checking against them thought {} was fine.
    document = {"$ref": f"#/components/schemas/{schema}", "components": spec["components"]}
    assert jsonschema_rs.Draft202012Validator(document).is_valid(body) is valid


def _valid_against(spec: dict[str, Any], schema: str, body: dict[str, Any]) -> bool:
    document = {"$ref": f"#/components/schemas/{schema}", "components": spec["components"]}
    return bool(jsonschema_rs.Draft202012Validator(document).is_valid(body))


@pytest.mark.parametrize(
    "body",
    [
        {"status": "paused", "text": None},
        {"status": "active", "text": None, "reason": None},
        {"status": None, "text": "New words."},
        {"status": "paused", "text": "New words."},
        {"text": "New words.", "reason": None},
        {"status": None, "text": None},
    ],
)
def test_a_variant_patch_is_accepted_exactly_when_its_schema_says_so(
    api: Any, spec: dict[str, Any], experiment: dict[str, Any], body: dict[str, Any]
) -> None:
    # The schema refused a field of the other form sent as null, which the server accepted.
    variant = experiment["segments"][0]["variants"][1]["id"]
    response = api.patch(f"/v1/variants/{variant}", json=body)
    # A text edit of active copy is refused for its status (409), not its form.
    accepted = response.status_code in (200, 409)
    assert accepted is _valid_against(spec, "VariantPatch", body), response.get_json()


@pytest.mark.parametrize(
    ("form", "extra"),
    [
        ("single", {"events": None}),
        ("single", {"event_id": None, "value": None, "events": None}),
        ("list", {"impression_id": None, "type": None}),
        ("list", {"value": None}),
        ("list", {"value": 0}),
        ("list", {"type": "conversion"}),
    ],
)
def test_an_events_body_is_accepted_exactly_when_its_schema_says_so(
    api: Any, spec: dict[str, Any], experiment: dict[str, Any], form: str, extra: dict[str, Any]
) -> None:
    impression = api.decide(experiment["id"])["impression_id"]
    event = {"impression_id": impression, "type": "conversion"}
    body = {**(event if form == "single" else {"events": [event]}), **extra}
    response = api.post("/v1/events", json=body, key="serve")
    accepted = response.status_code == 200
    assert accepted is _valid_against(spec, "EventsIn", body), response.get_json()


@pytest.mark.parametrize(
    "text", ["order-5521", "tab\tand\nbreak", "nul\x00", "bell\x07", "delete\x7f", "csi\x9b"]
)
@pytest.mark.parametrize("field", ["user_id", "segment", "event_id"])
def test_a_control_character_is_refused_where_the_schema_says_so(
    api: Any, spec: dict[str, Any], experiment: dict[str, Any], field: str, text: str
) -> None:
    # The schemas published no rule for them, so schemathesis's valid event_id "m\x01" got a 400.
    if field == "event_id":
        impression = api.decide(experiment["id"])["impression_id"]
        body = {"impression_id": impression, "type": "conversion", field: text}
        schema, path = "EventsIn", "/v1/events"
    else:
        body = {"experiment": experiment["id"], field: text}
        schema, path = "DecideIn", "/v1/decide"
    response = api.post(path, json=body, key="serve")
    accepted = response.status_code == 200
    assert accepted is _valid_against(spec, schema, body), response.get_json()


@pytest.mark.parametrize(
    ("url", "valid"),
    [
        ("https://shop.example/a", True),
        ("HTTPS://shop.example/a", True),
        ("Http://shop.example/a", True),
        ("ftp://shop.example/a", False),
        ("https://shop example", False),
    ],
)
def test_the_published_url_pattern_reads_the_scheme_in_any_case_as_the_server_does(
    spec: dict[str, Any], url: str, valid: bool
) -> None:
    # An ECMA-262 regex engine (JSON Schema's), without inline flags it may not support.
    document = {"$ref": "#/components/schemas/ProductIn", "components": spec["components"]}
    body = {"name": "Kettle", "description": "A kettle.", "url": url}
    assert jsonschema_rs.Draft202012Validator(document).is_valid(body) is valid


def test_the_published_url_says_what_its_pattern_cannot(spec: dict[str, Any]) -> None:
    """The server refuses invisible formatting in an address (a link that read '…/exe.jpg');
    an ECMA-262 pattern without the u flag cannot name Unicode's Cf, so the description does."""
    (documented,) = [
        option
        for option in spec["components"]["schemas"]["ProductIn"]["properties"]["url"]["anyOf"]
        if option.get("type") == "string"
    ]
    assert "invisible formatting" in documented["description"]


def _integers_sent(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every integer a client sends, by where it is: request bodies' properties (followed through
    $ref, arrays and anyOf) and path and query parameters."""
    found: dict[str, dict[str, Any]] = {}
    components = spec["components"]["schemas"]

    def walk(schema: dict[str, Any], where: str, seen: frozenset[str]) -> None:
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            if name not in seen:
                walk(components[name], name, seen | {name})
            return
        for option in schema.get("anyOf", []) + schema.get("oneOf", []):
            walk(option, where, seen)
        if "items" in schema:
            walk(schema["items"], where, seen)
        for field, prop in schema.get("properties", {}).items():
            if prop.get("type") == "integer" or any(
                option.get("type") == "integer" for option in prop.get("anyOf", [])
            ):
                found[f"{where}.{field}"] = prop
            walk(prop, f"{where}.{field}", seen)

    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                walk({"properties": {parameter["name"]: parameter["schema"]}}, path, frozenset())
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body:
                walk(body["schema"], f"{method} {path}", frozenset())
    return found


def test_every_integer_a_client_sends_says_1_0_is_refused(spec: dict[str, Any]) -> None:
    # JSON Schema's integer admits 1.0 and 1e0, which the strict models refuse: a client checking
    # its body against the document, or generated from it, sent 1.0 and got a 400.
    integers = _integers_sent(spec)
    assert {
        "DecideIn.experiment",
        "GenerateIn.n",
        "PolicyChanges.min_impressions",
        "LifecyclePolicy.target_active",
        "/v1/variants/{variant_id}.variant_id",
        "/v1/experiments/{experiment_id}/audit.before",
        "/v1/experiments.after",
        "/v1/experiments.limit",
    } <= set(integers)
    undescribed = [
        where for where, prop in integers.items() if WRITTEN_WHOLE not in prop["description"]
    ]
    assert undescribed == []


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/experiments/{id}/generate", {"n": 4.0}, "n"),
        ("/v1/experiments/{id}/policy", {"min_impressions": 300.0}, "min_impressions"),
        ("/v1/experiments/{id}/policy", {"target_active": 2e0}, "target_active"),
    ],
)
def test_an_integer_written_with_a_fraction_is_refused_as_documented(
    api: Any, experiment: dict[str, Any], path: str, body: dict[str, Any], field: str
) -> None:
    before = api.get(f"/v1/experiments/{experiment['id']}").get_json()
    method = api.patch if path.endswith("/policy") else api.post
    response = method(path.format(id=experiment["id"]), json=body)
    assert response.status_code == 400
    assert (response.get_json()["error"], response.get_json()["field"]) == ("invalid", field)
    assert api.get(f"/v1/experiments/{experiment['id']}").get_json() == before


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_healthz_reports_a_database_behind_this_codes_migrations(
    app_config: dict[str, Any],
) -> None:
    """A database restored from an older backup answered SELECT 1, so /healthz said ok while
    requests needing the newer schema failed with 500. SQLite only: the PostgreSQL schema is
    shared by the whole test run."""
    served = create_app(app_config)
    engine = served.extensions["copybandit.engine"]
    migrate.downgrade(engine, "0009")  # before assignment.last_used_at, which sticky decide reads

    response = served.test_client().get("/healthz")

    assert response.status_code == 503
    body = response.get_json()
    assert (body["error"], body["field"]) == ("unavailable", "database")
    assert "copybandit migrate" in body["message"]
    migrate.upgrade(engine)
    assert served.test_client().get("/healthz").status_code == 200


def test_healthz_reports_a_database_without_tables(tmp_path: Path) -> None:
    # The URL naming an empty database (a new server, the wrong file): every request failed.
    empty = create_app({"database_url": f"sqlite:///{tmp_path / 'empty.db'}", "scheduler": "off"})
    response = empty.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["field"] == "database"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_healthz_stays_ok_on_a_database_a_newer_version_migrated(
    app_config: dict[str, Any],
) -> None:
    """Hosts still on this version keep serving while the newer ones start."""
    served = create_app(app_config)
    with served.extensions["copybandit.engine"].begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = 'f00dface'")
    assert served.test_client().get("/healthz").status_code == 200


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("where", ["file", "folder"])
def test_healthz_reports_a_sqlite_database_it_may_not_write(
    app_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A read-only (or immutable) file still answered SELECT 1: /healthz said ok while every
    decision answered 503. Root may write a file whatever its mode, so the refusal is os.access's
    answer for a file chattr +i made immutable."""
    served = create_app(app_config)
    database = db.sqlite_file(app_config["database_url"])
    assert database is not None
    refused = database if where == "file" else database.parent
    real_access = os.access

    def access(path: Any, mode: int, **kwargs: Any) -> bool:
        if Path(path) == refused and mode & os.W_OK:
            return False
        return real_access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)
    response = served.test_client().get("/healthz")

    assert response.status_code == 503
    body = response.get_json()
    assert (body["error"], body["field"]) == ("unavailable", "database")
    # The path goes to the log, not to a client without a key.
    assert body["message"] == f"the database {where} cannot be written"
    assert str(refused) not in body["message"]
