"""Changes to an experiment's brief after creation: its name, product, brand voice and
auto-approval, and its segments (a new one, or a persona rewritten). Each change is written under
the experiment's lock, as a policy change is, and recorded in the audit trail as an `edit` that
says who changed which fields, from what to what.

A brief the model found too long is held back from the lifecycle until it changes
(service.long_briefs), so an edit here is also how such a segment gets copy again.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, select

from service.edit_audit import edit_event, edited, shown
from service.errors import Conflict, quoted
from service.etags import EtagTest, etag_of, require_match
from service.experiments import find_segment, flush_named, get_experiment
from service.models import Experiment, Segment
from service.schemas import MAX_SEGMENTS, ExperimentPatch, SegmentIn, stored_form
from service.segment_guard import lock_row

# ExperimentPatch's fields by the column each changes, under the name the audit gives them.
_EXPERIMENT_FIELDS = {
    "name": "name",
    "brand_voice": "brand_voice",
    "auto_approve": "auto_approve",
}
_PRODUCT_FIELDS = {
    "name": "product_name",
    "description": "product_description",
    "price": "product_price",
    "url": "product_url",
}


class BriefMoved(Conflict):
    """Fields an edit changes are not what the editor's page showed: someone changed them since."""

    def __init__(self, current: dict[str, Any]) -> None:
        super().__init__(
            f"someone else changed {', '.join(current)} since this page was opened; save it "
            "again to replace theirs"
        )
        # Each moved field's label ("product.price") and its stored value.
        self.current = current


def update_experiment(
    *,
    session: Session,
    experiment_id: int,
    patch: ExperimentPatch,
    by: str,
    seen: dict[str, Any] | None = None,
    etag_matches: EtagTest | None = None,
) -> Experiment:
    """Apply the fields `patch` gives; one given with the value it has changes nothing and is left
    out of the audit. `by` says who, for the audit ("API key k1", a marketer's email). With `seen`
    (label -> the value the editor's page showed, for the fields it changes), only while each
    field it changes still holds that value: of two marketers changing one box, the last undid
    the other's unseen. Raises BriefMoved then, storing nothing; a field seen stale that the edit
    leaves as it now is refuses nothing. With `etag_matches` (an If-Match), only while it takes
    the brief's ETag (brief_etag): raises PreconditionFailed otherwise, storing nothing."""
    experiment = get_experiment(session=session, experiment_id=experiment_id)
    # Two edits at once each compare with what the other left, not with what both first read, so
    # the audit's old values are the ones each replaced.
    lock_row(session, experiment)
    require_match(
        session, etag_matches, brief_etag(experiment), what=f"experiment {experiment_id}'s brief"
    )
    wanted: dict[str, tuple[str, Any]] = {
        label: (column, getattr(patch, label))
        for label, column in _EXPERIMENT_FIELDS.items()
        if label in patch.model_fields_set
    }
    if patch.product is not None:
        wanted |= {
            f"product.{label}": (column, getattr(patch.product, label))
            for label, column in _PRODUCT_FIELDS.items()
            if label in patch.product.model_fields_set
        }
    changes = _changes(experiment, wanted)
    moved = _moved_since_seen(changes, seen or {})
    if moved:
        session.rollback()
        raise BriefMoved(moved)
    if not changes:
        session.rollback()
        return experiment
    for column, _, new in changes.values():
        setattr(experiment, column, new)
    session.add(experiment)
    # A name taken refuses the whole edit: none of its other fields is stored either.
    flush_named(session, experiment)
    session.add(edit_event(experiment_id, None, edited(by, changes), list(changes)))
    session.commit()
    return experiment


def brief_etag(experiment: Experiment) -> str:
    """A strong ETag of what PATCH /v1/experiments/<id> can change, quoted as the header writes it:
    a client's If-Match names the brief it read, and stays good while nothing of it changes."""
    return etag_of(
        {
            column: getattr(experiment, column)
            for column in [*_EXPERIMENT_FIELDS.values(), *_PRODUCT_FIELDS.values()]
        }
    )


def persona_etag(segment: Segment) -> str:
    """A strong ETag of what PATCH .../segments/<key> can change, its persona: copy added or
    changed under the segment leaves it as it was."""
    return etag_of({"description": segment.description})


def add_segment(*, session: Session, experiment_id: int, segment_in: SegmentIn, by: str) -> Segment:
    """A new segment, after the others (the first stays the default). It has no copy: the next
    lifecycle pass orders some, as for any segment short of its target."""
    experiment = get_experiment(session=session, experiment_id=experiment_id)
    # Two adds at once would take the same position, and a duplicate key's check the other's gap.
    lock_row(session, experiment)
    taken = session.exec(
        select(Segment.id).where(
            Segment.experiment_id == experiment_id, Segment.key == segment_in.key
        )
    ).first()
    if taken is not None:
        session.rollback()
        raise _duplicate_key(experiment_id, segment_in.key)
    count, last = session.exec(
        select(sa.func.count(), sa.func.max(Segment.position)).where(
            Segment.experiment_id == experiment_id
        )
    ).one()
    if count >= MAX_SEGMENTS:
        # Creation's limit holds for segments added later too.
        session.rollback()
        raise Conflict(
            f"experiment {experiment_id} has {count} segments, the most it may have", field="key"
        )
    segment = Segment(
        experiment_id=experiment_id,
        key=segment_in.key,
        description=segment_in.description,
        position=(last if last is not None else -1) + 1,
    )
    session.add(segment)
    try:
        session.flush()
    except sa.exc.IntegrityError:
        # A writer that went around the lock (SQL by hand) added the key meanwhile.
        session.rollback()
        raise _duplicate_key(experiment_id, segment_in.key) from None
    session.add(
        edit_event(
            experiment_id,
            segment.id,
            f"added by {by}: segment {quoted(segment.key)}, "
            f"description {shown(segment.description)}",
            ["key", "description"],
        )
    )
    session.commit()
    return segment


class PersonaMoved(Conflict):
    """The persona is not the one the editor's page showed: someone changed it since."""

    def __init__(self, message: str, *, current: str) -> None:
        super().__init__(message, field="description")
        self.current = current


def update_segment(
    *,
    session: Session,
    experiment_id: int,
    key: str,
    description: str,
    by: str,
    description_seen: str | None = None,
    etag_matches: EtagTest | None = None,
) -> Segment:
    """Rewrite the segment's persona; the same text changes nothing and is left out of the
    audit. With `description_seen` (the persona the editor's page showed), only while it is still
    the stored one: two marketers saving one persona each replaced it unseen, the last one silently
    undoing the other's. Raises PersonaMoved then. With `etag_matches` (an If-Match), only while
    it takes the persona's ETag (persona_etag): raises PreconditionFailed otherwise."""
    experiment = get_experiment(session=session, experiment_id=experiment_id)
    # The key is always the address's: the API's path, the dashboard's page.
    segment = find_segment(
        session=session, experiment_id=experiment_id, key=key, field="segment_key"
    )
    lock_row(session, experiment)
    session.refresh(segment)
    require_match(
        session,
        etag_matches,
        persona_etag(segment),
        what=f"the persona of segment {quoted(key)}",
    )
    if description_seen is not None and not _same(description_seen, segment.description):
        session.rollback()
        raise PersonaMoved(
            f"someone else changed the persona of {quoted(key)} since this page was opened; it "
            "now reads as shown above, and what you typed is kept below: save it again to "
            "replace theirs",
            current=segment.description,
        )
    changes = _changes(segment, {"description": ("description", description)})
    if not changes:
        session.rollback()
        return segment
    segment.description = description
    session.add(segment)
    session.add(edit_event(experiment_id, segment.id, edited(by, changes), list(changes)))
    session.commit()
    return segment


def _duplicate_key(experiment_id: int, key: str) -> Conflict:
    return Conflict(f"experiment {experiment_id} already has a segment {quoted(key)}", field="key")


def _changes(row: Any, wanted: dict[str, tuple[str, Any]]) -> dict[str, tuple[str, Any, Any]]:
    """label -> (column, old, new) for each wanted value that differs from the row's."""
    return {
        label: (column, getattr(row, column), new)
        for label, (column, new) in wanted.items()
        if getattr(row, column) != new
    }


def _moved_since_seen(
    changes: dict[str, tuple[str, Any, Any]], seen: dict[str, Any]
) -> dict[str, Any]:
    """label -> stored value for each field changing from a value other than the one seen."""
    return {
        label: old
        for label, (_, old, _) in changes.items()
        if label in seen and not _same(seen[label], old)
    }


def _same(seen: Any, stored: Any) -> bool:
    # Text as stored: a browser sends the page's copy back with CRLF line breaks.
    if isinstance(seen, str) and isinstance(stored, str):
        return stored_form(seen) == stored_form(stored)
    return bool(seen == stored)
