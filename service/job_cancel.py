"""Cancelling a generation job: its row ends cancelled at once, saying who stopped it and what of
its copy is kept.

A queued job so ended is never started (its worker starts only a queued one). A running one learns
of it at its next write, after the model's current round, or before it stores a segment's copy,
and stops there, storing nothing more; the model's work meanwhile is thrown away. Copy it stored
before stays, served or waiting for review, as a marketer would find it if the job had failed
then: the row's result lists it, and its message counts it. A lifecycle pass orders the copy a
segment still misses again, as it does after a failed job, since a cancelled job is no longer on
order.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from sqlmodel import Session, col

from service.db import rows_changed
from service.errors import Conflict
from service.generation_jobs import NOT_WRITING, get_job, stored_in
from service.metrics import count
from service.models import GenerationJob, JobOutcome, JobStatus, utcnow
from service.segment_guard import lock_row

log = logging.getLogger(__name__)
_CANCELLABLE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


def cancel_job(*, session: Session, job_id: int, by: str) -> GenerationJob:
    """End the job cancelled; `by` says who or what cancelled it ("API key cb_…", a marketer's
    address). Raises NotFound for no such job, Conflict for one that has ended already."""
    job = get_job(session=session, job_id=job_id)
    # Read under the row's lock: the worker stores a segment's copy and its result together, and
    # the message is to count what it stored, not what it had stored a moment before.
    lock_row(session, job)
    if job.status not in _CANCELLABLE:
        session.rollback()
        raise Conflict(
            f"generation job {job_id} has already ended: it is {job.status}; only a queued or "
            f"running job can be cancelled",
            field="status",
        )
    message = cancelled_message(job, by)
    now = utcnow()
    rows_changed(
        session,
        sa.update(GenerationJob)
        .where(col(GenerationJob.id) == job.id)
        .values(
            status=JobStatus.CANCELLED.value,
            outcome=JobOutcome.CANCELLED.value,
            message=message,
            finished_at=now,
            updated_at=now,
            # The segment it was writing stores nothing now.
            **NOT_WRITING,
        ),
    )
    session.commit()
    session.refresh(job)
    log.info("generation job %s: %s", job_id, message)
    count(lambda m: m.generation_jobs.labels(JobStatus.CANCELLED.value).inc())
    return job


def cancelled_message(job: GenerationJob, by: str) -> str:
    if job.status == JobStatus.QUEUED.value:
        return f"cancelled by {by} before it started; nothing stored"
    segments = (job.result or {}).get("segments", {})
    if not segments:
        return f"cancelled by {by}; it had stored no copy yet"
    stored = sum(len(done["variant_ids"]) for done in segments.values())
    return stored_in(f"cancelled by {by}; kept", stored, list(segments))
