"""The audit trail's `edit` rows: a person's change to an experiment (its brief, a segment, its
lifecycle policy), saying who made it and each field's old and new value."""

from __future__ import annotations

from typing import Any

from service.errors import cut, quoted
from service.models import LifecycleEvent

# The audit's reason shows each old and new value cut to this many characters: a description
# runs to 5,000, and the trail is read a page of 500 at a time.
SHOWN_CHARS = 60


def edited(by: str, changes: dict[str, tuple[str, Any, Any]]) -> str:
    """The reason of an edit: `changes` is label -> (column, old, new), in the order shown."""
    said = "; ".join(
        f"{label} {shown(old)} → {shown(new)}" for label, (_, old, new) in changes.items()
    )
    return f"edited by {by}: {said}"


def edit_event(
    experiment_id: int, segment_id: int | None, reason: str, fields: list[str]
) -> LifecycleEvent:
    return LifecycleEvent(
        experiment_id=experiment_id,
        segment_id=segment_id,
        variant_id=None,
        action="edit",
        reason=reason,
        numbers={"fields": fields},
    )


def shown(value: Any) -> str:
    """A value as the audit's reason shows it: text quoted and cut to SHOWN_CHARS, none as none."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    return quoted(cut(str(value), SHOWN_CHARS))
