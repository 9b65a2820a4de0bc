"""If-Match on the variant's, the persona's and the policy's PATCH: each resource's GET (and each
PATCH's answer) carries its ETag; a PATCH naming one it no longer has is a 412, nothing stored.
The brief's own precondition is tested in test_api_brief_edits."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import Session, col

from service.copy_checks import lint_config
from service.db import make_engine
from service.errors import PreconditionFailed
from service.experiments import update_variant
from service.models import Experiment, Segment, Variant, VariantStatus
from service.schemas import VariantPatch
from service.segment_guard import lock_row
from tests.conftest import precondition_failed, store_policy_by_hand
from tests.lock_waits import wait_until_someone_waits_for_a_lock


@dataclass(frozen=True)
class Target:
    """A resource a PATCH changes: its address and two edits that do not refuse each other."""

    name: str
    theirs: dict[str, Any]
    mine: dict[str, Any]

    def address(self, experiment: dict[str, Any]) -> str:
        if self.name == "variant":
            # Not the control, and not the segment's last active copy: each edit is allowed.
            return f"/v1/variants/{experiment['segments'][0]['variants'][1]['id']}"
        if self.name == "segment":
            return f"/v1/experiments/{experiment['id']}/segments/tea-lovers"
        return f"/v1/experiments/{experiment['id']}/policy"

    def refused(self, experiment: dict[str, Any]) -> str:
        """What the 412 says of the resource."""
        return {
            "variant": f"variant {experiment['segments'][0]['variants'][1]['id']}",
            "segment": "the persona of segment 'tea-lovers'",
            "policy": f"experiment {experiment['id']}'s policy",
        }[self.name]


TARGETS = [
    Target("variant", theirs={"status": "paused"}, mine={"status": "retired"}),
    Target("segment", theirs={"description": "Green tea."}, mine={"description": "Oolong."}),
    Target("policy", theirs={"min_impressions": 300}, mine={"target_active": 3}),
]
BY_NAME = pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])


def _patch_if_match(api: Any, address: str, etag: str, body: dict[str, Any]) -> Any:
    return api.client.patch(address, json=body, headers={**api._headers("admin"), "If-Match": etag})


def _edits(api: Any, experiment_id: int) -> list[dict[str, Any]]:
    return api.get(f"/v1/experiments/{experiment_id}/audit?action=edit").get_json()["events"]  # type: ignore[no-any-return]


@BY_NAME
def test_a_patch_with_the_etag_its_get_gave_applies_and_answers_the_new_one(
    api: Any, experiment: dict[str, Any], target: Target
) -> None:
    address = target.address(experiment)
    read = api.get(address)
    assert read.status_code == 200, read.get_json()

    response = _patch_if_match(api, address, read.headers["ETag"], target.mine)

    assert response.status_code == 200, response.get_json()
    assert response.headers["ETag"] not in {read.headers["ETag"], None}
    again = api.get(address)
    assert (again.headers["ETag"], again.get_json()) == (
        response.headers["ETag"],
        response.get_json(),
    )


def test_each_get_shows_what_the_experiment_lists(api: Any, experiment: dict[str, Any]) -> None:
    tea = experiment["segments"][0]

    assert api.get(TARGETS[0].address(experiment)).get_json() == tea["variants"][1]
    assert api.get(TARGETS[1].address(experiment)).get_json() == tea
    assert api.get(TARGETS[2].address(experiment)).get_json() == experiment["policy"]


@BY_NAME
def test_a_patch_whose_if_match_names_a_state_changed_since_is_refused_412(
    api: Any, experiment: dict[str, Any], target: Target
) -> None:
    """Two clients read the resource and each change it: the second replaced the first's
    without a word. With If-Match, the second is refused and stores nothing."""
    address = target.address(experiment)
    etag = api.get(address).headers["ETag"]
    assert api.patch(address, json=target.theirs).status_code == 200
    before = api.get(f"/v1/experiments/{experiment['id']}").get_json()
    trail = _edits(api, experiment["id"])

    response = _patch_if_match(api, address, etag, target.mine)

    assert response.status_code == 412
    assert response.get_json() == precondition_failed(target.refused(experiment))
    assert api.get(f"/v1/experiments/{experiment['id']}").get_json() == before
    assert _edits(api, experiment["id"]) == trail
    # "*" names whatever is stored: the change applies, as one without If-Match does.
    assert _patch_if_match(api, address, "*", target.mine).status_code == 200
    assert api.get(f"/v1/experiments/{experiment['id']}").get_json() != before


def test_changes_outside_what_a_patch_changes_keep_its_etag(
    api: Any, experiment: dict[str, Any]
) -> None:
    addresses = [target.address(experiment) for target in TARGETS]
    etags = [api.get(address).headers["ETag"] for address in addresses]

    for _ in range(3):
        # The variant's counts move with each decision.
        api.decide(experiment["id"], segment="tea-lovers")
    api.add_variant(experiment["id"], "tea-lovers", "Tea at its temperature.")
    api.patch(f"/v1/experiments/{experiment['id']}", json={"brand_voice": "Wry."})
    # A default written out is the policy the experiment already had.
    api.patch(f"/v1/experiments/{experiment['id']}/policy", json={"min_impressions": 200})

    assert [api.get(address).headers["ETag"] for address in addresses] == etags


def test_a_text_edited_between_the_read_and_the_write_is_a_412_not_replaced(
    app: Any, api: Any, experiment: dict[str, Any], session: Session
) -> None:
    """The variant's PATCH takes no lock for a pending variant's text until its twin check: the
    write is conditional on the text read, so an edit landing meanwhile is not overwritten."""
    variant_id = experiment["segments"][0]["variants"][1]["id"]
    session.execute(
        sa.update(Variant)
        .where(col(Variant.id) == variant_id)
        .values(status=VariantStatus.PENDING_REVIEW.value)
    )
    session.commit()
    etag = api.get(f"/v1/variants/{variant_id}").headers["ETag"]
    theirs_done: list[bool] = []

    def theirs_lands_after_the_read(tag: str) -> bool:
        if not theirs_done:
            with Session(app.extensions["copybandit.engine"]) as other:
                other.execute(
                    sa.update(Variant).where(col(Variant.id) == variant_id).values(text="Theirs.")
                )
                other.commit()
            theirs_done.append(True)
        return tag == etag

    with pytest.raises(PreconditionFailed):
        update_variant(
            session=session,
            variant_id=variant_id,
            patch=VariantPatch(text="Mine."),
            lint_config=lint_config(app.extensions["copybandit.settings"]),
            by="a test",
            etag_matches=theirs_lands_after_the_read,
        )

    assert api.get(f"/v1/variants/{variant_id}").get_json()["text"] == "Theirs."


@pytest.mark.parametrize("name", ["segment", "policy"])
def test_a_change_committed_while_the_patch_waits_for_the_lock_is_a_412(
    api: Any, app: Any, experiment: dict[str, Any], name: str
) -> None:
    """The persona's and the policy's PATCH take the experiment's lock, and check the If-Match
    after it, against what the writer before them left."""
    target = next(t for t in TARGETS if t.name == name)
    address = target.address(experiment)
    etag = api.get(address).headers["ETag"]
    other = make_engine(app.extensions["copybandit.settings"])
    answers: list[Any] = []
    with Session(other) as holder:
        lock_row(holder, holder.get_one(Experiment, experiment["id"]))
        editing = threading.Thread(
            target=lambda: answers.append(_patch_if_match(api, address, etag, target.mine))
        )
        editing.start()
        wait_until_someone_waits_for_a_lock(other)
        if name == "segment":
            change: Any = sa.update(Segment).where(col(Segment.experiment_id) == experiment["id"])
            holder.execute(change.values(description="Green tea."))
        else:
            change = sa.update(Experiment).where(col(Experiment.id) == experiment["id"])
            holder.execute(change.values(policy={"min_impressions": 300}))
        holder.commit()
    editing.join(timeout=60)
    other.dispose()

    [answer] = answers
    assert answer.status_code == 412, answer.get_json()


def test_the_policy_get_refuses_a_stored_policy_that_does_not_validate(
    api: Any, experiment: dict[str, Any], session: Session
) -> None:
    """Showing the defaults in its place, as the experiment's GET does beside policy_error, would
    say the experiment runs rules it does not: the lifecycle leaves it alone."""
    store_policy_by_hand(session, experiment["id"], {"min_impressions": 0})
    address = f"/v1/experiments/{experiment['id']}/policy"

    refused = api.get(address)

    assert refused.status_code == 409
    assert refused.get_json()["field"] == "policy"
    assert '{"min_impressions": 0} does not validate' in refused.get_json()["message"]
    assert api.patch(address, json={"min_impressions": 300}).status_code == 200
    assert api.get(address).get_json()["min_impressions"] == 300


@pytest.mark.parametrize(
    ("address", "field"),
    [
        ("/v1/variants/999999", "variant_id"),
        ("/v1/experiments/{id}/segments/owls", "segment_key"),
        ("/v1/experiments/999999/segments/tea-lovers", "experiment_id"),
        ("/v1/experiments/999999/policy", "experiment_id"),
    ],
)
def test_a_get_of_nothing_stored_is_a_404_naming_it(
    api: Any, experiment: dict[str, Any], address: str, field: str
) -> None:
    response = api.get(address.format(id=experiment["id"]))

    assert response.status_code == 404
    assert response.get_json()["field"] == field
