"""Backing off from ordering copy the model keeps failing to write.

A pass orders a job for each segment short of live copy, and only queued or running jobs count as
on order: with the model failing every time (a broken model folder, a model that always errors,
the lint refusing every line, out of memory), every pass ordered another, about 96 failed jobs and
96 "regenerate" audit rows per segment a day at the default interval, each loading the model for
nothing. After n failed orders in a row the next one waits `interval` x 2^(n-1) from the last,
at most BACKOFF_CAP. Only jobs a pass ordered count; a job started by hand is never held back, and
any job that delivers copy ends the run of failures. A job that was cancelled or found its brief
too long for the model (held instead: service.long_briefs) says nothing of the model, and neither
counts nor ends a run; each job's outcome column says which it was. Nor does a job that a stopping
server or command wrote off, as a deploy restart does to healthy ones, nor one alone that a pass
gave up; but a model that kills the worker loading it (out of memory) leaves every job of the
segment running until a pass gives it up, and each was ordered again, a worker killed every hour
or so for ever: a run with two jobs a pass gave up after they started counts them all, each
waiting from when it was given up. So does one with two that `lifecycle --once` held as SIGTERM
stopped it: a cron `timeout` that a job too slow for it meets every run, which then ordered the
job again first, and the segments after it never got theirs. A job for every segment fails as a
whole where one segment fails: the segments it stored copy in before, its result says which, had
their copy delivered, and their runs end there.
"""

from __future__ import annotations

import heapq
import itertools
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

import sqlalchemy as sa
from sqlmodel import Session, col, select

from service.errors import cut, headline
from service.models import (
    JOB_GIVEN_UP,
    JOB_TERMINATED,
    GenerationJob,
    JobOutcome,
    LifecycleEvent,
    Segment,
    jobs_covering,
    jobs_covering_any,
)

# The longest a segment's next order waits: a day, so a model fixed overnight gets the segment
# copy the next day at the latest, without anyone starting a job by hand.
BACKOFF_CAP = timedelta(hours=24)
# The outcomes that say how the model did; a run of failures is read back to the last success.
_FAILED = (JobOutcome.FAILED.value, JobOutcome.WROTE_NONE.value)
_SAYS_OF_THE_MODEL = (JobOutcome.WROTE.value, *_FAILED)
# Jobs a pass gave up (or a command's SIGTERM ended) in a run that make it count them: one is as
# likely a worker killed for another reason, but a second in a row, no copy between, is the job
# killing its worker (or overrunning its command's time limit).
_INTERRUPTED_COUNTED = 2
# What a run's interrupted jobs are said to mean, by whether they were given up, terminated, or
# both (_interrupted_why).
_WORKER_STOPPED = "their worker stopped, out of memory perhaps"
_COMMAND_TERMINATED = "the command running them was terminated, at a time limit perhaps"
_EITHER_STOPPED = "their worker or command stopped, out of memory or at a time limit perhaps"
# One that never started (queued behind another, or nothing ran it) never loaded the model.
_INTERRUPTED_RUNNING = sa.and_(
    col(GenerationJob.outcome) == JobOutcome.INTERRUPTED.value,
    col(GenerationJob.started_at).is_not(None),
)
# Jobs read per segment: 18 failures in a row reach the cap from a 1 s interval, so more only
# ever repeat it.
_JOBS_READ = 32
# A job for every segment (only ever started by hand) that ended so may have stored some segments'
# copy first: it failed, or found a brief too long, in another segment; or, having started
# (_INTERRUPTED_RUNNING), it was interrupted.
_FAILED_ELSEWHERE = (JobOutcome.FAILED.value, JobOutcome.TOO_LONG.value)
_ENDED_MIDWAY = (*_FAILED_ELSEWHERE, JobOutcome.INTERRUPTED.value)
_SAYS = sa.or_(
    col(GenerationJob.outcome).in_(_SAYS_OF_THE_MODEL),
    _INTERRUPTED_RUNNING,
    sa.and_(
        col(GenerationJob.segment_id).is_(None),
        col(GenerationJob.outcome).in_(_FAILED_ELSEWHERE),
    ),
)
# When an interrupted job may have stopped itself: a pass gave it up, its worker gone without
# writing it off, or SIGTERM ended the `lifecycle --once` running it. NULL for one that a stopping
# server (a deploy restart's, healthy most likely) or a Ctrl-C wrote off, which says nothing of the
# model, and for every other job.
_SELF_STOPPED_AT = sa.case(
    (
        sa.or_(
            col(GenerationJob.error).startswith(JOB_GIVEN_UP),
            col(GenerationJob.error).startswith(JOB_TERMINATED),
        ),
        col(GenerationJob.finished_at),
    )
)
# What a job says of how it ended, as the dashboard's note quotes it: its error (a failed or
# interrupted job's), or its message (one whose every line was refused: "done: 0 new variants");
# only as much as the note shows of its first line, not an error's 2,000 characters per job read.
_SAID_CHARS = 160
_SAID = sa.func.substr(
    sa.func.coalesce(col(GenerationJob.error), col(GenerationJob.message)), 1, _SAID_CHARS + 1
)
# A finished job as the backoff reads it: id, outcome, segment (None: every segment), when it
# stopped itself (_SELF_STOPPED_AT), what it said (_SAID).
_Job = tuple[int, str, int | None, datetime | None, str | None]


class _Failure(NamedTuple):
    """A job of a run of failures; `ended_at`, for one interrupted, when it was given up or
    terminated (_SELF_STOPPED_AT)."""

    job_id: int
    interrupted: bool
    ended_at: datetime | None
    said: str | None


class LatestFailure(NamedTuple):
    """The newest job of a run of failures, and the first line of what it said as it ended,
    cut short: where a marketer reads why the copy waits."""

    job_id: int
    said: str


@dataclass(frozen=True)
class Backoff:
    """How many of the segment's pass-ordered jobs failed in a row (`interrupted` of them
    interrupted mid-job), when the wait began (the last one's order, or its giving up where it
    was interrupted), and when the next order is due."""

    failed_in_a_row: int
    since: datetime
    until: datetime
    interrupted: int = 0
    latest: LatestFailure | None = None
    interrupted_why: str = _WORKER_STOPPED

    def holds_at(self, now: datetime, interval: timedelta) -> bool:
        """Whether a pass at `now` still waits. Passes start on interval boundaries, give or take
        a moment: half an interval's slack lets the pass due at `until` order, not the next."""
        return now + interval / 2 < self.until

    def paused(self) -> str:
        # To the second: at a 30 s interval, "until 22:16" for 22:16:47 read as already past.
        return f"paused after {self._failed()}, until {self.until:%Y-%m-%d %H:%M:%S} UTC"

    def resumed(self) -> str:
        return f"ordering again after {self._failed()}"

    def _failed(self) -> str:
        n, interrupted = self.failed_in_a_row, self.interrupted
        failed = "1 failed job" if n == 1 else f"{n} failed jobs in a row"
        if not interrupted:
            return failed
        # Nothing else on the dashboard says why: each job's page reads "interrupted" alone.
        which = f"{interrupted} of them" if interrupted < n else "both" if n == 2 else "all"
        return f"{failed} ({which} interrupted mid-job: {self.interrupted_why})"


def backoff_after(
    failed_orders: Sequence[datetime],
    *,
    interval: timedelta,
    interrupted: int = 0,
    latest: LatestFailure | None = None,
    interrupted_why: str = _WORKER_STOPPED,
) -> Backoff | None:
    """When each failed order in a row was made (one interrupted: given up or terminated), newest
    first, of which `interrupted` were interrupted, as `interrupted_why` says; None without any.
    `latest`: the newest's job."""
    if not failed_orders:
        return None
    wait = interval
    # Doubled one failure at a time, up to the cap: 2^(n-1) intervals overflow a timedelta.
    for _ in failed_orders[1:]:
        if wait >= BACKOFF_CAP:
            break
        wait *= 2
    since = failed_orders[0]
    until = since + min(wait, BACKOFF_CAP)
    return Backoff(len(failed_orders), since, until, interrupted, latest, interrupted_why)


def copy_backoff(session: Session, segment: Segment, *, interval: timedelta) -> Backoff | None:
    """The segment's backoff, from its latest finished jobs: one read, a second (_stored_in) only
    where a job for every segment failed among them, and a third, of the orders, only while the
    latest say the model failed."""
    recent = _until_wrote(
        session.execute(
            sa.select(
                col(GenerationJob.id),
                col(GenerationJob.outcome),
                col(GenerationJob.segment_id),
                _SELF_STOPPED_AT,
                _SAID,
            )
            .where(jobs_covering(segment), _SAYS)
            .order_by(col(GenerationJob.id).desc())
            .limit(_JOBS_READ)
        )
    )
    failed = _failed_run(recent, segment, _stored_in(session, [recent]))
    if not failed:
        return None
    return _backoff(failed, orders_of(session, [f.job_id for f in failed]), interval=interval)


def copy_backoffs(
    session: Session, segments: Sequence[Segment], *, interval: timedelta
) -> dict[int, Backoff | None]:
    """copy_backoff of each of `segments`, by id, in two reads however many there are (the
    dashboard shows every segment's): each segment's latest finished jobs, and their orders; a
    third (_stored_in) where a job for every segment failed among them."""
    ids = [segment.id for segment in segments]
    if not ids:
        return {}
    # The latest jobs of each segment, and the latest jobs for every segment of an experiment:
    # a segment's latest _JOBS_READ are among the two.
    latest = (
        sa.select(
            col(GenerationJob.id),
            col(GenerationJob.experiment_id),
            col(GenerationJob.segment_id),
            col(GenerationJob.outcome),
            _SELF_STOPPED_AT.label("stopped_at"),
            _SAID.label("said"),
            sa.func.row_number()
            .over(
                partition_by=(col(GenerationJob.experiment_id), col(GenerationJob.segment_id)),
                order_by=col(GenerationJob.id).desc(),
            )
            .label("nth"),
        )
        .where(jobs_covering_any(segments), _SAYS)
        .subquery()
    )
    jobs: dict[tuple[int, int | None], list[_Job]] = defaultdict(list)
    for job_id, experiment_id, segment_id, outcome, stopped_at, said, _ in session.execute(
        sa.select(latest).where(latest.c.nth <= _JOBS_READ).order_by(latest.c.id.desc())
    ):
        jobs[experiment_id, segment_id].append((job_id, outcome, segment_id, stopped_at, said))
    recent = {
        segment.id: _until_wrote(
            heapq.merge(
                jobs[segment.experiment_id, segment.id],
                jobs[segment.experiment_id, None],
                key=lambda job: -job[0],
            )
        )
        for segment in segments
        if segment.id is not None
    }
    stored = _stored_in(session, recent.values())
    failed = {
        segment.id: _failed_run(recent[segment.id], segment, stored)
        for segment in segments
        if segment.id is not None
    }
    ordered = orders_of(session, [f.job_id for run in failed.values() for f in run])
    return {
        segment_id: _backoff(run, ordered, interval=interval) if run else None
        for segment_id, run in failed.items()
    }


def _until_wrote(recent: Iterable[_Job]) -> list[_Job]:
    """Those of `recent`, a segment's finished jobs newest first, before the first that wrote
    copy: at most _JOBS_READ of them."""
    return list(
        itertools.takewhile(
            lambda job: job[1] != JobOutcome.WROTE.value, itertools.islice(recent, _JOBS_READ)
        )
    )


def _failed_run(
    recent: list[_Job], segment: Segment, stored: Mapping[int, Collection[str]]
) -> list[_Failure]:
    """The jobs of the run of failures that `recent` (_until_wrote's) begins with: up to a job
    for every segment that stored the segment's copy before it failed elsewhere or was
    interrupted (`stored`: _stored_in's). Its interrupted jobs only where they count
    (_counted): the orders are not read for one alone."""
    failed: list[_Failure] = []
    for job_id, outcome, _, stopped_at, said in recent:
        if segment.key in stored.get(job_id, ()):
            break
        # A job for every segment that found another's brief too long, having stored none here,
        # says nothing of the model here.
        if outcome in _FAILED:
            failed.append(_Failure(job_id, False, None, said))
        elif outcome == JobOutcome.INTERRUPTED.value and stopped_at is not None:
            failed.append(_Failure(job_id, True, stopped_at, said))
    return _counted(failed)


def _counted(run: list[_Failure]) -> list[_Failure]:
    """The run, less its interrupted jobs unless _INTERRUPTED_COUNTED of them are there."""
    if sum(f.interrupted for f in run) >= _INTERRUPTED_COUNTED:
        return run
    return [f for f in run if not f.interrupted]


def _stored_in(session: Session, runs: Iterable[list[_Job]]) -> dict[int, set[str]]:
    """The segments (keys) that each job for every segment in `runs` that ended midway
    stored copy in, by id: one read, only where there are such jobs."""
    ids = {
        job_id
        for run in runs
        for job_id, outcome, segment_id, _, _ in run
        if segment_id is None and outcome in _ENDED_MIDWAY
    }
    if not ids:
        return {}
    done = col(GenerationJob.result)["segments"]
    return {
        job_id: {key for key, kept in (segments or {}).items() if kept.get("variant_ids")}
        for job_id, segments in session.execute(
            sa.select(col(GenerationJob.id), done).where(col(GenerationJob.id).in_(ids))
        )
    }


def _backoff(
    failed: list[_Failure], ordered: dict[int, datetime], *, interval: timedelta
) -> Backoff | None:
    # A job started by hand that failed is the marketer's to see; only passes' orders wait.
    run = _counted([f for f in failed if f.job_id in ordered])
    # From when a pass gave an interrupted job up: an hour after its worker's last sign of life,
    # past the first waits from its order, which then held nothing back.
    return backoff_after(
        [f.ended_at if f.interrupted and f.ended_at else ordered[f.job_id] for f in run],
        interval=interval,
        interrupted=sum(f.interrupted for f in run),
        latest=LatestFailure(run[0].job_id, _first_line(run[0].said)) if run else None,
        interrupted_why=_interrupted_why(run),
    )


def _interrupted_why(run: list[_Failure]) -> str:
    """What the run's interrupted jobs are said to mean: each counted one was given up, or
    terminated with its command (its error, _SAID's read, begins with JOB_TERMINATED)."""
    terminated = {(f.said or "").startswith(JOB_TERMINATED) for f in run if f.interrupted}
    if terminated == {True}:
        return _COMMAND_TERMINATED
    return _EITHER_STOPPED if terminated == {True, False} else _WORKER_STOPPED


def _first_line(said: str | None) -> str:
    """What the dashboard's note quotes of `said` (_SAID's read): its headline, cut short."""
    text = said or ""
    said, ends_it = headline(text)
    first = said or "no error recorded"
    # A read of a character more than the note shows that stopped in the line quoted cut it,
    # though the line break and indent taken out may leave it short enough to read as whole.
    if len(text) > _SAID_CHARS and ends_it:
        return first[: _SAID_CHARS - 1] + "…"
    return cut(first, _SAID_CHARS)


def orders_of(session: Session, job_ids: Collection[int]) -> dict[int, datetime]:
    """Those of the generation jobs a pass ordered (its regenerate events name them), with when;
    the others were started by hand."""
    if not job_ids:
        return {}
    job_id = col(LifecycleEvent.numbers)["job_id"].as_integer()
    # A pass orders a job for one segment, and its regenerate row names that segment.
    segments = select(GenerationJob.segment_id).where(col(GenerationJob.id).in_(job_ids))
    ordered = session.exec(
        select(job_id, LifecycleEvent.created_at).where(
            # By segment and action first: the index on both leaves the JSON read to those
            # segments' orders, where by experiment it read every fold of every segment.
            col(LifecycleEvent.segment_id).in_(segments),
            col(LifecycleEvent.action) == "regenerate",
            job_id.in_(job_ids),
        )
    ).all()
    return {int(found): at for found, at in ordered}
