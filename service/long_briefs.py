"""Briefs the model cannot take. A job that finds a segment's prompt too long for the model records
it against the brief as it stood and the model it was configured with; the lifecycle then orders
no copy for that segment until the brief changes or the configured model does (one with a longer
context is the other remedy), and the dashboard says why.

A brief's limits are in characters, the model's context in tokens, and the web workers do not load
the tokenizer: 2,000 characters of Chinese come to some 19,000 tokens against 4,096. Every job for
such a segment failed, and every pass ordered another, loading the model each time.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from service.errors import Conflict, quoted
from service.models import (
    JOB_INTERRUPTED,
    Experiment,
    GenerationJob,
    JobOutcome,
    JobStatus,
    LifecycleEvent,
    Segment,
    jobs_covering,
    jobs_covering_any,
)

if TYPE_CHECKING:
    from generation.writer import PromptTooLong

# Where a job's result keeps them: segment key -> {"brief", "tokens", "limit", "model"}, the model
# as configured (Settings.model: a folder, or "" for the bundled default).
BRIEFS_TOO_LONG = "briefs_too_long"


def brief_fingerprint(experiment: Experiment, segment: Segment) -> str:
    """The fields a marketer edits that go into the segment's prompt. The best lines it quotes
    are left out: they change with traffic, and a pass would order again whenever they did."""
    fields = [
        experiment.product_name,
        experiment.product_description,
        experiment.product_price,
        experiment.brand_voice,
        segment.description,
    ]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:16]


def too_long_record(
    experiment: Experiment, segment: Segment, exc: PromptTooLong, *, model: str
) -> dict[str, Any]:
    """`model`: the job's, as configured (Settings.model)."""
    return {
        "brief": brief_fingerprint(experiment, segment),
        "tokens": exc.tokens,
        "limit": exc.limit,
        "model": _model_folder(model),
    }


def _model_folder(model: str) -> str:
    """The configured model as one spelling of its folder ("" stays the bundled model's): a
    server given `models/big` and a cron `lifecycle --once` given `/srv/cb/models/big/` name one
    model, and compared as written, each pass would have ordered a held segment a job that fails."""
    return os.path.realpath(model) if model else ""


# What to do about it: the brief's fields, or the model.
_REMEDY = (
    "shorten it (the product description, brand voice or the segment's persona), or configure a "
    "model with a longer context"
)


def refusal(record: dict[str, Any]) -> str:
    tokens, limit = record.get("tokens"), record.get("limit")
    if not isinstance(tokens, int) or not isinstance(limit, int):
        return f"brief too long for the model; {_REMEDY}"
    return f"brief too long for the model: {tokens:,} tokens of {limit:,}; {_REMEDY}"


def last_record(session: Session, segment: Segment) -> dict[str, Any] | None:
    """What the last job to run to an end (_found_of_briefs) that covered the segment found of
    its brief: a too_long_record, or None when it found nothing wrong with it."""
    recorded = last_recorded(session, segment)
    return None if recorded is None else recorded[0]


def last_recorded(session: Session, segment: Segment) -> tuple[dict[str, Any], int] | None:
    """last_record, where there is one, with the id of the job that wrote it: the job a `hold`
    row names."""
    last = session.exec(
        select(GenerationJob)
        .where(jobs_covering(segment), _found_of_briefs())
        .order_by(col(GenerationJob.id).desc())
        .limit(1)
    ).first()
    if last is None or last.id is None:
        return None
    record = _record_in(last.result, segment)
    return None if record is None else (record, last.id)


def last_records(session: Session, segments: Sequence[Segment]) -> dict[int, dict[str, Any] | None]:
    """last_record of each of `segments`, by id, in two queries however many there are (the
    dashboard shows every segment's): the last job each one's covering jobs ended with, then
    what those jobs found."""
    ids = [segment.id for segment in segments]
    if not ids:
        return {}
    latest: dict[tuple[int, int | None], int] = {
        (experiment_id, segment_id): job_id
        for experiment_id, segment_id, job_id in session.execute(
            sa.select(
                col(GenerationJob.experiment_id),
                col(GenerationJob.segment_id),
                sa.func.max(GenerationJob.id),
            )
            .where(jobs_covering_any(segments), _found_of_briefs())
            .group_by(col(GenerationJob.experiment_id), col(GenerationJob.segment_id))
        )
    }
    # A job for every segment of the experiment (no segment_id) covers each one too.
    last = {
        segment.id: max(
            filter(
                None,
                (
                    latest.get((segment.experiment_id, segment.id)),
                    latest.get((segment.experiment_id, None)),
                ),
            ),
            default=None,
        )
        for segment in segments
        if segment.id is not None
    }
    found = {job_id for job_id in last.values() if job_id is not None}
    results: dict[int | None, dict[str, Any] | None] = {}
    if found:
        query = sa.select(col(GenerationJob.id), col(GenerationJob.result))
        results = {
            i: result
            for i, result in session.execute(query.where(col(GenerationJob.id).in_(found)))
        }
    return {
        segment.id: _record_in(results.get(last[segment.id]), segment)
        for segment in segments
        if segment.id is not None
    }


def _found_of_briefs() -> sa.ColumnElement[bool]:
    """The jobs whose end says what they found of the briefs they cover: those that ran to an
    end. Not one cancelled, nor one written off as interrupted: one given up while queued, or
    whose worker died before it stored a segment's copy, has no result, and as the last job to
    end it lifted the holds it never read or had skipped, so the next pass ordered a job that
    loaded the model to fail as before. Nor does one begin a hold: it writes no hold row."""
    return sa.and_(
        col(GenerationJob.status).in_([JobStatus.SUCCEEDED.value, JobStatus.FAILED.value]),
        sa.or_(
            col(GenerationJob.outcome) != JobOutcome.INTERRUPTED.value,
            # A server of the release before migration 0015 records no outcome, and writes its
            # jobs off as it stops, mid-rollout: its error's words alone say it was interrupted.
            sa.and_(
                col(GenerationJob.outcome).is_(None),
                sa.not_(sa.func.coalesce(col(GenerationJob.error), "").startswith(JOB_INTERRUPTED)),
            ),
        ),
    )


def _record_in(result: dict[str, Any] | None, segment: Segment) -> dict[str, Any] | None:
    record = (result or {}).get(BRIEFS_TOO_LONG, {}).get(segment.key)
    return record if isinstance(record, dict) else None


def brief_refused(
    session: Session, experiment: Experiment, segment: Segment, *, model: str
) -> str | None:
    """Why no copy is ordered for the segment: the last job to end that covered it found its
    brief, unchanged since, too long for the model, which is still the one configured (`model`,
    as Settings.model has it); None otherwise. Keyed on the brief alone, pointing the service at
    a model with a longer context still ordered no copy, and the dashboard said to shorten it."""
    return _refused_for(last_record(session, segment), experiment, segment, model=model)


def briefs_refused(
    session: Session, experiment: Experiment, segments: Sequence[Segment], *, model: str
) -> dict[int, str | None]:
    """brief_refused of each of the experiment's `segments`, by id, in two queries."""
    records = last_records(session, segments)
    return {
        segment.id: _refused_for(records[segment.id], experiment, segment, model=model)
        for segment in segments
        if segment.id is not None
    }


def held_records(
    session: Session, experiment: Experiment, segments: Sequence[Segment], *, model: str
) -> dict[int, dict[str, Any]]:
    """The records (too_long_record) of those of the experiment's `segments` held for their
    brief, by id, in two queries."""
    records = last_records(session, segments)
    return {
        segment.id: record
        for segment in segments
        if segment.id is not None
        and (record := records[segment.id]) is not None
        and hold_lifted(record, experiment, segment, model=model) is None
    }


def _refused_for(
    record: dict[str, Any] | None, experiment: Experiment, segment: Segment, *, model: str
) -> str | None:
    """brief_refused, from the segment's last_record (`record`)."""
    if record is None or hold_lifted(record, experiment, segment, model=model):
        return None
    return refusal(record)


def hold_lifted(
    record: dict[str, Any], experiment: Experiment, segment: Segment, *, model: str
) -> str | None:
    """What changed since a job recorded the segment's brief too long for the model (`record`):
    "brief" or "model" (the one configured); None while neither has, and the segment is held."""
    if record.get("brief") != brief_fingerprint(experiment, segment):
        return "brief"
    # A record written before the model was kept has no key: it counts as the default model's.
    # An install on a custom model then orders one job more at most, whose record names it.
    if record.get("model", "") != _model_folder(model):
        return "model"
    return None


def hold_begun(
    experiment: Experiment, segment: Segment, record: dict[str, Any], *, job_id: int
) -> LifecycleEvent:
    """The audit row of a hold a job's `record` begins: the segment's history said nothing of why
    the lifecycle stopped ordering its copy. Written once, not each pass that withholds an order."""
    reason, numbers = hold_said(record, job_id=job_id)
    return LifecycleEvent(
        experiment_id=experiment.id,  # type: ignore[arg-type]
        segment_id=segment.id,
        variant_id=None,
        action="hold",
        reason=reason,
        numbers=numbers,
    )


def hold_said(record: dict[str, Any], *, job_id: int) -> tuple[str, dict[str, Any]]:
    """A `hold` row's reason and numbers, `record` found by the job `job_id`: a job's
    (hold_begun), or a pass's that finds the hold begun again where no job ran to say so.

    Read as hold_lifted reads it: a record written before records named their model holds as
    the default model's (""). Indexed, its missing key failed every job for all of the
    experiment's segments that met the hold (KeyError: 'model'), before any got copy."""
    return (
        f"no new copy ordered until the brief or the model changes: {refusal(record)}",
        {
            "job_id": job_id,
            "tokens": record.get("tokens"),
            "limit": record.get("limit"),
            "model": record.get("model", ""),
        },
    )


# The key of a `regenerate` row's numbers that says the order ends a hold (its value: what changed).
HOLD_LIFTED = "hold_lifted"


def hold_said_ended(session: Session, segment: Segment) -> bool:
    """Whether the segment's audit trail last said of a hold on its brief that it ended: an order
    whose numbers name HOLD_LIFTED, with no `hold` row since.

    What the trail says must follow what a pass does: the order that ends a hold says so, once,
    and a job that finds the brief held again (edited back while the order waited) writes a new
    `hold` row. Read from the job's record alone, an order that ended unfinished (interrupted,
    cancelled) left the hold lifted, and each order after it said again that the hold had ended;
    and a hold begun again said nothing, the trail's last word on it "ended"."""
    said = session.exec(
        select(LifecycleEvent.action)
        .where(
            LifecycleEvent.segment_id == segment.id,
            sa.or_(
                col(LifecycleEvent.action) == "hold",
                sa.and_(
                    col(LifecycleEvent.action) == "regenerate",
                    col(LifecycleEvent.numbers)[HOLD_LIFTED].as_string().is_not(None),
                ),
            ),
        )
        .order_by(col(LifecycleEvent.id).desc())
        .limit(1)
    ).first()
    return said == "regenerate"


def skipped(key: str, record: dict[str, Any]) -> str:
    """What a job says of a segment it skips, held for its brief (`record`: the hold's
    too_long_record): its prompt is not given to the model again."""
    tokens, limit = record.get("tokens"), record.get("limit")
    counted = (
        f" ({tokens:,} tokens of {limit:,})"
        if isinstance(tokens, int) and isinstance(limit, int)
        else ""
    )
    return f"segment {key}: brief held as too long for the model{counted}, not tried again"


def held_for(key: str, why: str) -> str:
    """What a hand job for the one segment `key`, held for its brief (`why`: brief_refused's
    answer), is refused with; the dashboard says it beside the segment's Generate button."""
    return f"segment {quoted(key)} gets no new copy: {why}"


class BriefHeld(Conflict):
    """A job started by hand for copy a held brief cannot get: it would load the model and fail
    as the last one did. `field`: "segment" where the request named the segment, else None, the
    whole request at fault."""

    def __init__(self, message: str, *, field: str | None) -> None:
        super().__init__(message, field=field, code="brief_too_long")


def refuse_held(
    session: Session,
    experiment: Experiment,
    segments: Sequence[Segment],
    *,
    model: str,
    every_segment: bool,
) -> None:
    """Raise BriefHeld when every one of `segments` (a hand job's) is held for its brief: a job
    for them all would only fail again. A job for every segment (`every_segment`: the request
    named none, so the refusal names no field) runs while one of them can get copy: it skips the
    held ones, failing as too long for them, and the others get theirs."""
    held = [(s.key, brief_refused(session, experiment, s, model=model)) for s in segments]
    if not held or any(why is None for _, why in held):
        return
    field = None if every_segment else "segment"
    if len(held) == 1:
        key, why = held[0]
        raise BriefHeld(held_for(key, why), field=field)  # type: ignore[arg-type]
    raise BriefHeld(
        "no segment gets new copy: each one's brief is too long for the model; shorten them (the "
        "product description, brand voice or each segment's persona), or configure a model with "
        "a longer context",
        field=field,
    )
