"""Generation jobs: a row per request, run in a background thread, progress written to the row.

The HTTP request only creates the row and hands its id to this process's runner, so a slow model
never holds a request open. The runner loads the model once per process, on the first job.
A job its process still held when it stopped is failed as it exits (`JobRunner` in a server,
`write_off` from `lifecycle --once`; `copybandit generate` cancels its own); one whose
process was killed, or that nothing ran, is failed by the next lifecycle pass an hour after it was
queued, or if it started, an hour after its worker last wrote its progress (`JOB_STALE_AFTER`). A
job given up that way while its worker still lives stops at its next write and stores nothing more,
as does one cancelled (service.job_cancel).
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, SQLModel, col, select

from generation import LintConfig, generate_variants
from generation.model import ModelUnavailable
from generation.pipeline import Rejection, near_duplicate
from generation.similarity import DEFAULT_THRESHOLD, NgramSimilarity, most_similar
from generation.writer import PromptTooLong, Writer
from service.config import Settings
from service.copy_checks import brief_for, lint_config
from service.db import database_unavailable, rows_changed
from service.errors import storable
from service.experiments import fetch, find_segment, get_experiment, segments_of
from service.lifecycle import assign_prior, jobs_it_ordered
from service.long_briefs import (
    BRIEFS_TOO_LONG,
    brief_refused,
    held_records,
    hold_begun,
    hold_said_ended,
    refuse_held,
    skipped,
    too_long_record,
)
from service.metrics import count
from service.models import (
    JOB_ERROR_MAX_CHARS,
    JOB_GIVEN_UP,
    JOB_INTERRUPTED,
    JOB_MESSAGE_MAX_CHARS,
    JOB_TERMINATED,
    GenerationJob,
    JobOutcome,
    JobStatus,
    LifecycleEvent,
    Origin,
    Segment,
    Variant,
    VariantStatus,
    jobs_covering_any,
    utcnow,
)
from service.policy import policy_shown
from service.segment_guard import lock_row, lock_segment

log = logging.getLogger(__name__)
# Lines kept in a job's result to explain rejections; the counts cover all of them.
_REJECTIONS_KEPT = 50
# A job still queued this long after it was queued, or still running this long after its worker
# last wrote its row, will never end: the process running it exited (a crash, a restart with jobs
# still in its queue, a kill that left no time to write them off).
JOB_STALE_AFTER = timedelta(hours=1)
# What an interrupted job's message ends with: a marketer reading it learns whether anything is
# lost. Only copy the lifecycle ordered is ordered again; a job started by hand asked for lines the
# lifecycle's plan may not miss, and its message said they would come, which they never did.
_REORDERED = "(the lifecycle orders copy still missing again)"
_NOT_REORDERED = (
    "(it was started by hand, so nothing orders its copy again: start another job if still wanted)"
)
INTERRUPTED = f"{JOB_GIVEN_UP}; its process exited or nothing ran it"
_UNFINISHED = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
# Failures caused by the configuration or the brief, not by a bug here.
_SAID_IN_FULL = (ModelUnavailable, PromptTooLong)
# A job's row once it is writing no segment: the lines it accepted there are stored (and in its
# result), or were thrown away with the job.
NOT_WRITING: dict[str, Any] = {"writing_segment_id": None, "writing_accepted": 0}


def create_job(
    *, session: Session, experiment_id: int, segment_key: str | None, n: int, model: str
) -> GenerationJob:
    """Queue a job started by hand (the API, the dashboard, `copybandit generate`). `model`: as
    configured where it will run (Settings.model). Raises BriefHeld, queueing nothing, when the
    segment's brief is held as too long for that model (or every segment's, for a job for all):
    the job loaded the model and failed as the last one had."""
    experiment = get_experiment(session=session, experiment_id=experiment_id)
    segment_id = None
    if segment_key is not None:
        segment = find_segment(session=session, experiment_id=experiment_id, key=segment_key)
        segment_id = segment.id
        covered: Sequence[Segment] = [segment]
    else:
        covered = segments_of(session=session, experiment_id=experiment_id)
    refuse_held(session, experiment, covered, model=model, every_segment=segment_key is None)
    job = GenerationJob(experiment_id=experiment_id, segment_id=segment_id, n=n)
    session.add(job)
    session.commit()
    return job


def get_job(*, session: Session, job_id: int) -> GenerationJob:
    return fetch(session, GenerationJob, job_id, what="generation job", field="job_id")


def interrupted(job: GenerationJob, now: datetime) -> bool:
    """Whether the job is unfinished and too old to end (see JOB_STALE_AFTER): a queued job
    counted from when it was queued, a running one from its last progress. From the queueing, a
    job that had waited most of an hour behind others was given up while it ran; from its start,
    one whose model took over an hour was; and the copy the pass then ordered again came twice."""
    if job.status not in _UNFINISHED:
        return False
    since = job.updated_at if job.status == JobStatus.RUNNING.value else job.created_at
    return since < now - JOB_STALE_AFTER


def jobs_on_order(
    *, session: Session, segments: Sequence[Segment], now: datetime | None
) -> dict[int, tuple[GenerationJob, ...]]:
    """The jobs that will write each of `segments`' copy (by id), oldest first, read in one query
    however many segments there are: the queued or running jobs jobs_covering finds, less those
    no worker will finish by `now` (interrupted), which the next pass fails before it plans. The
    lifecycle counts their lines as on order and the experiment page lists them: read apart, the
    two disagreed on a job whose server had died.

    A pass plans with `now` None, leaving none out: it failed the jobs given up as it began, and
    one that turned an hour old since, its segment planned minutes later, still says queued or
    running, so a worker may yet start it or store its copy. Left out, its copy was ordered twice.
    """
    if not segments:
        return {}
    unfinished = session.exec(
        select(GenerationJob)
        .where(jobs_covering_any(segments), col(GenerationJob.status).in_(_UNFINISHED))
        .order_by(col(GenerationJob.id))
        # Judged by its row as it is: a pass's session keeps what it read, and by a job's
        # progress when first read, one its worker went on writing would look given up.
        .execution_options(populate_existing=True)
    ).all()
    live = [job for job in unfinished if now is None or not interrupted(job, now)]
    return {
        segment.id: tuple(
            job
            for job in live
            # A job for every segment of its experiment (no segment_id) writes each one's copy.
            if job.experiment_id == segment.experiment_id and job.segment_id in (None, segment.id)
        )
        for segment in segments
        if segment.id is not None
    }


def interruption(reason: str, *, by_lifecycle: bool) -> str:
    """An interrupted job's message: why, and whether its copy is ordered again."""
    return f"{reason} {_REORDERED if by_lifecycle else _NOT_REORDERED}"


def fail_interrupted_jobs(*, session: Session, now: datetime) -> list[int]:
    """Mark the jobs that will never end failed, so their rows say so; returns their ids."""
    # In id order: each is updated in this one transaction, and two passes at once taking the
    # same rows in different orders could deadlock on PostgreSQL.
    unfinished = session.exec(
        select(GenerationJob)
        .where(col(GenerationJob.status).in_(_UNFINISHED))
        .order_by(col(GenerationJob.id))
    ).all()
    stale = [job for job in unfinished if interrupted(job, now)]
    ordered = jobs_it_ordered(session, [job.id for job in stale])  # type: ignore[misc]
    failed: list[int] = []
    for job in stale:
        reason = interruption(INTERRUPTED, by_lifecycle=job.id in ordered)
        # Unless its worker started it, wrote its progress or ended it meanwhile.
        still_unfinished = rows_changed(
            session,
            sa.update(GenerationJob)
            .where(
                col(GenerationJob.id) == job.id,
                col(GenerationJob.status) == job.status,
                col(GenerationJob.updated_at) == job.updated_at,
            )
            .values(**_written_off(reason, now)),
        )
        if still_unfinished:
            log.warning("generation job %s: %s", job.id, reason)
            failed.append(job.id)  # type: ignore[arg-type]
    session.commit()
    if failed:
        # The failures an alert on failed jobs is most for: a worker killed mid-job.
        count(lambda m: m.generation_jobs.labels("failed").inc(len(failed)))
    return failed


@dataclass
class GenerationOptions:
    batch_size: int
    max_rounds: int
    lint: LintConfig
    # As configured (Settings.model): a brief too long for it is held against it (long_briefs).
    model: str

    @classmethod
    def from_settings(cls, settings: Settings) -> GenerationOptions:
        return cls(
            batch_size=settings.generation_batch_size,
            max_rounds=settings.generation_max_rounds,
            lint=lint_config(settings),
            model=settings.model,
        )


JobProgress = Callable[[float, str], None]


def run_job(
    *,
    engine: sa.Engine,
    job_id: int,
    writer: Callable[[], Writer],
    options: GenerationOptions,
    on_progress: JobProgress | None = None,
) -> GenerationJob:
    """Run a queued job to the end; each segment's new variants commit together."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            job, started = _start(session, job_id)
        except sa.exc.DBAPIError as exc:
            if not database_unavailable(exc):
                raise
            # A job waits its turn for minutes: a restart meanwhile ended the pooled connections,
            # and its first read met one. The pool has dropped them, so a fresh one starts it; it
            # stayed queued until a pass gave it up an hour later.
            session.rollback()
            job, started = _start(session, job_id)
        if not started:
            # A job cancelled while it waited is as asked; any other was given up meanwhile.
            cancelled = job.status == JobStatus.CANCELLED.value
            log.log(
                logging.INFO if cancelled else logging.WARNING,
                "generation job %s is %s, not queued: not run",
                job_id,
                job.status,
            )
            return job
        result: dict[str, Any] = {"segments": {}}
        holds: list[LifecycleEvent] = []
        try:
            _generate(session, job, writer, options, on_progress, result, holds)
        except _Cancelled:
            # Whoever cancelled it wrote its row's end, with the copy kept by then: nothing since.
            session.rollback()
            session.refresh(job)
            log.info("generation job %s was cancelled while it ran: stopped", job_id)
            return job
        except _GivenUp:
            # The pass that gave it up counted it failed and ordered its copy again.
            session.rollback()
            session.refresh(job)
            log.warning(
                "generation job %s was given up as interrupted while it ran: stopped, storing "
                "nothing more",
                job_id,
            )
            return job
        except Exception as exc:
            if isinstance(exc, _SAID_IN_FULL):
                # Their message says all (what is wrong, where): a traceback under it was noise
                # a command's user read as a crash.
                log.error("generation job %s failed: %s", job_id, exc)
            else:
                log.exception("generation job %s failed", job_id)
            session.rollback()
            # Segments done before the error kept their new copy (each commits on its own): the
            # job says which, so what is being served or reviewed can be traced back to it.
            stored = sum(len(s["variant_ids"]) for s in result["segments"].values())
            _finish(
                session,
                job,
                # Only with the job's record: one given up meanwhile held nothing.
                also=_holds_begun(session, job, holds, model=options.model),
                status=JobStatus.FAILED,
                outcome=_failure_outcome(exc),
                finished_at=utcnow(),
                error=storable(f"{type(exc).__name__}: {exc}")[:JOB_ERROR_MAX_CHARS],
                # A brief too long is kept, so the lifecycle orders no more until it changes.
                result=result if result["segments"] or result.get(BRIEFS_TOO_LONG) else None,
                message=_failure_message(stored, list(result["segments"])),
            )
            return job
        accepted = sum(len(s["variant_ids"]) for s in result["segments"].values())
        _finish(
            session,
            job,
            status=JobStatus.SUCCEEDED,
            # No line accepted (the lint or the dedupe refused them all) is as good as a failure
            # to the lifecycle's backoff (service.copy_backoff).
            outcome=JobOutcome.WROTE if accepted else JobOutcome.WROTE_NONE,
            finished_at=utcnow(),
            progress=1.0,
            result=result,
            message=f"done: {_new_variants(accepted)}",
        )
        return job


def _start(session: Session, job_id: int) -> tuple[GenerationJob, bool]:
    """The job, and whether it was queued and now runs."""
    job = get_job(session=session, job_id=job_id)
    # Only a job still queued: one a lifecycle pass failed as interrupted while it waited behind
    # others ran anyway, and the copy the pass then ordered again came twice.
    started = _update(
        session,
        job,
        while_status=JobStatus.QUEUED,
        status=JobStatus.RUNNING,
        started_at=utcnow(),
        message="starting",
    )
    return job, started


def _holds_begun(
    session: Session, job: GenerationJob, holds: list[LifecycleEvent], *, model: str
) -> list[LifecycleEvent]:
    """Those of the job's `holds` that no job ended before it has begun, or that begin again
    where the audit trail last said the hold ended (the brief edited back to the held one while
    the order that said so waited): read under each segment's lock (lock_row), which the caller
    holds to its commit of the job's end. Read as the job found each brief too long, two jobs at
    once for one held brief each found none begun, and each wrote its audit row."""
    if not holds:
        return []
    experiment = get_experiment(session=session, experiment_id=job.experiment_id)
    begun = []
    # In one order, so two jobs for every segment ending at once wait for each other, not deadlock.
    for hold in sorted(holds, key=lambda hold: hold.segment_id or 0):
        segment = session.get_one(Segment, hold.segment_id)
        lock_row(session, segment)
        # Held already, by an earlier job's record of this brief and model: no new hold, unless
        # the trail's last word on it is an order that said it ended.
        if brief_refused(session, experiment, segment, model=model) is None or hold_said_ended(
            session, segment
        ):
            begun.append(hold)
    return begun


def _failure_outcome(exc: Exception) -> JobOutcome:
    # A brief too long is held (service.long_briefs), not backed off from (service.copy_backoff).
    return JobOutcome.TOO_LONG if isinstance(exc, PromptTooLong) else JobOutcome.FAILED


def _new_variants(count: int) -> str:
    return f"{count} new variant" if count == 1 else f"{count} new variants"


def _failure_message(stored: int, segment_keys: list[str]) -> str:
    return stored_in("failed after storing", stored, segment_keys) if segment_keys else "failed"


def stored_in(said: str, stored: int, segment_keys: list[str]) -> str:
    """`said`, then what the job stored, naming the segments that fit the message's column:
    PostgreSQL refused a longer one (20 segments of 40-letter keys), a job that failed midway could
    not record its failure, and it read running until a pass wrote it off an hour later. Its
    result names them all."""
    head = f"{said} {_new_variants(stored)} in "
    listed = _listed_within(head, segment_keys, ", ", JOB_MESSAGE_MAX_CHARS)
    return listed or f"{head}{len(segment_keys)} segments"


def _listed_within(head: str, items: list[str], separator: str, limit: int) -> str | None:
    """`head` and as many of `items` as fit in `limit` characters, then "and K more" for the
    rest; None when not even one fits."""
    for shown in range(len(items), 0, -1):
        rest = len(items) - shown
        message = head + separator.join(items[:shown]) + (f" and {rest} more" if rest else "")
        if len(message) <= limit:
            return message
    return None


def _finish(
    session: Session, job: GenerationJob, *, also: Sequence[SQLModel] = (), **values: Any
) -> bool:
    """Record how the job ended, with the rows `also`, while it still says running: a pass that
    gave it up as interrupted meanwhile has counted it failed and ordered its copy again, and its
    row keeps saying so, as one cancelled meanwhile keeps saying who cancelled it. Whether it was
    recorded."""
    if not _update(
        session, job, while_status=JobStatus.RUNNING, also=also, **NOT_WRITING, **values
    ):
        # `job` as read afresh. Cancelled after its last write, it was logged as given up as
        # interrupted, a warning of a fault where someone had asked it to stop.
        if job.status == JobStatus.CANCELLED.value:
            log.info(
                "generation job %s ended (%s) after it was cancelled; its row keeps that: %s",
                job.id,
                values["status"],
                job.message,
            )
        else:
            log.warning(
                "generation job %s ended (%s) after it was written off; its row keeps that: %s",
                job.id,
                values["status"],
                job.error,
            )
        return False
    count(lambda m: m.generation_jobs.labels(str(values["status"])).inc())
    return True


class _GivenUp(Exception):
    """The job's row no longer says running: a lifecycle pass gave it up as interrupted."""


class _Cancelled(_GivenUp):
    """The job's row says cancelled: someone stopped it (see job_cancel)."""


def _stopped(job: GenerationJob) -> _GivenUp:
    """Why a running job's row no longer says running; `job` as read afresh."""
    return _Cancelled() if job.status == JobStatus.CANCELLED.value else _GivenUp()


def _generate(
    session: Session,
    job: GenerationJob,
    writer_factory: Callable[[], Writer],
    options: GenerationOptions,
    on_progress: JobProgress | None,
    result: dict[str, Any],
    holds: list[LifecycleEvent],
) -> None:
    """Fills `result` segment by segment, as each segment's copy commits, and `holds` with the
    audit rows of the holds on briefs too long for the model that this job may begin
    (_holds_begun)."""
    experiment = get_experiment(session=session, experiment_id=job.experiment_id)
    segments = [
        s
        for s in segments_of(session=session, experiment_id=experiment.id)  # type: ignore[arg-type]
        if job.segment_id is None or s.id == job.segment_id
    ]
    too_long: list[str] = []
    # Held segments are skipped: create_job refuses a job for one, but not one queued while
    # another job ran that then began the hold, which loaded the model only to fail as that job
    # had; nor a job for every segment, which gave each held prompt to the model again. The job
    # keeps the hold's record: the last job to end that covers a segment says if it is held.
    held = held_records(session, experiment, segments, model=options.model)
    for segment in segments:
        if segment.id in held:
            too_long.append(skipped(segment.key, held[segment.id]))
            result.setdefault(BRIEFS_TOO_LONG, {})[segment.key] = held[segment.id]
            # Begun again where the audit trail last said it ended (_holds_begun).
            holds.append(hold_begun(experiment, segment, held[segment.id], job_id=job.id))  # type: ignore[arg-type]
    segments = [segment for segment in segments if segment.id not in held]
    if not segments:
        raise _too_long(too_long)
    # The first load in a fresh install de-quantizes the default model: say so, it takes a while.
    _progress(session, job, message="loading the model (about 40 s on the very first run)")
    writer = writer_factory()
    status = VariantStatus.ACTIVE if experiment.auto_approve else VariantStatus.PENDING_REVIEW
    # As for copy added by hand: a stored policy that does not validate still lets copy in.
    policy = policy_shown(experiment.policy)[0]
    result["model"] = writer.model_id

    def report(fraction: float, message: str, segment: Segment, accepted: int) -> None:
        # The lines accepted ride on the progress write: the segment's are stored only as it ends.
        _progress(
            session,
            job,
            progress=round(fraction, 3),
            message=message,
            writing_segment_id=segment.id,
            writing_accepted=accepted,
        )
        if on_progress is not None:
            on_progress(fraction, message)

    for index, segment in enumerate(segments):

        def progress(
            done: int, total: int, accepted: int, index: int = index, segment: Segment = segment
        ) -> None:
            message = f"segment {segment.key}: round {done}/{total}, {accepted}/{job.n} accepted"
            # Enough accepted ends the segment before its last round: counted as done, where
            # `copybandit generate`'s bar ended a job that was done at a quarter.
            share = 1.0 if accepted >= job.n else done / total
            report((index + share) / len(segments), message, segment, accepted)

        # The pipeline reports a round once it is done: until then the status would still say
        # the model is loading, or show the previous segment's last round.
        report(
            index / len(segments),
            f"segment {segment.key}: sampling round 1/{options.max_rounds}",
            segment,
            0,
        )
        existing = session.exec(select(Variant.text).where(Variant.segment_id == segment.id)).all()
        brief = brief_for(session, experiment, segment)
        # Ends the reads' transaction before the model samples for seconds or minutes: left
        # open, PostgreSQL's idle_in_transaction_session_timeout ended the connection under a
        # long round and the job failed, and its snapshot held back vacuum meanwhile.
        session.commit()
        seed = job.id * 1000 + index  # type: ignore[operator]
        try:
            generated = generate_variants(
                brief,
                job.n,
                writer=writer,
                existing=existing,
                seed=seed,
                batch_size=options.batch_size,
                max_rounds=options.max_rounds,
                lint_config=options.lint,
                progress=progress,
            )
        except PromptTooLong as exc:
            # This segment's brief alone: the segments after it still get their copy, where
            # the job had stopped at the first such segment. The job fails at the end naming it.
            too_long.append(f"segment {segment.key}: {exc}")
            record = too_long_record(experiment, segment, exc, model=options.model)
            result.setdefault(BRIEFS_TOO_LONG, {})[segment.key] = record
            holds.append(hold_begun(experiment, segment, record, job_id=job.id))  # type: ignore[arg-type]
            continue
        variants = [
            Variant(
                experiment_id=experiment.id,  # type: ignore[arg-type]
                segment_id=segment.id,  # type: ignore[arg-type]
                text=candidate.text,
                origin=Origin.GENERATED,
                status=status,
                status_reason=f"generated by job {job.id}",
                audit={
                    "job_id": job.id,
                    "model": generated.model_id,
                    "seed": candidate.seed,
                    "batch_size": options.batch_size,
                    "prompt": generated.messages,
                    "lint": {"passed": list(candidate.lint)},
                    "logprob": round(candidate.logprob, 4),
                },
            )
            for candidate in generated.accepted
        ]
        lock_segment(session, segment)
        # Under the segment's lock, where a pass plans this segment: either the pass sees this
        # copy, or it gave the job up first and ordered the copy again. The same for a cancel:
        # either it reads this segment's copy in the job's result, or no copy is stored.
        if not _still_running(session, job):
            session.rollback()
            session.refresh(job)
            raise _stopped(job)
        variants, taken = _not_taken_meanwhile(session, segment, variants, compared=set(existing))
        for variant in variants:
            assign_prior(session, variant, policy)
        # Those first: the pipeline accepted them, so they are the ones a reader would miss.
        rejections = [*taken, *generated.rejected]
        result["segments"][segment.key] = {
            "variant_ids": [v.id for v in variants],
            "sampled": generated.sampled,
            "rounds": generated.rounds,
            "rejected": len(rejections),
            "rejections": [
                {"text": r.text, "reasons": list(r.reasons)} for r in rejections[:_REJECTIONS_KEPT]
            ],
        }
        # With the copy, so the row's result always lists what is stored: a cancel says what it
        # kept from it, and stopping the job meanwhile stores no more.
        session.execute(
            sa.update(GenerationJob)
            .where(col(GenerationJob.id) == job.id)
            .values(result=result, **NOT_WRITING)
        )
        session.commit()  # one segment, one transaction
    if too_long:
        raise _too_long(too_long)


def _too_long(segments_said: list[str]) -> PromptTooLong:
    """What the job fails with, saying of each segment too long for the model why."""
    # Within the error column, naming whole segments: cut at its width, 25 or so such segments
    # ended mid-name and the rest went unnamed.
    room = JOB_ERROR_MAX_CHARS - len(f"{PromptTooLong.__name__}: ")
    listed = _listed_within("", segments_said, "; ", room)
    return PromptTooLong(
        listed or f"{len(segments_said)} segments' briefs are too long for the model"
    )


def _not_taken_meanwhile(
    session: Session, segment: Segment, variants: list[Variant], *, compared: set[str]
) -> tuple[list[Variant], list[Rejection]]:
    """The new variants that are not near-duplicates of another variant of the segment by now,
    and the lines of those that are, each refused as the pipeline refuses a near-duplicate: left
    out of the job's result, a job whose every line another job had stored meanwhile said "done:
    0 new variants", having rejected none of the lines it sampled.

    The pipeline compared its lines with the segment's copy as it was when the job started
    (`compared`); a job for the same segment in another worker may have stored the same lines, or
    lines a word or a mark apart, since (both stored them). The caller holds the segment's writes
    back first: PostgreSQL locks the segment row, and on SQLite a write has taken the database's
    write lock, which decisions and events wait for; so only texts the pipeline has not seen are
    compared again (against the segment's every text, 3,000 of them held the lock a second).
    """
    session.add_all(variants)
    session.flush()
    ours = {variant.id for variant in variants}
    taken = [
        text
        for variant_id, text in session.exec(
            select(Variant.id, Variant.text).where(Variant.segment_id == segment.id)
        )
        if variant_id not in ours and text not in compared
    ]
    similarity = NgramSimilarity()  # as the pipeline measured, at its threshold
    kept: list[Variant] = []
    refused: list[Rejection] = []
    for variant in variants:
        score, twin = most_similar(variant.text, taken, similarity)
        if twin is not None and score >= DEFAULT_THRESHOLD:
            session.delete(variant)
            said = f"{near_duplicate(score, twin)}, added meanwhile"
            refused.append(Rejection(variant.text, (said,)))
        else:
            kept.append(variant)
            taken.append(variant.text)
    session.flush()
    return kept, refused


# Seconds before each new try of a progress write the database could not take: 15.5 s in all,
# about what a PostgreSQL restart takes, and short beside a job's rounds.
_PROGRESS_RETRY_WAITS = (0.5, 1.0, 2.0, 4.0, 8.0)


def _progress(session: Session, job: GenerationJob, **values: Any) -> None:
    """Write the job's progress while it still runs; it stops once a pass has given it up.

    The write is also the job's one look at whether it was given up, so a write that fails on an
    unavailable database is no answer: it is tried again on a fresh connection, for a while. A
    PostgreSQL restart, or a proxy dropping the connection, under a model round failed the job at
    its next progress, and its copy was not ordered again until the next pass."""
    job_id = job.id  # read before a rollback expires it
    for wait in (*_PROGRESS_RETRY_WAITS, None):
        try:
            still_running = _update(session, job, while_status=JobStatus.RUNNING, **values)
        except sa.exc.DBAPIError as exc:
            if wait is None or not database_unavailable(exc):
                raise
            log.warning(
                "generation job %s: progress not written, database unavailable: %s; "
                "trying again in %s s",
                job_id,
                exc.orig,
                wait,
            )
            _drop_connection(session)
            time.sleep(wait)
            continue
        if not still_running:
            raise _stopped(job)
        return


def _drop_connection(session: Session) -> None:
    """End the session's failed transaction; a connection too dead to roll back is discarded, so
    the next statement gets a fresh one. Nothing is lost: a progress write's transaction holds
    only reads besides, the job having committed its last segment's copy before."""
    try:
        session.rollback()
    except sa.exc.DBAPIError:
        session.invalidate()


def _still_running(session: Session, job: GenerationJob) -> bool:
    """Whether the job's row still says running, asked by writing it, and not committed: on
    PostgreSQL a pass's attempt to give the job up then waits for this transaction, and on SQLite
    the write takes the database's write lock."""
    return bool(
        rows_changed(
            session,
            sa.update(GenerationJob)
            .where(
                col(GenerationJob.id) == job.id,
                col(GenerationJob.status) == JobStatus.RUNNING.value,
            )
            .values(updated_at=utcnow()),
        )
    )


def _written_off(reason: str, now: datetime) -> dict[str, Any]:
    """A job's row once no worker will finish it: failed, saying why."""
    return {
        "status": JobStatus.FAILED.value,
        "outcome": JobOutcome.INTERRUPTED.value,
        "finished_at": now,
        "updated_at": now,
        "message": reason,
        "error": reason,
        **NOT_WRITING,
    }


def _update(
    session: Session,
    job: GenerationJob,
    *,
    while_status: JobStatus | None = None,
    also: Sequence[SQLModel] = (),
    **values: Any,
) -> bool:
    """Write `values` to the job's row and to `job`, noting the time as its last write, and store
    the rows `also` in the same transaction; with `while_status`, only while the row still says
    so (False, nothing stored, and `job` read afresh, when it no longer does)."""
    update = sa.update(GenerationJob).where(col(GenerationJob.id) == job.id)
    if while_status is not None:
        update = update.where(col(GenerationJob.status) == while_status.value)
    values = {"updated_at": utcnow(), **values}
    changed = rows_changed(session, update.values(**values))
    if changed:
        session.add_all(also)
    session.commit()
    if not changed:
        session.refresh(job)
        return False
    for name, value in values.items():
        setattr(job, name, value)
    return True


# A job this process held when it stopped: no wait for an hour, its copy is ordered again at once.
STOPPED = f"{JOB_INTERRUPTED}the server stopped"
# The same for `copybandit lifecycle --once` stopped by Ctrl-C mid-job,
COMMAND_STOPPED = f"{JOB_INTERRUPTED}the command running it was stopped"
# and by SIGTERM, which the copy backoff may count (service.copy_backoff).
COMMAND_TERMINATED = f"{JOB_TERMINATED} (SIGTERM), at a time limit perhaps"


class JobRunner:
    """One background thread per process runs jobs in order; the model loads once, lazily.

    The thread is a daemon: the interpreter does not wait for a job (a model load alone takes
    40 s) at exit, where gunicorn, waiting on a stopping worker, killed it after 30 s. What the
    thread held is written off at exit instead (`interrupt_held_jobs`), so those rows say failed
    at once and the next lifecycle pass orders their copy again, not an hour later.
    """

    def __init__(
        self,
        *,
        engine: sa.Engine,
        settings: Settings,
        writer_factory: Callable[[], Writer] | None = None,
    ) -> None:
        self.engine = engine
        self.options = GenerationOptions.from_settings(settings)
        self._settings = settings
        self._writer: Writer | None = None
        self._writer_lock = threading.Lock()
        self.writer_factory = writer_factory or self._load_default_writer
        # Guards the queue, the running job and whether a thread is draining the queue.
        self._all_finished = threading.Condition()
        self._queued: deque[int] = deque()
        self._running: int | None = None
        self._draining = False
        _runners.add(self)

    def submit(self, job_id: int) -> None:
        # Nothing of a job is kept once it ends: its outcome is in its row. Keeping each job's
        # future held the job and its result (~45 KB) for the worker's whole life, a few more
        # every lifecycle pass.
        with self._all_finished:
            self._queued.append(job_id)
            if self._draining:
                return
            self._draining = True
        # A thread only while there is work: an idle one would keep this runner (and its
        # engine) alive for the process's life, one per app a test process builds.
        threading.Thread(target=self._drain, name="generation", daemon=True).start()

    def _drain(self) -> None:
        while True:
            with self._all_finished:
                self._running = None
                self._all_finished.notify_all()
                if not self._queued:
                    self._draining = False
                    return
                self._running = self._queued.popleft()
            self._run(self._running)

    def _run(self, job_id: int) -> None:
        try:
            job = run_job(
                engine=self.engine, job_id=job_id, writer=self.writer, options=self.options
            )
            if job.status == JobStatus.SUCCEEDED.value:
                # Failures were logged and successes not, so a server's log said jobs were
                # ordered and never whether the model wrote anything. The commands print it.
                log.info("%s", _succeeded(job))
        except Exception as exc:
            if not database_unavailable(exc):
                log.exception("generation job %s could not be run", job_id)
                return
            # Still away: the job waits in its row, and the next pass gives it up in an hour.
            log.warning(
                "generation job %s could not be run: database unavailable: %s", job_id, exc.orig
            )

    def writer(self) -> Writer:
        with self._writer_lock:
            if self._writer is None:
                self._writer = self.writer_factory()
            return self._writer

    def join(self, timeout: float | None = None) -> None:
        """Wait until every submitted job has ended (tests)."""
        with self._all_finished:
            self._all_finished.wait_for(
                lambda: not self._draining and self._running is None, timeout=timeout
            )

    def busy(self) -> bool:
        with self._all_finished:
            return self._draining

    def interrupt_held_jobs(self) -> list[int]:
        """Fail the jobs this runner holds, running or waiting their turn, as interrupted by the
        server stopping; returns their ids. Runs at exit: its thread ends with the process."""
        with self._all_finished:
            held = [*([] if self._running is None else [self._running]), *self._queued]
            self._queued.clear()
        return write_off(engine=self.engine, job_ids=held, reason=STOPPED)

    def _load_default_writer(self) -> Writer:
        return default_writer(self._settings)


def _succeeded(job: GenerationJob) -> str:
    segments = (job.result or {}).get("segments", {})
    counts = [f"{key} {len(done['variant_ids'])}" for key, done in segments.items()]
    if len(counts) > _SEGMENTS_LOGGED:
        counts[_SEGMENTS_LOGGED:] = [f"and {len(counts) - _SEGMENTS_LOGGED} more segments"]
    where = f" ({', '.join(counts)})" if counts else ""
    return f"generation job {job.id} for experiment {job.experiment_id}: {job.message}{where}"


# A job for all of an experiment's 50 segments would otherwise write them all on one line.
_SEGMENTS_LOGGED = 10


def write_off(*, engine: sa.Engine, job_ids: list[int], reason: str) -> list[int]:
    """Fail those of the jobs still queued or running, saying why; returns their ids."""
    if not job_ids:
        return []
    still_unfinished: list[int] = []
    with Session(engine) as session:
        ordered = jobs_it_ordered(session, job_ids)
        for by_lifecycle in (True, False):
            ids = [job_id for job_id in job_ids if (job_id in ordered) == by_lifecycle]
            if not ids:
                continue
            said = interruption(reason, by_lifecycle=by_lifecycle)
            ended = (
                session.execute(
                    sa.update(GenerationJob)
                    .where(
                        col(GenerationJob.id).in_(ids), col(GenerationJob.status).in_(_UNFINISHED)
                    )
                    .values(**_written_off(said, utcnow()))
                    .returning(col(GenerationJob.id))
                )
                .scalars()
                .all()
            )
            for job_id in ended:
                log.warning("generation job %s: %s", job_id, said)
            still_unfinished.extend(ended)
        session.commit()
    if still_unfinished:
        count(lambda m: m.generation_jobs.labels("failed").inc(len(still_unfinished)))
    return list(still_unfinished)


_runners: weakref.WeakSet[JobRunner] = weakref.WeakSet()


def generating() -> bool:
    """Whether a job thread of this process is at work (inside the model, most likely)."""
    return any(runner.busy() for runner in list(_runners))


@atexit.register
def interrupt_held_jobs() -> None:
    """Every runner's held jobs written off (at exit, or by a worker ending before it)."""
    for runner in list(_runners):
        try:
            runner.interrupt_held_jobs()
        except Exception:
            # The database may be what is going away; the next lifecycle pass fails them then.
            log.exception("could not mark this process's generation jobs interrupted")


def default_writer(settings: Settings) -> Writer:
    """The configured model behind a sampling writer (loads torch and transformers)."""
    from generation.model import ModelConfig, load_model
    from generation.writer import SamplingConfig, TransformersWriter

    config = ModelConfig(
        path=settings.model or None,
        cache_dir=Path(settings.model_cache_dir),
        device=settings.model_device,
        dtype=settings.model_dtype,
        progress_bars=progress_bars_wanted(settings),
    )
    # Each row gets tokens for the lint's longest line, in whatever script the brief is written.
    sampling = SamplingConfig(max_copy_chars=settings.copy_max_chars)
    return TransformersWriter(load_model(config), sampling)


def progress_bars_wanted(settings: Settings) -> bool:
    """transformers' bars are raw lines on stderr: only for text logs a person reads at a terminal
    (JSON logs are one object per line, and a log file or journal keeps every redraw)."""
    return settings.log_format == "text" and sys.stderr.isatty()
