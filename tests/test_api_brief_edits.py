"""PATCH /v1/experiments/<id>, POST /v1/experiments/<id>/segments and
PATCH /v1/experiments/<id>/segments/<key>: a brief changed after creation, and its audit."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import Session, col, select

from service.db import make_engine
from service.lifecycle import run_lifecycle
from service.models import Experiment, GenerationJob, Segment
from service.segment_guard import lock_row
from tests.conftest import precondition_failed
from tests.lock_waits import wait_until_someone_waits_for_a_lock


def _edits(api: Any, experiment_id: int) -> list[dict[str, Any]]:
    response = api.get(f"/v1/experiments/{experiment_id}/audit?action=edit")
    assert response.status_code == 200, response.get_json()
    return response.get_json()["events"]  # type: ignore[no-any-return]


def _key_id(api: Any) -> str:
    # cb_<id>_<secret>
    return api.keys["admin"].split("_")[1]  # type: ignore[no-any-return]


def test_patch_changes_only_the_fields_given_and_audits_old_and_new(api: Any) -> None:
    created = api.create_experiment(brand_voice="Calm.")

    response = api.patch(
        f"/v1/experiments/{created['id']}",
        json={"product": {"price": 45.5}, "brand_voice": "Warm, a little wry."},
    )

    assert response.status_code == 200, response.get_json()
    changed = response.get_json()
    assert changed["product"] == {**created["product"], "price": 45.5}
    assert changed["brand_voice"] == "Warm, a little wry."
    assert changed["name"] == created["name"]
    assert api.get(f"/v1/experiments/{created['id']}").get_json() == changed
    [edit] = _edits(api, created["id"])
    assert edit["action"] == "edit" and edit["segment"] is None
    assert edit["reason"] == (
        f"edited by API key {_key_id(api)}: brand_voice 'Calm.' → 'Warm, a little wry.'; "
        "product.price 49.0 → 45.5"
    )
    assert edit["numbers"] == {"fields": ["brand_voice", "product.price"]}


def test_patch_clears_a_price_and_cuts_long_values_short_in_the_audit(api: Any) -> None:
    created = api.create_experiment()
    long = "A 1.7 l glass kettle " + "that boils in three minutes " * 20

    response = api.patch(
        f"/v1/experiments/{created['id']}",
        json={"product": {"price": None, "description": long.strip()}},
    )

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["product"]["price"] is None
    [edit] = _edits(api, created["id"])
    assert "product.price 49.0 → none" in edit["reason"]
    # Cut to 60 characters, the last an ellipsis.
    assert (
        "product.description 'A 1.7 l glass kettle.' → "
        "'A 1.7 l glass kettle that boils in three minutes that boils…'"
    ) in edit["reason"]


def test_a_patch_that_changes_nothing_writes_no_audit_entry(api: Any) -> None:
    created = api.create_experiment()

    response = api.patch(
        f"/v1/experiments/{created['id']}", json={"name": created["name"], "auto_approve": False}
    )

    assert response.status_code == 200
    assert _edits(api, created["id"]) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({}, "body", id="empty"),
        pytest.param({"colour": "blue"}, "colour", id="unknown-field"),
        pytest.param({"product": {"weight": 1}}, "product.weight", id="unknown-product-field"),
        pytest.param({"product": {}}, "product", id="empty-product"),
        pytest.param({"name": None}, "name", id="null-name"),
        pytest.param({"product": {"name": None}}, "product.name", id="null-product-name"),
        pytest.param({"product": {"price": -1.0}}, "product.price", id="negative-price"),
        pytest.param({"product": {"url": "ftp://x"}}, "product.url", id="url-not-http"),
        pytest.param({"auto_approve": "yes"}, "auto_approve", id="auto-approve-not-a-bool"),
        pytest.param({"name": "   "}, "name", id="blank-name"),
        pytest.param({"name": "Sale\u202e2024"}, "name", id="name-with-override"),
        pytest.param({"brand_voice": "Calm\u200b"}, "brand_voice", id="voice-zero-width"),
        pytest.param(
            {"product": {"description": "Open \u2067isolate"}},
            "product.description",
            id="description-isolate-left-open",
        ),
        pytest.param({"sticky": True}, "sticky", id="sticky"),
        pytest.param({"policy": {"min_impressions": 5}}, "policy", id="policy"),
        pytest.param({"segments": []}, "segments", id="segments"),
    ],
)
def test_a_refused_patch_is_400_naming_the_field_and_changes_nothing(
    api: Any, body: dict[str, Any], field: str | None
) -> None:
    created = api.create_experiment(brand_voice="Calm.")

    response = api.patch(f"/v1/experiments/{created['id']}", json=body)

    assert response.status_code == 400, response.get_json()
    error = response.get_json()
    assert error["error"] == "invalid" and error["message"]
    assert error.get("field") == field, error
    assert api.get(f"/v1/experiments/{created['id']}").get_json() == created
    assert _edits(api, created["id"]) == []


def test_fields_changed_elsewhere_say_where(api: Any) -> None:
    created = api.create_experiment()

    response = api.patch(f"/v1/experiments/{created['id']}", json={"policy": {}})

    assert response.get_json()["message"] == (
        "policy: is changed with PATCH /v1/experiments/<id>/policy"
    )


def test_a_name_taken_is_409_and_none_of_the_edit_is_stored(api: Any) -> None:
    api.create_experiment(name="Taken")
    created = api.create_experiment(name="Mine", brand_voice="Calm.")

    response = api.patch(
        f"/v1/experiments/{created['id']}", json={"name": "Taken", "brand_voice": "Loud."}
    )

    assert response.status_code == 409, response.get_json()
    assert response.get_json()["field"] == "name"
    assert response.get_json()["message"] == "an experiment named 'Taken' already exists"
    assert api.get(f"/v1/experiments/{created['id']}").get_json() == created
    assert _edits(api, created["id"]) == []


def test_patch_of_an_unknown_experiment_is_404(api: Any) -> None:
    response = api.patch("/v1/experiments/999", json={"brand_voice": "Calm."})

    assert response.status_code == 404
    assert response.get_json()["field"] == "experiment_id"


def test_a_serve_key_cannot_edit(api: Any) -> None:
    created = api.create_experiment()

    response = api.patch(f"/v1/experiments/{created['id']}", json={"brand_voice": "x"}, key="serve")

    assert response.status_code == 403


def test_an_added_segment_comes_last_and_the_next_pass_orders_its_copy(
    api: Any, app: Any, experiment: dict[str, Any]
) -> None:
    response = api.post(
        f"/v1/experiments/{experiment['id']}/segments",
        json={"key": "night-owls", "description": "  Brew after midnight.  "},
    )

    assert response.status_code == 201, response.get_json()
    assert response.get_json() == {
        "key": "night-owls",
        "description": "Brew after midnight.",
        "variants": [],
    }
    shown = api.get(f"/v1/experiments/{experiment['id']}").get_json()
    assert [s["key"] for s in shown["segments"]] == ["tea-lovers", "busy-parents", "night-owls"]
    [edit] = _edits(api, experiment["id"])
    assert edit["segment"] == "night-owls"
    assert edit["reason"] == (
        f"added by API key {_key_id(api)}: segment 'night-owls', description 'Brew after midnight.'"
    )
    # With no copy yet its key is served the first segment's, as before it was added: a 409
    # would have failed every impression a storefront already sent with that key.
    default_ids = {v["id"] for v in shown["segments"][0]["variants"]}
    served = api.post(
        "/v1/decide", json={"experiment": experiment["id"], "segment": "night-owls"}, key="serve"
    )
    assert served.status_code == 200, served.get_json()
    assert served.get_json()["segment"] == "tea-lovers"
    assert served.get_json()["variant_id"] in default_ids

    engine = app.extensions["copybandit.engine"]
    report = run_lifecycle(engine=engine, model="")
    with Session(engine) as session:
        ordered = {
            session.get_one(Segment, session.get_one(GenerationJob, job_id).segment_id).key
            for job_id in report.jobs
        }
    assert "night-owls" in ordered

    # Once it has live copy of its own, its key gets it.
    own = api.add_variant(experiment["id"], "night-owls", "The Aurora kettle, for 2 a.m. tea.")
    served = api.post(
        "/v1/decide", json={"experiment": experiment["id"], "segment": "night-owls"}, key="serve"
    )
    assert served.status_code == 200, served.get_json()
    assert (served.get_json()["segment"], served.get_json()["variant_id"]) == (
        "night-owls",
        own["id"],
    )


def test_a_segment_key_taken_is_409(api: Any) -> None:
    created = api.create_experiment()

    response = api.post(
        f"/v1/experiments/{created['id']}/segments",
        json={"key": "tea-lovers", "description": "Again."},
    )

    assert response.status_code == 409
    assert response.get_json()["field"] == "key"
    assert api.get(f"/v1/experiments/{created['id']}").get_json() == created


def test_a_segment_past_creations_limit_of_50_is_409(api: Any) -> None:
    created = api.create_experiment(
        segments=[{"key": f"s{n}", "description": "Someone."} for n in range(49)]
    )
    url = f"/v1/experiments/{created['id']}/segments"
    assert api.post(url, json={"key": "s49", "description": "Fiftieth."}).status_code == 201

    response = api.post(url, json={"key": "s50", "description": "One too many."})

    assert response.status_code == 409
    assert response.get_json() == {
        "error": "conflict",
        "field": "key",
        "message": f"experiment {created['id']} has 50 segments, the most it may have",
    }
    shown = api.get(f"/v1/experiments/{created['id']}").get_json()
    assert [s["key"] for s in shown["segments"]][-1] == "s49"
    assert len(_edits(api, created["id"])) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"key": "Not A Slug", "description": "x"}, "key", id="bad-key"),
        pytest.param({"key": "ok"}, "description", id="no-description"),
        pytest.param({"key": "ok", "description": "  "}, "description", id="blank"),
        pytest.param({"key": "ok", "description": "a\u202eb"}, "description", id="override"),
        pytest.param({"key": "ok", "description": "x", "extra": 1}, "extra", id="unknown"),
    ],
)
def test_a_refused_segment_is_400_naming_the_field(
    api: Any, body: dict[str, Any], field: str
) -> None:
    created = api.create_experiment()

    response = api.post(f"/v1/experiments/{created['id']}/segments", json=body)

    assert response.status_code == 400, response.get_json()
    assert response.get_json()["field"] == field
    assert api.get(f"/v1/experiments/{created['id']}").get_json() == created


def test_patch_segment_rewrites_its_description_and_audits_it(
    api: Any, experiment: dict[str, Any]
) -> None:
    path = f"/v1/experiments/{experiment['id']}/segments/busy-parents"

    response = api.patch(path, json={"description": "Hot water in one minute, please."})

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["description"] == "Hot water in one minute, please."
    assert len(response.get_json()["variants"]) == 2
    [edit] = _edits(api, experiment["id"])
    assert edit["segment"] == "busy-parents"
    assert edit["reason"] == (
        f"edited by API key {_key_id(api)}: description 'Need hot water fast.' → "
        "'Hot water in one minute, please.'"
    )


@pytest.mark.parametrize(
    ("key", "body", "status", "field"),
    [
        # It named `segment`, which the request has not: the path's parameter is segment_key,
        # as an unknown experiment's 404 names experiment_id.
        pytest.param("nobody", {"description": "x"}, 404, "segment_key", id="unknown-key"),
        pytest.param("Not%20A%20Slug", {"description": "x"}, 404, "segment_key", id="not-a-key"),
        pytest.param("tea-lovers", {}, 400, "description", id="no-description"),
        pytest.param("tea-lovers", {"description": "x\u200b"}, 400, "description", id="hidden"),
        pytest.param(
            "tea-lovers", {"description": "x", "key": "new"}, 400, "key", id="key-not-editable"
        ),
    ],
)
def test_a_refused_segment_patch_changes_nothing(
    api: Any, key: str, body: dict[str, Any], status: int, field: str
) -> None:
    created = api.create_experiment()

    response = api.patch(f"/v1/experiments/{created['id']}/segments/{key}", json=body)

    assert response.status_code == status, response.get_json()
    assert response.get_json()["field"] == field
    assert api.get(f"/v1/experiments/{created['id']}").get_json() == created


def test_an_unknown_segment_is_named_where_its_key_came_in(api: Any) -> None:
    created = api.create_experiment()
    one = f"/v1/experiments/{created['id']}"

    by_address = api.get(f"{one}/segments/nobody")
    by_body = api.post(f"{one}/variants", json={"segment": "nobody", "text": "Hot water, fast."})

    assert (by_address.status_code, by_address.get_json()["field"]) == (404, "segment_key")
    assert (by_body.status_code, by_body.get_json()["field"]) == (404, "segment")


def test_an_edit_waits_for_the_experiments_lock_and_audits_what_it_replaced(
    api: Any, app: Any
) -> None:
    """Read before the lock, the audit named the value from before the other writer's change as
    the one replaced."""
    created = api.create_experiment(brand_voice="Calm.")
    other = make_engine(app.extensions["copybandit.settings"])
    answers: list[Any] = []
    with Session(other) as holder:
        experiment = holder.get_one(Experiment, created["id"])
        lock_row(holder, experiment)
        editing = threading.Thread(
            target=lambda: answers.append(
                api.patch(f"/v1/experiments/{created['id']}", json={"brand_voice": "Loud."})
            )
        )
        editing.start()
        wait_until_someone_waits_for_a_lock(other)
        holder.execute(
            sa.update(Experiment)
            .where(col(Experiment.id) == created["id"])
            .values(brand_voice="Wry.", product_price=12.0)
        )
        holder.commit()
    editing.join(timeout=60)
    other.dispose()

    [answer] = answers
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["brand_voice"] == "Loud."
    assert answer.get_json()["product"]["price"] == 12.0
    [edit] = _edits(api, created["id"])
    assert edit["reason"].endswith("brand_voice 'Wry.' → 'Loud.'")


def test_edits_are_in_the_openapi_document(client: Any) -> None:
    paths = client.get("/openapi.json").get_json()["paths"]

    assert "patch" in paths["/v1/experiments/{experiment_id}"]
    assert "post" in paths["/v1/experiments/{experiment_id}/segments"]
    assert "patch" in paths["/v1/experiments/{experiment_id}/segments/{segment_key}"]


def test_segments_stored_keep_their_order(session: Session, api: Any) -> None:
    created = api.create_experiment()
    for key in ("a", "b"):
        api.post(f"/v1/experiments/{created['id']}/segments", json={"key": key, "description": key})

    positions = session.exec(
        select(Segment.key, Segment.position)
        .where(Segment.experiment_id == created["id"])
        .order_by(col(Segment.position))
    ).all()
    assert [tuple(p) for p in positions] == [
        ("tea-lovers", 0),
        ("busy-parents", 1),
        ("a", 2),
        ("b", 3),
    ]


def test_an_unknown_segment_key_is_quoted_cut_short_in_the_404(api: Any) -> None:
    created = api.create_experiment()
    longest = "k" * 40

    answers = [
        api.patch(f"/v1/experiments/{created['id']}/segments/{key}", json={"description": "x"})
        for key in (longest, "q" * 3000)
    ]

    assert [a.status_code for a in answers] == [404, 404]
    assert f"'{longest}'" in answers[0].get_json()["message"]
    message = answers[1].get_json()["message"]
    assert message == f"experiment {created['id']} has no segment '{'q' * 47}…'"


def _patch_if_match(api: Any, experiment_id: int, etag: str, body: dict[str, Any]) -> Any:
    return api.client.patch(
        f"/v1/experiments/{experiment_id}",
        json=body,
        headers={**api._headers("admin"), "If-Match": etag},
    )


def test_a_patch_with_if_match_applies_while_the_brief_is_the_one_read(api: Any) -> None:
    created = api.create_experiment()
    read = api.get(f"/v1/experiments/{created['id']}")
    etag = read.headers["ETag"]
    # Copy added is not the brief: the ETag a client holds stays good.
    api.post(
        f"/v1/experiments/{created['id']}/variants",
        json={"segment": "tea-lovers", "text": "Tea, sooner."},
    )
    assert api.get(f"/v1/experiments/{created['id']}").headers["ETag"] == etag

    response = _patch_if_match(api, created["id"], etag, {"brand_voice": "Warm."})

    assert response.status_code == 200, response.get_json()
    assert response.json["brand_voice"] == "Warm."
    assert response.headers["ETag"] not in {etag, None}
    assert response.headers["ETag"] == api.get(f"/v1/experiments/{created['id']}").headers["ETag"]


@pytest.mark.parametrize("stale", ["read", "weak", "other"])
def test_a_patch_whose_if_match_names_a_brief_changed_since_is_refused_412(
    api: Any, stale: str
) -> None:
    """Two clients read the brief and each set the price: the second replaced the first's
    without a word. With If-Match, the second is refused and stores nothing."""
    created = api.create_experiment()
    read = api.get(f"/v1/experiments/{created['id']}").headers["ETag"]
    theirs = _patch_if_match(api, created["id"], read, {"product": {"price": 39.0}})
    assert theirs.status_code == 200, theirs.get_json()
    etag = {"read": read, "weak": f"W/{theirs.headers['ETag']}", "other": '"x", "y"'}[stale]
    before = api.get(f"/v1/experiments/{created['id']}").get_json()
    trail = _edits(api, created["id"])

    response = _patch_if_match(api, created["id"], etag, {"product": {"price": 45.0}})

    assert response.status_code == 412
    assert response.get_json() == precondition_failed(f"experiment {created['id']}'s brief")
    assert api.get(f"/v1/experiments/{created['id']}").get_json() == before
    assert _edits(api, created["id"]) == trail


def test_a_patch_with_if_match_star_or_none_is_not_held_back(api: Any) -> None:
    created = api.create_experiment()
    api.patch(f"/v1/experiments/{created['id']}", json={"brand_voice": "Calm."})

    starred = _patch_if_match(api, created["id"], "*", {"brand_voice": "Warm."})
    without = api.patch(f"/v1/experiments/{created['id']}", json={"brand_voice": "Wry."})

    assert (starred.status_code, without.status_code) == (200, 200)
    assert without.get_json()["brand_voice"] == "Wry."
