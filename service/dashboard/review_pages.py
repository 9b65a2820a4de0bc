"""Reviewing generated copy, and the hand-made status changes: approve, reject, edit, pause,
resume, retire. Each goes through `update_variant`, the same rules the API enforces; an edit and
its approval go through `approve_edited`, as one write."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app, flash, g, redirect, render_template, request, url_for
from sqlmodel import col, select
from werkzeug.wrappers import Response

from generation.lint import LintReport, lint
from service import db
from service.copy_checks import brief_for, lint_config
from service.dashboard.blueprint import bp, error_page, flash_about_segment, form_int, validated
from service.dashboard.blueprint import invalidate as invalidate_snapshot
from service.dashboard.session_auth import edited_text, review_edit, safe_next
from service.errors import APIError, Conflict, InvalidInput, cut, spelled_out
from service.experiments import (
    StatusMoved,
    TextMoved,
    approve_edited,
    get_experiment,
    get_variant,
    segments_of,
    text_version,
    update_variant,
)
from service.models import Segment, Variant, VariantStatus
from service.schemas import VariantPatch


@dataclass(frozen=True)
class Action:
    target: VariantStatus
    # The word the audit reason and the flash use.
    verb: str
    # The statuses its button is shown for. A variant that has left them since the page was drawn
    # is refused: approving copy that someone paused meanwhile would put it back on air.
    starts_from: frozenset[VariantStatus]
    # Why it is refused then, after "#12 ".
    elsewhere: str
    # Whether the form must say which text its page showed (`shown`, a `text_version`): pending
    # copy may be edited after the page was drawn. Approving puts that text live; rejecting ends
    # it for good, and an edit made to mend the copy would be thrown out by someone who never
    # read it.
    checks_text: bool = False


_PENDING = frozenset({VariantStatus.PENDING_REVIEW})
ACTIONS: dict[str, Action] = {
    "approve": Action(
        VariantStatus.ACTIVE,
        "approved",
        _PENDING,
        "is no longer waiting for review",
        checks_text=True,
    ),
    "reject": Action(
        VariantStatus.REJECTED,
        "rejected",
        _PENDING,
        "is no longer waiting for review",
        checks_text=True,
    ),
    "pause": Action(
        VariantStatus.PAUSED, "paused", frozenset({VariantStatus.ACTIVE}), "is not active"
    ),
    "resume": Action(
        VariantStatus.ACTIVE, "resumed", frozenset({VariantStatus.PAUSED}), "is not paused"
    ),
    "retire": Action(
        VariantStatus.RETIRED,
        "retired",
        frozenset({VariantStatus.ACTIVE, VariantStatus.PAUSED}),
        "is neither active nor paused",
    ),
}


bp.add_app_template_filter(text_version, "text_version")


@bp.app_template_global()
def actions_for(status: VariantStatus) -> list[str]:
    """The buttons a variant in `status` gets."""
    return [name for name, action in ACTIONS.items() if status in action.starts_from]


@dataclass(frozen=True)
class PendingRow:
    variant: Variant
    segment: Segment
    # Checked again now, against today's brief and settings, not only when it was written.
    report: LintReport
    # From the audit: the rules the text passed when the model wrote it, or, with `edited`, when
    # it was last edited through the API (an edit on this page approves, so leaves the queue).
    rules_passed_as_recorded: list[str]
    edited: bool


@bp.get("/experiments/<id:experiment_id>/review")
def review(experiment_id: int) -> str:
    session = db.session()
    experiment = get_experiment(session=session, experiment_id=experiment_id)
    segments = {s.id: s for s in segments_of(session=session, experiment_id=experiment_id)}
    checks = lint_config(current_app.extensions["copybandit.settings"])
    pending = session.exec(
        select(Variant)
        .where(
            Variant.experiment_id == experiment_id,
            Variant.status == VariantStatus.PENDING_REVIEW.value,
        )
        .order_by(col(Variant.segment_id), col(Variant.id))
    ).all()
    rows = []
    briefs = {}
    for variant in pending:
        segment = segments[variant.segment_id]
        if segment.id not in briefs:
            briefs[segment.id] = brief_for(session, experiment, segment)
        recorded = (variant.audit or {}).get("lint") or {}
        rows.append(
            PendingRow(
                variant=variant,
                segment=segment,
                report=lint(variant.text, briefs[segment.id], checks),
                rules_passed_as_recorded=list(recorded.get("passed") or []),
                edited=bool(recorded.get("edited")),
            )
        )
    return render_template("review.html", experiment=experiment, rows=rows)


@bp.post("/variants/<id:variant_id>/status")
def change_status(variant_id: int) -> Response | tuple[str, int, dict[str, str]]:
    action = request.form.get("action", "")
    # The review queue sends its one form (`shown-<id>`, and the row's box); the experiment
    # page, a form of this button alone (`shown`).
    shown = request.form.get("shown", request.form.get(f"shown-{variant_id}"))
    typed = review_edit(variant_id)
    if action == "approve" and typed is not None:
        # Approved as it read before, a line corrected in its box went live uncorrected.
        return _approve_as_typed(variant_id, typed, shown)
    variant = _apply(variant_id, action, shown, request.form.get("shown_status"))
    flash_about_segment(f"Variant #{variant.id} {ACTIONS[action].verb}.", variant.segment_id)
    return _return(variant.experiment_id)


@bp.post("/variants/<id:variant_id>/edit")
def edit_and_approve(variant_id: int) -> Response | tuple[str, int, dict[str, str]]:
    # The review page sends its one form, every row's box in it (`text-<id>`, `shown-<id>`); a
    # form of this row alone says `text` and `shown`.
    text = request.form.get(f"text-{variant_id}", request.form.get("text", ""))
    shown = request.form.get(f"shown-{variant_id}", request.form.get("shown"))
    return _approve_as_typed(variant_id, edited_text(text, shown), shown)


def _approve_as_typed(
    variant_id: int, typed: str | None, shown: str | None
) -> Response | tuple[str, int, dict[str, str]]:
    """Approves the line as typed over the text the page showed (`shown`), or, `typed` None
    (left as shown), as it reads: a line stored before text was stripped (a trailing space) was
    rewritten in its stored form, "after editing" no one did."""
    try:
        if typed is None:
            variant = _apply(variant_id, "approve", shown)
        else:
            variant = _approve_edit(variant_id, typed, shown)
    except TextMoved:
        return _refused_beside_text_now(variant_id)
    flash(f"Variant #{variant.id} {'approved' if typed is None else 'edited and approved'}.")
    return _return(variant.experiment_id)


def _refused_beside_text_now(variant_id: int) -> tuple[str, int, dict[str, str]]:
    """The refusal of an edit typed over text changed (through the API) since the page showed
    it. The edit was not stored; the error page shows it, as any refused form's text, beside
    someone else's edit: neither is lost, and the marketer can merge them and save again from
    the review page."""
    return error_page(_edited_since(variant_id), [_text_now(variant_id)])


def _text_now(variant_id: int) -> tuple[str, str]:
    # Read afresh: the session still holds the row as it read it before the refused write.
    db.session().rollback()
    return (
        f"#{variant_id} as it now reads",
        get_variant(session=db.session(), variant_id=variant_id).text,
    )


def _approve_edit(variant_id: int, text: str, shown: str | None) -> Variant:
    """Approves `text`, typed over the text whose version the page showed (`shown`). Text left
    as shown goes through `_apply`, approved as it reads: a line stored before text was stripped
    was rewritten in its stored form, and the reason said "after editing" no one did."""
    patch = validated(VariantPatch, {"text": text})
    assert patch.text is not None  # VariantPatch was given only text
    text_seen = _shown_text(shown)
    approve = ACTIONS["approve"]
    try:
        variant = approve_edited(
            session=db.session(),
            variant_id=variant_id,
            text=patch.text,
            reason=_reason(approve, note="after editing"),
            lint_config=lint_config(current_app.extensions["copybandit.settings"]),
            text_seen=text_seen,
        )
    except StatusMoved as moved:
        raise StatusMoved(
            _moved_on(variant_id, approve, moved.current), current=moved.current
        ) from None
    except TextMoved:
        raise _edited_since(variant_id) from None
    invalidate_snapshot(variant.experiment_id)
    return variant


@bp.post("/experiments/<id:experiment_id>/review")
def bulk(experiment_id: int) -> Response | tuple[str, int, dict[str, str]]:
    action = request.form.get("action", "")
    if action not in ("approve", "reject"):
        raise InvalidInput("action: must be approve or reject", field="action")
    ids = request.form.getlist("variant_id")
    if not ids:
        raise InvalidInput("variant_id: tick at least one variant", field="variant_id")
    done, refused = [], []
    # The edits typed into ticked rows that were refused: shown back, not lost with the redirect,
    # with the text as it now reads where it was edited (through the API) since, to merge.
    unsaved, now_stored = [], []
    for variant_id in sorted({form_int("variant_id", text) for text in ids}):
        variant = db.session().get(Variant, variant_id)
        if variant is None or variant.experiment_id != experiment_id:
            refused.append(f"#{variant_id}: not in this experiment")
            continue
        shown = request.form.get(f"shown-{variant_id}")
        typed = review_edit(variant_id)
        try:
            # Approving a line edited in its box approves the edit, as its own "Save edit and
            # approve" does: approved as it read before, the line went live unmended.
            if action == "approve" and typed is not None:
                _approve_edit(variant_id, typed, shown)
            else:
                _apply(variant_id, action, shown)
            done.append(variant_id)
        except APIError as exc:
            db.session().rollback()
            # A StatusMoved or TextMoved message already starts with the variant's id.
            moved = isinstance(exc, (StatusMoved, TextMoved))
            named = exc.message if moved else f"#{variant_id}: {exc.message}"
            refused.append(named)
            if action == "approve" and typed is not None:
                unsaved.append((f"Copy #{variant_id}", typed))
                if isinstance(exc, TextMoved):
                    now_stored.append(_text_now(variant_id))
    summary = _summary(ACTIONS[action].verb, done, refused)
    if unsaved:
        return error_page(Conflict(summary), now_stored, unsaved=unsaved)
    flash(summary, "error" if refused else "message")
    return redirect(url_for("dashboard.review", experiment_id=experiment_id), code=303)


# How many ids, and how many refusals with their reasons, one summary names. Flash messages travel
# in the session cookie, which a browser drops past 4 KB: a message per variant of a large bulk
# action lost them all, the confirmation with them.
_IDS_NAMED = 10
_REFUSALS_NAMED = 3


def _summary(verb: str, done: list[int], refused: list[str]) -> str:
    """One message for a bulk action: "Approved 1,503: #1, ..., and 1,493 more; 12 refused: #7 is
    no longer waiting for review: it is paused; ...; and 9 more." """
    summary = f"{verb.capitalize()} {len(done):,}"
    if done:
        summary += ": " + _capped([f"#{i}" for i in done], _IDS_NAMED, ", ")
    if refused:
        summary += f"; {len(refused):,} refused: " + _capped(refused, _REFUSALS_NAMED, "; ")
    return summary + "."


def _capped(items: list[str], at_most: int, separator: str) -> str:
    named = separator.join(items[:at_most])
    rest = len(items) - at_most
    return named + (f"{separator}and {rest:,} more" if rest > 0 else "")


def _apply(
    variant_id: int, action: str, shown: str | None, shown_status: str | None = None
) -> Variant:
    """`shown_status`, where the form says it: the status its page showed. Retire starts from
    active or paused; without it, retiring copy that the page showed paused went ahead once
    someone had resumed it meanwhile, and undid their decision for good."""
    if action not in ACTIONS:
        raise InvalidInput(f"action: must be one of {', '.join(ACTIONS)}", field="action")
    chosen = ACTIONS[action]
    if chosen.checks_text:
        shown = _shown_text(shown)
    starts_from = chosen.starts_from
    was = _status_shown(shown_status) if shown_status is not None else None
    if was is not None:
        starts_from = starts_from & {was}
    patch = VariantPatch(status=chosen.target, reason=_reason(chosen))
    try:
        variant = update_variant(
            session=db.session(),
            variant_id=variant_id,
            patch=patch,
            starts_from=starts_from,
            text_seen=shown if chosen.checks_text else None,
        )
    except StatusMoved as moved:
        if was is not None and moved.current in chosen.starts_from:
            message = f"#{variant_id} is no longer {_words(was)}: it is {_words(moved.current)}"
        else:
            message = _moved_on(variant_id, chosen, moved.current)
        raise StatusMoved(message, current=moved.current) from None
    except TextMoved:
        raise _edited_since(variant_id) from None
    invalidate_snapshot(variant.experiment_id)
    return variant


def _shown_text(shown: str | None) -> str:
    if not shown:
        raise InvalidInput(
            "shown: the form did not say which text it showed; reload the page",
            field="shown",
        )
    return shown


def _status_shown(text: str) -> VariantStatus:
    try:
        return VariantStatus(text)
    except ValueError:
        statuses = ", ".join(status.value for status in VariantStatus)
        raise InvalidInput(
            f"shown_status: must be one of {statuses}; reload the page", field="shown_status"
        ) from None


def _edited_since(variant_id: int) -> TextMoved:
    return TextMoved(f"#{variant_id} was edited since you read it")


def _reason(action: Action, note: str = "") -> str:
    # An account made before addresses with invisible formatting were refused (U+202E, U+200D)
    # still signs in; its address as stored fails a reason's rule for them, so every change that
    # marketer made was a 500, and the reason would show it as another address.
    # Cut: spelled out, 30 or more such characters in a 254-character address outgrew a
    # reason's 500 characters, and the change was a 500 again.
    who = cut(spelled_out(g.marketer.email), _WHO_AT_MOST)
    return f"{action.verb} by {who}" + (f" {note}" if note else "")


# Room for the longest verb and note beside it within a reason's 500 characters.
_WHO_AT_MOST = 400


def _moved_on(variant_id: int, action: Action, current: VariantStatus) -> str:
    return f"#{variant_id} {action.elsewhere}: it is {_words(current)}"


def _words(status: VariantStatus) -> str:
    return status.replace("_", " ")


def _return(experiment_id: int) -> Response:
    default = url_for("dashboard.experiment", experiment_id=experiment_id)
    return redirect(safe_next(request.form.get("next"), default), code=303)
