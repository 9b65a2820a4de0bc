"""Experiments, their segments and variants: the data functions the API and the CLI share."""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.orm import defer
from sqlmodel import Session, col, select

from generation.lint import LintConfig
from service.copy_checks import audit_after_edit
from service.db import rows_changed
from service.edit_audit import edit_event, edited
from service.errors import Conflict, InvalidInput, NotFound, cut, first_problem, quoted
from service.etags import EtagTest, etag_of, require_match
from service.lifecycle import assign_prior
from service.models import Experiment, Origin, Segment, Variant, VariantStatus, utcnow
from service.policy import LifecyclePolicy, policy_shown
from service.schemas import (
    ExperimentCreate,
    SegmentKey,
    VariantCreate,
    VariantPatch,
    stored_form,
)
from service.segment_guard import another_stays_active, lock_row, lock_segment

Row = TypeVar("Row")
_SEGMENT_KEY: TypeAdapter[str] = TypeAdapter(SegmentKey)

# Which status changes a person may make by hand. Pending copy is reviewed once; retired and
# rejected copy stays out, so its history is never mixed with a second life.
_TRANSITIONS: dict[VariantStatus, set[VariantStatus]] = {
    VariantStatus.PENDING_REVIEW: {VariantStatus.ACTIVE, VariantStatus.REJECTED},
    VariantStatus.ACTIVE: {VariantStatus.PAUSED, VariantStatus.RETIRED},
    VariantStatus.PAUSED: {VariantStatus.ACTIVE, VariantStatus.RETIRED},
    VariantStatus.RETIRED: set(),
    VariantStatus.REJECTED: set(),
}


def create_experiment(*, session: Session, experiment_create: ExperimentCreate) -> Experiment:
    product = experiment_create.product
    experiment = Experiment(
        name=experiment_create.name,
        product_name=product.name,
        product_description=product.description,
        product_price=product.price,
        product_url=product.url,
        sticky=experiment_create.sticky,
        brand_voice=experiment_create.brand_voice,
        auto_approve=experiment_create.auto_approve,
        policy=(
            experiment_create.policy.model_dump(exclude_unset=True)
            if experiment_create.policy is not None
            else None
        ),
    )
    session.add(experiment)
    flush_named(session, experiment)
    for position, segment in enumerate(experiment_create.segments):
        session.add(
            Segment(
                experiment_id=experiment.id,  # type: ignore[arg-type]
                key=segment.key,
                description=segment.description,
                position=position,
            )
        )
    session.commit()
    return experiment


def flush_named(session: Session, experiment: Experiment) -> None:
    """Write the experiment's row, or roll the whole transaction back and answer 409 when another
    experiment has its name."""
    # Read first: the rollback expires a stored row, whose name then reads as it was before.
    name = experiment.name
    try:
        session.flush()
    except sa.exc.IntegrityError:
        session.rollback()
        raise Conflict(f"an experiment named {quoted(name)} already exists", field="name") from None


def fetch(session: Session, model: type[Row], row_id: int, *, what: str, field: str) -> Row:
    """The row with this primary key, or a 404 naming the field the id came in."""
    row = session.get(model, row_id)
    if row is None:
        raise NotFound(f"no {what} with id {row_id}", field=field)
    return row


def get_experiment(*, session: Session, experiment_id: int) -> Experiment:
    return fetch(session, Experiment, experiment_id, what="experiment", field="experiment_id")


def list_experiments(
    *,
    session: Session,
    after: int | None = None,
    before: int | None = None,
    limit: int | None = None,
    newest_first: bool = False,
) -> Sequence[Experiment]:
    """Oldest first, or `newest_first`; `after` an experiment id: the `limit` just newer than it;
    `before` one: the `limit` just older than it; neither: the `limit` the list starts with.
    Cut by id, so an experiment created while someone pages moves no page's edges."""
    query = select(Experiment)
    if after is not None:
        query = query.where(col(Experiment.id) > after)
    if before is not None:
        query = query.where(col(Experiment.id) < before)
    # The `limit` nearest the cursor, read from it outwards; then put in the list's order.
    upwards = after is not None or (before is None and not newest_first)
    by_id = col(Experiment.id) if upwards else col(Experiment.id).desc()
    page = session.exec(query.order_by(by_id).limit(limit)).all()
    return page[::-1] if upwards == newest_first else page


def contents_of(
    *, session: Session, experiment_ids: Collection[int], with_audit: bool = False
) -> tuple[Sequence[Sequence[Any]], Sequence[Sequence[Any]]]:
    """The segments (by position) and variants (by id) of many experiments in two queries; one
    pair of queries each made a list of 300 experiments 602 queries. Segments are rows of
    (experiment_id, id, key, description); variants of (experiment_id, segment_id, id, text,
    origin, status, status_reason, impressions, conversions, created_at, updated_at, audit), the
    audit (a generated line's whole prompt) read only `with_audit`, None otherwise. Rows, not
    ORM objects: building 31,000 of those for a page of 100 experiments of 300 variants each, and
    the garbage collector's passes over them, took most of its 1.6 s."""
    segments = session.execute(
        sa.select(
            col(Segment.experiment_id),
            col(Segment.id),
            col(Segment.key),
            col(Segment.description),
        )
        .where(col(Segment.experiment_id).in_(experiment_ids))
        .order_by(col(Segment.position))
    ).all()
    variants = _variant_rows(
        session, col(Variant.experiment_id).in_(experiment_ids), with_audit=with_audit
    )
    return segments, variants


def segment_contents_of(*, session: Session, segment_id: int) -> Sequence[Sequence[Any]]:
    """The segment's variants (by id), as contents_of's rows, the audit read. Its own rows only:
    GET and PATCH .../segments/<key> read every variant of the experiment as ORM objects to show
    one segment's, 120-150 ms of CPU for one of 50 segments of 100 variants."""
    return _variant_rows(session, col(Variant.segment_id) == segment_id, with_audit=True)


def _variant_rows(
    session: Session, where: sa.ColumnElement[bool], *, with_audit: bool
) -> Sequence[Sequence[Any]]:
    columns: list[Any] = [
        col(Variant.experiment_id),
        col(Variant.segment_id),
        col(Variant.id),
        col(Variant.text),
        col(Variant.origin),
        col(Variant.status),
        col(Variant.status_reason),
        col(Variant.impressions),
        col(Variant.conversions),
        col(Variant.created_at),
        col(Variant.updated_at),
    ]
    # Left out, not read: the list's 30,000 prompts would be most of its read.
    columns.append(Variant.audit if with_audit else sa.null())
    return session.execute(sa.select(*columns).where(where).order_by(col(Variant.id))).all()


def segments_of(*, session: Session, experiment_id: int) -> Sequence[Segment]:
    query = select(Segment).where(Segment.experiment_id == experiment_id)
    return session.exec(query.order_by(col(Segment.position))).all()


def variants_of(
    *, session: Session, experiment_id: int, with_audit: bool = True
) -> Sequence[Variant]:
    """By id. Without the audit (a generated line's whole prompt) for readers that show none:
    it is left unread, and read by itself if touched while the session is open. Such a variant
    must not be dumped (`model_dump` leaves the unread audit out, which `VariantOut` then shows
    as null, "not generated") nor read after its session closes (DetachedInstanceError)."""
    return _variants(session, col(Variant.experiment_id) == experiment_id, with_audit=with_audit)


def segment_variants_of(
    *, session: Session, segment_id: int, with_audit: bool = True
) -> Sequence[Variant]:
    """The segment's variants, as variants_of gives them."""
    return _variants(session, col(Variant.segment_id) == segment_id, with_audit=with_audit)


def _variants(
    session: Session, where: sa.ColumnElement[bool], *, with_audit: bool
) -> Sequence[Variant]:
    query = select(Variant).where(where)
    if not with_audit:
        query = query.options(defer(Variant.audit))  # type: ignore[arg-type]
    return session.exec(query.order_by(col(Variant.id))).all()


def variant_texts(
    *, session: Session, experiment_id: int, variant_ids: Collection[int]
) -> dict[int, str]:
    """The texts of the experiment's variants among `variant_ids`, by id, read as rows: the audit
    trail's page names at most a page of variants, and read the experiment's every one as an ORM
    object for their texts."""
    if not variant_ids:
        return {}
    rows = session.execute(
        sa.select(col(Variant.id), col(Variant.text)).where(
            col(Variant.experiment_id) == experiment_id, col(Variant.id).in_(sorted(variant_ids))
        )
    )
    return {variant_id: text for variant_id, text in rows}


# A little longer than the longest key, so that any key that could exist is shown whole.
_KEY_SHOWN = 48


def find_segment(
    *, session: Session, experiment_id: int, key: str, field: str = "segment"
) -> Segment:
    """The experiment's segment with this key, or a 404 naming `field`, where the key came in: a
    body's `segment`, or the path's `segment_key`."""
    # Keys are made as SegmentKey slugs, so another key names none; it is not looked up, since one
    # with a NUL (from a URL) is a database error on PostgreSQL.
    segment = (
        session.exec(
            select(Segment).where(Segment.experiment_id == experiment_id, Segment.key == key)
        ).first()
        if _is_segment_key(key)
        else None
    )
    if segment is None:
        # No key is longer than 40 characters, so a longer one is shown cut: a 3,000-character
        # path segment was quoted back whole, filling the error and every log line with it.
        raise NotFound(
            f"experiment {experiment_id} has no segment {quoted(cut(key, _KEY_SHOWN))}",
            field=field,
        )
    return segment


def _is_segment_key(key: str) -> bool:
    try:
        _SEGMENT_KEY.validate_python(key)
    except ValidationError:
        return False
    return True


def add_variant(*, session: Session, experiment_id: int, variant_create: VariantCreate) -> Variant:
    experiment = get_experiment(session=session, experiment_id=experiment_id)
    segment = find_segment(session=session, experiment_id=experiment_id, key=variant_create.segment)
    # The segment's lock, taken there, holds other adds back until this one is stored: two at
    # once (a double click on "Add and serve") each found no control, and both stored theirs.
    _refuse_twin(session, segment, variant_create.text)
    # A second control was never guarded against nor retirable.
    if variant_create.origin == Origin.CONTROL and _has_control(session, segment.id):  # type: ignore[arg-type]
        session.rollback()
        raise Conflict(
            f"segment {segment.key!r} already has a control variant; retire it to add another",
            field="origin",
        )
    variant = Variant(
        experiment_id=experiment_id,
        segment_id=segment.id,  # type: ignore[arg-type]
        text=variant_create.text,
        origin=variant_create.origin,
        status=VariantStatus.ACTIVE,
        status_reason="added by hand",
    )
    # Copy is still added while the stored policy does not validate, at the default policy's prior.
    assign_prior(session, variant, policy_shown(experiment.policy)[0])
    session.commit()
    return variant


def update_policy(
    *,
    session: Session,
    experiment_id: int,
    changes: LifecyclePolicy,
    by: str,
    etag_matches: EtagTest | None = None,
) -> Experiment:
    """Merge the fields given into the stored policy; the result must be valid as a whole. A stored
    field this version does not know (written by another) is dropped: kept, it refused every PATCH,
    the one way to make the policy valid again. Each rule whose value changes is named in one
    `edit` row of the audit trail, with `by` ("API key k1"); a field given with the value it has
    (its default, if it was left out) changes no rule and writes no row. With `etag_matches` (an
    If-Match), only while it takes the policy's ETag (policy_etag): raises PreconditionFailed
    otherwise."""
    experiment = get_experiment(session=session, experiment_id=experiment_id)
    # Two changes at once each merged into the policy as it was before either and wrote it back
    # whole: one acknowledged change was lost. The second merges into the first's result.
    lock_row(session, experiment)
    require_match(
        session,
        etag_matches,
        policy_etag(experiment),
        what=f"experiment {experiment_id}'s policy",
    )
    known = {
        name: value
        for name, value in (experiment.policy or {}).items()
        if name in LifecyclePolicy.model_fields
    }
    merged = {**known, **changes.model_dump(exclude_unset=True)}
    try:
        LifecyclePolicy.model_validate(merged, context={"sent": changes.model_fields_set})
    except ValidationError as exc:
        message, field = first_problem(exc)
        raise InvalidInput(message, field=field or "policy") from None
    changed = _rules_changed(known, merged)
    experiment.policy = merged
    session.add(experiment)
    if merged.get("discount_per_hour") is None:
        _undo_discounting(session, experiment_id)
    if changed:
        session.add(edit_event(experiment_id, None, edited(by, changed), list(changed)))
    session.commit()
    return experiment


def _rules_changed(
    before: dict[str, object], after: dict[str, object]
) -> dict[str, tuple[str, object, object]]:
    """ "policy.<rule>" -> (rule, old, new) for each rule whose value changes, a rule left out of
    either read as its default: the value the lifecycle runs on, as GET .../policy shows it."""
    changed = {}
    for name, field in LifecyclePolicy.model_fields.items():
        old, new = before.get(name, field.default), after.get(name, field.default)
        if old != new:
            changed[f"policy.{name}"] = (name, old, new)
    return changed


def policy_etag(experiment: Experiment) -> str:
    """A strong ETag of the policy as it is shown, defaults filled in: a PATCH writing a default
    that was left out changes no one's If-Match."""
    policy, error = policy_shown(experiment.policy)
    return etag_of({"policy": policy.model_dump(mode="json"), "error": error})


def _undo_discounting(session: Session, experiment_id: int) -> None:
    """Without a discount every piece of evidence counts in full again. The posterior reads the
    folds' decayed totals whenever a fold happened, so turning the discount off had left the
    evidence up to the last fold shrunk for good (Beta(1, 11) for a variant at 500 of 1,000)."""
    session.execute(
        sa.update(Variant)
        .where(col(Variant.experiment_id) == experiment_id, col(Variant.folded_at).is_not(None))
        .values(
            decayed_successes=0.0,
            decayed_failures=0.0,
            folded_impressions=0,
            folded_conversions=0,
            folded_at=None,
        )
    )


# The copy hand-written copy, or an edit of pending copy, may not repeat: a second variant with
# the same text splits one line's traffic and evidence between two arms, and is what submitting
# the form twice (Back, then Add again) left, or an edit of a generated line into its neighbour.
# Paused copy counts: resuming it keeps its evidence. Retired and rejected copy does not: neither
# comes back (see _TRANSITIONS), so writing the text again is the one way to serve it again, a
# person's decision, and it starts on fresh evidence. Generation refuses more (any variant of the
# segment, retired ones included, and lines a word apart: generation_jobs), since a model
# reheating copy the lifecycle retired spends traffic without a person asking for it.
_TWIN_STATUSES = (VariantStatus.ACTIVE, VariantStatus.PAUSED, VariantStatus.PENDING_REVIEW)
_TWIN_HINTS = {
    VariantStatus.ACTIVE: "it is being served",
    VariantStatus.PAUSED: "it is paused: resume it instead",
    VariantStatus.PENDING_REVIEW: "it is waiting for review: approve it instead",
}


def _refuse_twin(
    session: Session, segment: Segment, text: str, *, editing: int | None = None
) -> None:
    """Raise a 409 naming text, rolled back, when the segment has copy `text` would repeat
    (`editing`: the variant the text is for, which is no twin of itself). Takes the segment's
    lock (lock_row), held to the end of the transaction: two adds or edits at once each found no
    twin before either had stored its text, and both stored it."""
    lock_row(session, segment)
    twin = _same_copy(session, segment.id, text, other_than=editing)  # type: ignore[arg-type]
    if twin is not None:
        session.rollback()
        raise _twin_refused(twin, segment.key)


def _same_copy(
    session: Session, segment_id: int, text: str, *, other_than: int | None = None
) -> tuple[int, VariantStatus] | None:
    """The id and status of the segment's live, paused or pending variant, other than
    `other_than`, whose text is `text` (which the schema has normalised), read in the same form:
    copy stored before generated lines were NFC may not be."""
    kept = [
        col(Variant.segment_id) == segment_id,
        col(Variant.status).in_([status.value for status in _TWIN_STATUSES]),
    ]
    if other_than is not None:
        kept.append(col(Variant.id) != other_than)
    query = (
        sa.select(col(Variant.id), col(Variant.text), col(Variant.status))
        .where(*kept)
        .order_by(col(Variant.id))
    )
    for variant_id, stored, status in session.execute(query):
        if stored_form(stored) == text:
            return variant_id, VariantStatus(status)
    return None


def _twin_refused(twin: tuple[int, VariantStatus], segment_key: str) -> Conflict:
    variant_id, status = twin
    return Conflict(
        f"segment {quoted(segment_key)} already has this copy as variant #{variant_id}; "
        f"{_TWIN_HINTS[status]}",
        field="text",
    )


def _has_control(session: Session, segment_id: int) -> bool:
    """A live control (active or paused): a retired one never comes back, and counting it left
    the segment without a guardrail for good, refusing every new control."""
    query = select(Variant.id).where(
        Variant.segment_id == segment_id,
        Variant.origin == Origin.CONTROL,
        Variant.status != VariantStatus.RETIRED,
    )
    return session.exec(query).first() is not None


def get_variant(*, session: Session, variant_id: int) -> Variant:
    return fetch(session, Variant, variant_id, what="variant", field="variant_id")


class StatusMoved(Conflict):
    """The variant is not in any status the caller expected: its page was drawn before someone
    changed it."""

    def __init__(self, message: str, *, current: VariantStatus) -> None:
        super().__init__(message, field="status")
        self.current = current


class TextMoved(Conflict):
    """The variant's text is not the one the caller's page showed: it was edited since."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field="text")


def _changed_by(current: VariantStatus, target: VariantStatus, by: str | None) -> str:
    """Worded as the dashboard's reasons are ("approved by mia@example.com")."""
    if by is None:
        return "changed by hand"
    if target is VariantStatus.ACTIVE:
        verb = "resumed" if current is VariantStatus.PAUSED else "approved"
    else:
        verb = target.value
    return f"{verb} by {by}"


def text_version(text: str) -> str:
    """A short stand-in for `text` that a page sends back with its buttons. A pending variant's
    text may be edited after the page was drawn; approving it must not put the new text live
    under the name of someone who never read it."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def variant_etag(variant: Variant) -> str:
    """A strong ETag of what PATCH /v1/variants/<id> can change: its status and its text (a status
    change rewrites the reason with it). Its counts move with every decision, and are left out."""
    return etag_of({"status": variant.status, "text": text_version(variant.text)})


def update_variant(
    *,
    session: Session,
    variant_id: int,
    patch: VariantPatch,
    starts_from: Collection[VariantStatus] | None = None,
    text_seen: str | None = None,
    lint_config: LintConfig | None = None,
    by: str | None = None,
    etag_matches: EtagTest | None = None,
) -> Variant:
    """Apply `patch`. A status change with no reason of its own records `by` (who made it) in
    the variant's reason, as "approved by API key k1". With `starts_from`, only to a variant in
    one of those statuses; with `text_seen` (a `text_version`), only to one whose text is still
    that. The update below is conditional on the status and text read here, so a change that
    lands meanwhile is refused too. A text edit needs `lint_config`: the new text's lint replaces
    the generated line's in the variant's audit; it is refused (409, text) where another variant
    of the segment has that text, as an add is. With `etag_matches` (an If-Match), only while it
    takes the variant's ETag (variant_etag), read here and held by the same conditional update:
    raises PreconditionFailed otherwise.
    """
    variant = get_variant(session=session, variant_id=variant_id)
    require_match(session, etag_matches, variant_etag(variant), what=f"variant {variant_id}")
    current = VariantStatus(variant.status)
    if starts_from is not None and current not in starts_from:
        raise StatusMoved(f"variant {variant_id} is {current}", current=current)
    if text_seen is not None and text_version(variant.text) != text_seen:
        raise _text_moved(variant_id)
    values: dict[str, object] = {"updated_at": utcnow()}
    if patch.text is not None:
        if current is not VariantStatus.PENDING_REVIEW:
            raise Conflict(
                f"only pending variants can be edited; this one is {current}", field="text"
            )
        if lint_config is None:
            raise TypeError("update_variant: a text edit needs lint_config to check the new text")
        # As a status it already has: the text it already has is no edit. Recorded as one, the
        # generated line's lint gave way to "edited", and the review queue said it was mended.
        if patch.text == variant.text:
            return variant
        values["text"] = patch.text
        values["audit"] = audit_after_edit(session, variant, patch.text, lint_config)
        _refuse_twin(session, _segment_of(session, variant), patch.text, editing=variant_id)
    else:
        assert patch.status is not None  # VariantPatch guarantees status or text
        target = patch.status
        if target is current:
            return variant
        if target not in _TRANSITIONS[current]:
            raise Conflict(f"a variant cannot go from {current} to {target}", field="status")
        # Only a change that takes copy out of service reads what another writer may change
        # (is another still active?). An approval, a resume or a rejection writes this row alone
        # and reads nothing a lifecycle pass writes: a pass that planned without it ends as if it
        # had run first, so making it wait out the pass's Monte Carlo would change no outcome.
        if current is VariantStatus.ACTIVE:
            lock_segment(session, _segment_of(session, variant))
            if _is_last_active(session, variant):
                session.rollback()
                raise _last_active()
        values["status"] = target.value
        values["status_reason"] = patch.reason or _changed_by(current, target, by)
    # Conditional on the status we checked: a concurrent change makes this a 409, not a lost write.
    update = sa.update(Variant).where(
        col(Variant.id) == variant_id, col(Variant.status) == current.value
    )
    if "status" in values and current is VariantStatus.ACTIVE:
        update = update.where(another_stays_active())
    if text_seen is not None or etag_matches is not None:
        update = update.where(col(Variant.text) == variant.text)
    changed = rows_changed(session, update.values(**values))
    if changed != 1:
        session.rollback()
        if etag_matches is not None:
            # A change that landed after the read above: the same refusal as one before it.
            session.expire_all()
            now = get_variant(session=session, variant_id=variant_id)
            require_match(session, etag_matches, variant_etag(now), what=f"variant {variant_id}")
        if "status" in values and current is VariantStatus.ACTIVE:
            session.expire_all()
            if session.get(Variant, variant_id).status == current.value:  # type: ignore[union-attr]
                raise _last_active()
        # An edit that landed after the read above: the same refusal as one that landed before.
        if text_seen is not None and text_version(_text_now(session, variant_id)) != text_seen:
            raise _text_moved(variant_id)
        raise Conflict("the variant changed while this request ran; try again", field="status")
    session.commit()
    session.refresh(variant)
    return variant


def _segment_of(session: Session, variant: Variant) -> Segment:
    segment = session.get(Segment, variant.segment_id)
    assert segment is not None  # the foreign key
    return segment


def _text_moved(variant_id: int) -> TextMoved:
    return TextMoved(f"variant {variant_id} was edited since it was read")


def _text_now(session: Session, variant_id: int) -> str:
    return session.execute(
        sa.select(col(Variant.text)).where(col(Variant.id) == variant_id)
    ).scalar_one()


def _last_active() -> Conflict:
    return Conflict(
        "this is the segment's last active variant; activate another first", field="status"
    )


def _is_last_active(session: Session, variant: Variant) -> bool:
    query = select(sa.func.count()).where(
        Variant.segment_id == variant.segment_id, Variant.status == VariantStatus.ACTIVE
    )
    return session.exec(query).one() <= 1


def approve_edited(
    *,
    session: Session,
    variant_id: int,
    text: str,
    reason: str,
    lint_config: LintConfig,
    text_seen: str,
) -> Variant:
    """Replace a pending variant's text and approve it, in one UPDATE conditional on it still
    waiting for review with the text the editor's page showed (`text_seen`, a `text_version`). As
    an edit and then an approval, two marketers saving at once each stored their text before
    either approved, and the first approval put the other's text live under its own name. Without
    the text, an edit typed over the page's text replaced one made through the API since, unseen.
    The new text's lint replaces the generated line's in the audit; the text it has already
    makes this an approval, its audit as it was. Raises StatusMoved when the
    variant is no longer pending, TextMoved when its text is no longer the one shown, Conflict
    (text) when another variant of the segment has the new text, as an add would be."""
    variant = get_variant(session=session, variant_id=variant_id)
    if text_version(variant.text) != text_seen:
        current = VariantStatus(variant.status)
        if current is not VariantStatus.PENDING_REVIEW:
            raise StatusMoved(f"variant {variant_id} is {current}", current=current)
        raise _text_moved(variant_id)
    # Saved as it was shown, it is an approval: the generated line's lint still describes it.
    audit = (
        variant.audit
        if text == variant.text
        else audit_after_edit(session, variant, text, lint_config)
    )
    # Last before the write: on SQLite the lock holds every writer back.
    _refuse_twin(session, _segment_of(session, variant), text, editing=variant_id)
    update = (
        sa.update(Variant)
        .where(
            col(Variant.id) == variant_id,
            col(Variant.status) == VariantStatus.PENDING_REVIEW.value,
            col(Variant.text) == variant.text,
        )
        .values(
            text=text,
            audit=audit,
            status=VariantStatus.ACTIVE.value,
            status_reason=reason,
            updated_at=utcnow(),
        )
    )
    if rows_changed(session, update) != 1:
        session.rollback()
        session.refresh(variant)
        current = VariantStatus(variant.status)
        if current is VariantStatus.PENDING_REVIEW:
            raise _text_moved(variant_id)
        raise StatusMoved(f"variant {variant_id} is {current}", current=current)
    session.commit()
    session.refresh(variant)
    return variant
