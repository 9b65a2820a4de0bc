"""POST/GET /v1/experiments and GET /v1/experiments/<id>: success shapes and every refusal."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from sqlmodel import Session, col

from service.experiments import get_experiment, segments_of, variants_of
from service.models import Experiment, Segment, Variant, utcnow
from service.policy import policy_shown
from service.schemas import ExperimentOut, ProductOut, SegmentOut, VariantOut
from tests.query_plans import sqlite_reads, statements_sent

VALID_BODY: dict[str, Any] = {
    "name": "Autumn launch",
    "product": {
        "name": "Aurora kettle",
        "description": "A 1.7 l glass kettle.",
        "price": 49.5,
        "url": "https://shop.example/aurora",
    },
    "segments": [
        {"key": "tea-lovers", "description": "Brew loose-leaf tea daily."},
        {"key": "busy-parents", "description": "Need hot water fast."},
        {"key": "office_1", "description": "Share one kettle among twenty."},
    ],
}


def _body(**changes: Any) -> dict[str, Any]:
    """VALID_BODY with top-level fields replaced (a value of ... removes the field)."""
    body = copy.deepcopy(VALID_BODY)
    for name, value in changes.items():
        if value is ...:
            del body[name]
        else:
            body[name] = value
    return body


def _product(**changes: Any) -> dict[str, Any]:
    return {**VALID_BODY["product"], **changes}


def _experiment_count(api: Any) -> int:
    response = api.get("/v1/experiments")
    assert response.status_code == 200
    return len(response.get_json()["experiments"])


def test_create_returns_201_with_everything_stored(api: Any) -> None:
    response = api.post("/v1/experiments", json=VALID_BODY)

    assert response.status_code == 201
    created = response.get_json()
    assert isinstance(created["id"], int)
    assert created["name"] == "Autumn launch"
    assert created["product"] == VALID_BODY["product"]
    assert created["sticky"] is False
    assert [s["key"] for s in created["segments"]] == ["tea-lovers", "busy-parents", "office_1"]
    assert [s["description"] for s in created["segments"]] == [
        s["description"] for s in VALID_BODY["segments"]
    ]
    assert all(s["variants"] == [] for s in created["segments"])
    # What the create answered is what a later read returns (timestamps: see the next test).
    shown = api.get(f"/v1/experiments/{created['id']}").get_json()
    assert {**shown, "created_at": None} == {**created, "created_at": None}


def test_what_a_post_creates_is_where_its_location_says(api: Any) -> None:
    """A 201 named no Location (RFC 9110, 15.3.2), so a client built each path from the body."""
    response = api.post(
        "/v1/experiments",
        json={
            "name": "Located",
            "product": {"name": "Aurora kettle", "description": "A 1.7 l glass kettle."},
            "segments": [{"key": "tea-lovers", "description": "Brew loose-leaf tea daily."}],
        },
    )
    assert response.status_code == 201
    experiment_id = response.get_json()["id"]
    assert response.headers["Location"] == f"/v1/experiments/{experiment_id}"
    assert api.get(response.headers["Location"]).get_json() == response.get_json()

    response = api.post(
        f"/v1/experiments/{experiment_id}/segments",
        json={"key": "night_owls", "description": "Brew after midnight."},
    )
    assert response.status_code == 201
    assert response.headers["Location"] == f"/v1/experiments/{experiment_id}/segments/night_owls"
    assert api.get(response.headers["Location"]).get_json()["key"] == "night_owls"

    response = api.post(
        f"/v1/experiments/{experiment_id}/variants",
        json={"segment": "night_owls", "text": "Tea at midnight, ready in three minutes."},
    )
    assert response.status_code == 201
    assert response.headers["Location"] == f"/v1/variants/{response.get_json()['id']}"
    assert api.get(response.headers["Location"]).get_json() == response.get_json()


def test_created_at_is_utc_and_reads_back_unchanged(api: Any) -> None:
    created = api.create_experiment()
    shown = api.get(f"/v1/experiments/{created['id']}").get_json()

    assert created["created_at"].endswith(("Z", "+00:00")), created["created_at"]
    assert shown["created_at"] == created["created_at"]


def test_create_keeps_sticky_and_optional_product_fields(api: Any) -> None:
    product = {"name": "Aurora kettle", "description": "A 1.7 l glass kettle."}
    created = api.create_experiment(name="Sticky one", sticky=True, product=product)

    assert created["sticky"] is True
    assert created["product"] == {**product, "price": None, "url": None}


def test_a_url_scheme_is_read_in_any_case_and_a_refusal_is_in_plain_words(api: Any) -> None:
    created = api.create_experiment(name="Upper", product=_product(url="HTTPS://shop.example/a"))
    assert created["product"]["url"] == "HTTPS://shop.example/a"

    response = api.post("/v1/experiments", json=_body(product=_product(url="ftp://shop.example")))
    assert response.status_code == 400
    assert response.get_json() == {
        "error": "invalid",
        "message": "product.url: must start with http:// or https:// and contain no spaces",
        "field": "product.url",
    }


@pytest.mark.parametrize("hidden", ["\u202e", "\u200b", "\u2066", "\ufeff"])
def test_a_url_with_invisible_formatting_is_refused_and_nothing_is_stored(
    api: Any, hidden: str
) -> None:
    url = f"https://shop.example/{hidden}gpj.exe"
    response = api.post("/v1/experiments", json=_body(product=_product(url=url)))

    assert response.status_code == 400
    body = response.get_json()
    assert body["field"] == "product.url"
    assert f"U+{ord(hidden):04X}" in body["message"]
    assert api.get("/v1/experiments").get_json() == {"experiments": [], "next_after": None}
    # An address in another script is still an address.
    created = api.create_experiment(product=_product(url="https://müller.example/kessel"))
    assert created["product"]["url"] == "https://müller.example/kessel"


def test_list_returns_every_experiment_in_creation_order(api: Any) -> None:
    assert api.get("/v1/experiments").get_json() == {"experiments": [], "next_after": None}
    first = api.create_experiment(name="First")
    second = api.create_experiment(name="Second")

    listed = api.get("/v1/experiments").get_json()["experiments"]

    assert [e["id"] for e in listed] == [first["id"], second["id"]]
    assert [e["name"] for e in listed] == ["First", "Second"]


def _created(api: Any, count: int, *, first: int = 0) -> list[int]:
    """Ids of `count` new experiments (named from `first` on), each with a variant a segment."""
    ids = []
    for n in range(first, first + count):
        created = api.create_experiment(name=f"Launch {n}")
        for segment in ("tea-lovers", "busy-parents"):
            api.add_variant(created["id"], segment, f"The Aurora kettle, for {segment}.")
        ids.append(created["id"])
    return ids


def test_the_list_pages_through_every_experiment_once_in_order(api: Any) -> None:
    ids = _created(api, 5)
    pages, after = [], None
    for _ in range(4):  # one more than it takes, so a cursor that never ends still stops
        query = "limit=2" if after is None else f"limit=2&after={after}"
        page = api.get(f"/v1/experiments?{query}").get_json()
        pages.append([e["id"] for e in page["experiments"]])
        after = page["next_after"]
        if after is None:
            break

    assert pages == [ids[0:2], ids[2:4], ids[4:5]]
    # A last page that is exactly full says so too, rather than sending the client to an empty one.
    assert api.get("/v1/experiments?limit=5").get_json()["next_after"] is None
    assert api.get(f"/v1/experiments?limit=4&after={ids[0]}").get_json()["next_after"] is None
    whole = api.get("/v1/experiments").get_json()
    assert ([e["id"] for e in whole["experiments"]], whole["next_after"]) == (ids, None)
    assert [len(s["variants"]) for e in whole["experiments"] for s in e["segments"]] == [1] * 10


def test_the_list_after_0_is_the_first_page_and_a_bad_after_is_refused_naming_it(api: Any) -> None:
    ids = _created(api, 2)
    first = api.get("/v1/experiments?after=0").get_json()
    assert [e["id"] for e in first["experiments"]] == ids
    for after in ["-1", "x", "1.5", "%2B5", "1_0", ""]:
        response = api.get(f"/v1/experiments?after={after}")
        assert (response.status_code, response.get_json()["field"]) == (400, "after"), after


def test_the_list_takes_a_limit_of_1_to_100_and_refuses_another_naming_it(api: Any) -> None:
    assert [api.get(f"/v1/experiments?limit={n}").status_code for n in (1, 100)] == [200, 200]
    # As ids are: int() reads '1_0', '+5' and a full-width 5, and pydantic with it.
    for limit in ["0", "101", "x", "1.5", "%2B5", "1_0", "%EF%BC%95", ""]:
        response = api.get(f"/v1/experiments?limit={limit}")
        assert (response.status_code, response.get_json()["field"]) == (400, "limit"), limit


def test_the_list_reads_a_page_in_the_same_few_queries_however_many_it_holds(
    app: Any, api: Any
) -> None:
    engine = app.extensions["copybandit.engine"]

    def reads(listed: int) -> list[str]:
        with statements_sent(engine) as sent:
            assert len(api.get("/v1/experiments").get_json()["experiments"]) == listed
        # Not the key's: its cache lapses after 5 s, whenever that falls.
        return [s for s, _ in sent if re.search(r"\bFROM (experiment|segment|variant)\b", s)]

    _created(api, 1)
    one = reads(1)
    _created(api, 6, first=1)
    seven = reads(7)
    # Two queries for each experiment's segments and variants made 300 experiments 602 queries.
    assert len(seven) == len(one) <= 3, seven


def _more_variants(session: Session, experiment_id: int, count: int) -> None:
    """`count` more variants in each of the experiment's segments, written as SQL."""
    session.execute(
        sa.insert(Variant),
        [
            {
                "experiment_id": experiment_id,
                "segment_id": segment.id,
                "text": f"Line {n} for {segment.key}.",
                "origin": "generated",
                "status": "pending_review",
                "created_at": utcnow(),
                "updated_at": utcnow(),
            }
            for segment in segments_of(session=session, experiment_id=experiment_id)
            for n in range(count)
        ],
    )
    session.commit()


def test_the_list_and_an_experiment_read_rows_in_the_same_queries_however_many_variants(
    app: Any, api: Any, session: Session
) -> None:
    engine = app.extensions["copybandit.engine"]
    (experiment_id,) = _created(api, 1)
    loaded: list[object] = []

    def reads() -> tuple[int, int]:
        loaded.clear()
        with statements_sent(engine) as sent:
            assert api.get("/v1/experiments").status_code == 200
            assert api.get(f"/v1/experiments/{experiment_id}").status_code == 200
        return sum(bool(re.search(r"\bFROM (segment|variant)\b", s)) for s, _ in sent), len(loaded)

    def remember(target: object, _context: object) -> None:
        loaded.append(target)

    for model in (Segment, Variant):
        sa.event.listen(model, "load", remember)
    try:
        few = reads()
        _more_variants(session, experiment_id, 40)
        many = reads()
    finally:
        for model in (Segment, Variant):
            sa.event.remove(model, "load", remember)

    # An ORM object for each of a page's 30,000 variants, and the garbage collector's passes
    # over them, were most of its 1.6 s: both read rows.
    assert few == many == (4, 0)


def test_a_segment_reads_its_own_variants_as_rows_not_every_variant_of_its_experiment(
    app: Any, api: Any, session: Session
) -> None:
    engine = app.extensions["copybandit.engine"]
    (experiment_id,) = _created(api, 1)
    _more_variants(session, experiment_id, 40)
    path = f"/v1/experiments/{experiment_id}/segments/busy-parents"
    loaded: list[object] = []

    def remember(target: object, _context: object) -> None:
        loaded.append(target)

    sa.event.listen(Variant, "load", remember)
    try:
        with statements_sent(engine) as sent:
            shown = api.get(path)
            patched = api.patch(path, json={"description": "Need hot water fast, twice."})
    finally:
        sa.event.remove(Variant, "load", remember)

    assert shown.status_code == patched.status_code == 200
    assert len(shown.get_json()["variants"]) == len(patched.get_json()["variants"]) == 41
    # Both read every variant of the experiment as an ORM object to show one segment's: 120-150
    # ms of CPU for a segment of an experiment of 50 segments of 100 variants, 5 ms as rows.
    assert loaded == []
    if engine.dialect.name == "sqlite":
        reads = [s for s, _ in sent if re.search(r"\bFROM variant\b", s)]
        plans = sqlite_reads(engine, [(s, p) for s, p in sent if s in reads], "variant")
        assert len(reads) == 2 and plans and all("(segment_id=?)" in p for p in plans), plans


def _as_models(session: Session, experiment_id: int) -> ExperimentOut:
    """The experiment as the models describe it, built the slow way from ORM objects: what the
    plain dicts the list and GET /v1/experiments/<id> build must dump as, byte for byte."""
    experiment = get_experiment(session=session, experiment_id=experiment_id)
    variants = variants_of(session=session, experiment_id=experiment_id)
    policy, policy_error = policy_shown(experiment.policy)
    shown = {"id", "text", "origin", "status", "status_reason", "impressions", "conversions"}
    return ExperimentOut(
        id=experiment_id,
        name=experiment.name,
        product=ProductOut(
            name=experiment.product_name,
            description=experiment.product_description,
            price=experiment.product_price,
            url=experiment.product_url,
        ),
        sticky=experiment.sticky,
        brand_voice=experiment.brand_voice,
        auto_approve=experiment.auto_approve,
        policy=policy,
        policy_error=policy_error,
        created_at=experiment.created_at,
        segments=[
            SegmentOut(
                key=s.key,
                description=s.description,
                variants=[
                    VariantOut(
                        segment=s.key,
                        **v.model_dump(include=shown | {"audit", "created_at", "updated_at"}),
                    )
                    for v in variants
                    if v.segment_id == s.id
                ],
            )
            for s in segments_of(session=session, experiment_id=experiment_id)
        ],
    )


def _as_json(app: Any, answer: dict[str, Any]) -> str:
    """`answer` as Flask writes a view's dict."""
    return app.json.response(answer).get_data(as_text=True)  # type: ignore[no-any-return]


def test_the_list_and_an_experiment_answer_what_their_models_dump_as(
    app: Any, api: Any, session: Session
) -> None:
    first, second = _created(api, 2)
    # A policy that does not validate, a price of whole units, copy that is not ASCII, generated
    # copy's audit, a reason left empty, counts past 32 bits, times with and without a fraction.
    session.execute(
        sa.update(Experiment)
        .where(col(Experiment.id) == second)
        .values(policy={"min_impressions": "lots"}, product_price=10.0, brand_voice="warm")
    )
    _more_variants(session, second, 3)
    session.execute(
        sa.update(Variant)
        .where(col(Variant.experiment_id) == second)
        .values(
            text='Le café "Aurora" 🚀 <b>now</b> \\ 日本',
            audit={"model": "smollm2", "seed": 7, "lint": [1.5, None, True]},
            status_reason=None,
            impressions=2**40,
            conversions=3,
            updated_at=datetime(2025, 3, 1, 12, 0, tzinfo=UTC),
        )
    )
    session.commit()
    session.expire_all()

    for experiment_id in (first, second):
        answer = api.get(f"/v1/experiments/{experiment_id}").get_data(as_text=True)
        as_models = _as_models(session, experiment_id)
        assert answer == _as_json(app, as_models.model_dump(mode="json"))
        # A segment's answer is built by the same code, and must dump as its model too.
        for segment in as_models.segments:
            path = f"/v1/experiments/{experiment_id}/segments/{segment.key}"
            shown = api.get(path).get_data(as_text=True)
            assert shown == _as_json(app, segment.model_dump(mode="json"))
    listed = api.get("/v1/experiments?limit=1&after=" + str(first)).get_data(as_text=True)
    no_audit = {"segments": {"__all__": {"variants": {"__all__": {"audit"}}}}}
    expected = {
        "experiments": [_as_models(session, second).model_dump(mode="json", exclude=no_audit)],
        "next_after": None,
    }
    assert listed == _as_json(app, expected)


def test_an_audit_holding_a_float_json_cannot_write_is_shown_as_null_as_the_model_dumps_it(
    app: Any, api: Any, session: Session
) -> None:
    (experiment_id,) = _created(api, 1)
    audit = {"model": "smollm2", "logprob": float("nan"), "scores": [float("-inf"), 0.5]}
    stored = sa.update(Variant).where(col(Variant.experiment_id) == experiment_id)
    if app.extensions["copybandit.engine"].dialect.name != "sqlite":
        # PostgreSQL's json type refuses NaN: only SQLite's column keeps one for an answer.
        with pytest.raises(sa.exc.DataError, match="json"):
            session.execute(stored.values(audit=audit))
        return
    session.execute(stored.values(audit=audit))
    session.commit()
    session.expire_all()

    answer = api.get(f"/v1/experiments/{experiment_id}")

    assert answer.status_code == 200
    # A NaN in the answer is no JSON: a browser's JSON.parse and Python's strict parser refuse it.
    text = answer.get_data(as_text=True)
    assert "NaN" not in text and "Infinity" not in text
    assert text == _as_json(app, _as_models(session, experiment_id).model_dump(mode="json"))
    variant = answer.get_json()["segments"][0]["variants"][0]
    assert variant["audit"] == {"model": "smollm2", "logprob": None, "scores": [None, 0.5]}
    segment = api.get(f"/v1/experiments/{experiment_id}/segments/tea-lovers")
    assert segment.get_data(as_text=True) == _as_json(
        app, _as_models(session, experiment_id).segments[0].model_dump(mode="json")
    )


def test_the_list_leaves_out_each_variants_audit_which_its_experiment_shows(
    api: Any, session: Session
) -> None:
    (experiment_id,) = _created(api, 1)
    audit = {"model": "smollm2", "prompt": [{"role": "user", "content": "Write copy. " * 200}]}
    session.execute(
        sa.update(Variant).where(col(Variant.experiment_id) == experiment_id).values(audit=audit)
    )
    session.commit()

    (listed,) = api.get("/v1/experiments").get_json()["experiments"]
    shown = api.get(f"/v1/experiments/{experiment_id}").get_json()

    assert [v["audit"] for s in shown["segments"] for v in s["variants"]] == [audit, audit]
    assert [sorted(v) for s in listed["segments"] for v in s["variants"]] == [
        sorted(set(v) - {"audit"}) for s in shown["segments"] for v in s["variants"]
    ]


def test_get_one_includes_segments_and_their_variants(api: Any, experiment: dict[str, Any]) -> None:
    shown = api.get(f"/v1/experiments/{experiment['id']}").get_json()

    assert [s["key"] for s in shown["segments"]] == ["tea-lovers", "busy-parents"]
    for segment in shown["segments"]:
        variants = segment["variants"]
        assert [v["origin"] for v in variants] == ["control", "manual"]
        assert {v["segment"] for v in variants} == {segment["key"]}
        assert {v["status"] for v in variants} == {"active"}
        assert all(segment["key"] in v["text"] for v in variants)
        assert all((v["impressions"], v["conversions"]) == (0, 0) for v in variants)


def test_unknown_experiment_is_404(api: Any) -> None:
    response = api.get("/v1/experiments/424242")

    assert response.status_code == 404
    body = response.get_json()
    assert set(body) == {"error", "message", "field"}
    assert body["error"] == "not_found"
    assert body["field"] == "experiment_id"
    assert "424242" in body["message"]


def _other_writings(number: int) -> list[str]:
    """The id as werkzeug's int converter also read it: other Unicode digits, a leading zero."""
    digits = str(number)
    zeros = {"arabic-indic": 0x0660, "full-width": 0xFF10, "math-bold": 0x1D7CE}
    other = [digits.translate({48 + d: zero + d for d in range(10)}) for zero in zeros.values()]
    return [*other, "0" + digits]


@pytest.mark.parametrize("suffix", ["", "/report", "/audit"])
def test_an_id_not_written_in_plain_ascii_digits_is_400(
    api: Any, experiment: dict[str, Any], suffix: str
) -> None:
    # Each of these answered with the experiment itself.
    for writing in [*_other_writings(experiment["id"]), "-1", "x"]:
        response = api.get(f"/v1/experiments/{quote(writing)}{suffix}")

        assert response.status_code == 400, (writing, response.get_json())
        assert response.get_json()["field"] == "experiment_id"


def test_duplicate_name_is_409_and_stores_nothing(api: Any) -> None:
    api.create_experiment(name="Only once")

    response = api.post("/v1/experiments", json=_body(name="Only once"))

    assert response.status_code == 409
    assert response.get_json()["error"] == "conflict"
    assert response.get_json()["field"] == "name"
    assert _experiment_count(api) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param(_body(product=...), "product", id="missing-product"),
        pytest.param(
            _body(segments=[{"key": "Not A Slug", "description": "x"}]),
            "segments.0.key",
            id="bad-segment-key",
        ),
        pytest.param(
            _body(segments=[VALID_BODY["segments"][0], VALID_BODY["segments"][0]]),
            "segments",
            id="duplicate-segment-keys",
        ),
        pytest.param(_body(segments=[]), "segments", id="zero-segments"),
        pytest.param(_body(name=5), "name", id="name-not-a-string"),
        pytest.param(_body(sticky="yes"), "sticky", id="sticky-not-a-bool"),
        pytest.param(_body(colour="blue"), "colour", id="unknown-field"),
        pytest.param(_body(product=_product(price=-0.01)), "product.price", id="negative-price"),
        pytest.param(
            _body(product=_product(url="ftp://shop.example/a")), "product.url", id="url-not-http"
        ),
        pytest.param(_body(name="Spring\x00launch"), "name", id="name-with-nul"),
        pytest.param(_body(name="Spring\x1blaunch"), "name", id="name-with-escape"),
        pytest.param(_body(name="   "), "name", id="blank-name"),
    ],
)
def test_invalid_body_is_400_naming_the_field_and_stores_nothing(
    api: Any, body: dict[str, Any], field: str
) -> None:
    api.create_experiment(name="Existing")

    response = api.post("/v1/experiments", json=body)

    assert response.status_code == 400, response.get_json()
    error = response.get_json()
    assert error["error"] == "invalid"
    assert error.get("field") == field, error
    assert error["message"]
    assert _experiment_count(api) == 1
