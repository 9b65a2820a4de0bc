"""The experiment page's forms that change its brief: the product, name, brand voice and
auto-approval; a segment's persona; a new segment. Each goes through the API's data functions and
rules, and is audited as an `edit` under the marketer's email."""

from __future__ import annotations

from typing import Any

from flask import flash, g, request
from werkzeug.wrappers import Response

from service import db
from service.brief_edits import (
    BriefMoved,
    PersonaMoved,
    add_segment,
    update_experiment,
    update_segment,
)
from service.dashboard.blueprint import bp, flash_about_segment, validated
from service.dashboard.blueprint import invalidate as invalidate_snapshot
from service.dashboard.experiment_pages import (
    KEY_RULE,
    back_to,
    box_for,
    form_price,
    refused_form,
)
from service.edit_audit import SHOWN_CHARS
from service.errors import APIError, Conflict, InvalidInput, cut, quoted, spelled_out
from service.experiments import get_experiment
from service.models import Experiment
from service.schemas import ExperimentPatch, SegmentIn, SegmentPatch

# The brief form's boxes. Each comes with a hidden "was_<box>": what the page showed in it.
BRIEF_BOXES = (
    "name",
    "product_name",
    "product_description",
    "price",
    "product_url",
    "brand_voice",
    "auto_approve",
)
# Each box as a refusal names it.
_BOX_NAMES = {
    "name": "the experiment name",
    "product_name": "the product name",
    "product_description": "the product description",
    "price": "the price",
    "product_url": "the product URL",
    "brand_voice": "the brand voice",
    "auto_approve": "serving generated copy without review",
}


@bp.app_template_global()
def brief_boxes(experiment: Experiment) -> dict[str, str]:
    """What the brief form's boxes show for `experiment`, as the browser sends them back."""
    return {
        "name": experiment.name,
        "product_name": experiment.product_name,
        "product_description": experiment.product_description,
        "price": "" if experiment.product_price is None else str(experiment.product_price),
        "product_url": experiment.product_url or "",
        "brand_voice": experiment.brand_voice or "",
        "auto_approve": "on" if experiment.auto_approve else "",
    }


@bp.post("/experiments/<id:experiment_id>/brief")
def edit_brief(experiment_id: int) -> Response | tuple[str, int]:
    form = {box: request.form.get(box, "") for box in BRIEF_BOXES}
    shown = {box: request.form.get(f"was_{box}", "") for box in BRIEF_BOXES}
    try:
        # Only the boxes the marketer changed: the others hold what the page showed, and sent
        # back they would undo a change someone made since it was drawn. A box the form left out
        # is not a change; a checkbox left unticked is left out, so it is read as it was sent.
        changed = {
            box
            for box in BRIEF_BOXES
            if (box in request.form or box == "auto_approve") and form[box] != shown[box]
        }
        if not changed:
            flash("Nothing in the brief was changed.")
            return back_to(experiment_id)
        patch = validated(ExperimentPatch, _brief_patch(form, changed))
        update_experiment(
            session=db.session(),
            experiment_id=experiment_id,
            patch=patch,
            by=_by_marketer(),
            seen=_labelled(_brief_patch(shown, changed)),
        )
    except BriefMoved as moved:
        return _refused_as_moved(experiment_id, moved, changed)
    except APIError as exc:
        return refused_form(experiment_id, "brief", exc, box_for(exc.field))
    flash("Saved the brief.")
    return back_to(experiment_id)


def _brief_patch(form: dict[str, str], changed: set[str]) -> dict[str, Any]:
    """The changed boxes in ExperimentPatch's shape; an optional box left empty clears its field."""
    product_boxes = {
        "product_name": ("name", form["product_name"]),
        "product_description": ("description", form["product_description"]),
        "price": ("price", form_price(form["price"]) if "price" in changed else None),
        "product_url": ("url", form["product_url"].strip() or None),
    }
    patch: dict[str, Any] = {}
    product = {field: value for box, (field, value) in product_boxes.items() if box in changed}
    if product:
        patch["product"] = product
    if "name" in changed:
        patch["name"] = form["name"]
    if "brand_voice" in changed:
        patch["brand_voice"] = form["brand_voice"].strip() or None
    if "auto_approve" in changed:
        patch["auto_approve"] = form["auto_approve"] == "on"
    return patch


def _labelled(patch: dict[str, Any]) -> dict[str, Any]:
    """ExperimentPatch's shape under the labels of update_experiment's `seen` ("product.url")."""
    product = patch.get("product", {})
    top = {field: value for field, value in patch.items() if field != "product"}
    return top | {f"product.{field}": value for field, value in product.items()}


def _refused_as_moved(experiment_id: int, moved: BriefMoved, changed: set[str]) -> tuple[str, int]:
    """The form again, what was typed kept, the boxes changed since named with what they now hold.
    Every box and what it says the page showed is as stored now, but for the marketer's own
    changes: saved again, it replaces the others' knowingly, and undoes none they did not see."""
    db.session().rollback()
    now = brief_boxes(get_experiment(session=db.session(), experiment_id=experiment_id))
    named = {box_for(label) for label in moved.current}
    moved_boxes = [box for box in BRIEF_BOXES if box in named]
    said = [f"{_BOX_NAMES[box]} ({_now_said(box, now[box])})" for box in moved_boxes]
    refusal = Conflict(
        f"someone else changed {_listed(said)} since this page was opened; what you typed is "
        "kept below: save it again to replace theirs"
    )
    seen_now = {f"was_{box}": text for box, text in now.items()} | {
        box: text for box, text in now.items() if box not in changed
    }
    return refused_form(experiment_id, "brief", refusal, None, seen_now)


def _listed(items: list[str]) -> str:
    return " and ".join([", ".join(items[:-1]), items[-1]] if len(items) > 1 else items)


def _now_said(box: str, text: str) -> str:
    if box == "auto_approve":
        return "now on" if text else "now off"
    return f"now {quoted(cut(text, SHOWN_CHARS))}" if text else "now empty"


@bp.post("/experiments/<id:experiment_id>/segments")
def new_segment(experiment_id: int) -> Response | tuple[str, int]:
    try:
        body = validated(
            SegmentIn,
            {
                "key": request.form.get("key", "").strip(),
                "description": request.form.get("description", ""),
            },
        )
        segment = add_segment(
            session=db.session(), experiment_id=experiment_id, segment_in=body, by=_by_marketer()
        )
    except APIError as exc:
        refusal = exc
        if isinstance(exc, InvalidInput) and exc.field == "key":
            # pydantic's words were the pattern itself ("String should match pattern
            # '^[a-z0-9]…'"): the rule as the New experiment form says it.
            refusal = InvalidInput(f"key: {KEY_RULE}", field="key")
        return refused_form(experiment_id, "add-segment", refusal, exc.field)
    invalidate_snapshot(experiment_id)
    flash_about_segment(
        f"Added segment {segment.key}. It has no copy yet: add some by hand or have the model "
        "write some; until then decisions for it are served copy from the default segment.",
        segment.id,  # type: ignore[arg-type]
    )
    return back_to(experiment_id, segment.key)


@bp.post("/experiments/<id:experiment_id>/segments/<segment_key>")
def edit_segment(experiment_id: int, segment_key: str) -> Response | tuple[str, int]:
    description = request.form.get("description", "")
    shown = request.form.get("was_description")
    if description == shown:
        flash("Nothing in the persona was changed.")
        return back_to(experiment_id, segment_key)
    try:
        body = validated(SegmentPatch, {"description": description})
        segment = update_segment(
            session=db.session(),
            experiment_id=experiment_id,
            key=segment_key,
            description=body.description,
            by=_by_marketer(),
            # A form from before the page carried it is saved as it always was.
            description_seen=shown,
        )
    except PersonaMoved as moved:
        # The page shows the persona as it now is; saved again, the form replaces that one.
        seen_now = {"was_description": moved.current}
        return refused_form(experiment_id, persona_form(segment_key), moved, None, seen_now)
    except APIError as exc:
        # A segment that is not there has no form to show the error in: the error page says so.
        # update_segment names the address's segment_key (as the API's 404 does).
        if exc.field == "segment_key":
            raise
        return refused_form(experiment_id, persona_form(segment_key), exc, exc.field)
    flash_about_segment(f"Saved the persona of {segment.key}.", segment.id)  # type: ignore[arg-type]
    return back_to(experiment_id, segment.key)


def _by_marketer() -> str:
    return spelled_out(g.marketer.email)


@bp.app_template_global()
def persona_form(segment_key: str) -> str:
    """The name a refused persona form goes by on the experiment page. A key alone would be taken
    for the brief's or the add-segment form's name by a segment keyed `brief` or `add-segment`;
    a key never holds a colon."""
    return f"persona:{segment_key}"
