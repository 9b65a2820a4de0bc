"""Database tables. API request/response shapes live in `service.schemas`.

Counters (`Variant.impressions`, `Variant.conversions`) are what the posterior reads; they change
only through `UPDATE ... SET n = n + k` in the same transaction as the row they count, so they
always equal a recount of the impression and event rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlmodel import Field, SQLModel, col

# Deterministic constraint names: later migrations (and SQLite batch mode) name what they alter.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# Ids are PostgreSQL's 32-bit integers: every place that reads an id from a client (the API's
# bodies and paths, the dashboard's forms and addresses, the CLI's options) refuses a larger one,
# which could only end in the database's error.
MAX_DB_ID = 2**31 - 1
# A generation job's one-line message (the column's width).
JOB_MESSAGE_MAX_CHARS = 500
# And its error (the column's width).
JOB_ERROR_MAX_CHARS = 2000


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend: SQLite keeps no offset, so it is restored on read."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware UTC datetime (models.utcnow())")
        return None if value is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        # PostgreSQL answers in the session's TimeZone, which a server or database may set to
        # local time: the dashboard then printed New York times labelled UTC.
        return value.astimezone(UTC)


class DatabaseNow(sa.sql.expression.FunctionElement[datetime]):
    """The database's current time, as a column's server default (migrations 0012 and 0013)."""

    inherit_cache = True


@compiles(DatabaseNow)
def _database_now(element: DatabaseNow, compiler: Any, **kwargs: Any) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(DatabaseNow, "sqlite")
def _database_now_sqlite(element: DatabaseNow, compiler: Any, **kwargs: Any) -> str:
    # In the text every other time is stored in: SQLite's CURRENT_TIMESTAMP has no fraction, and
    # SQLite compares the text, so such a time never equalled itself bound from Python (a job an
    # older server queued was never given up as interrupted).
    return "strftime('%Y-%m-%d %H:%M:%f000', 'now')"


def _timestamp_defaulting_to_now(**kwargs: object) -> datetime:
    """A timestamp the database fills in when an INSERT leaves it out: for columns a server of the
    release before did not know, so it keeps working while `copybandit migrate` runs (0012)."""
    return _timestamp(sa_column_kwargs={"server_default": DatabaseNow()}, **kwargs)


def _timestamp(**kwargs: object) -> datetime:
    return Field(
        default_factory=utcnow,
        sa_type=UtcDateTime,  # type: ignore[call-overload]
        nullable=False,
        **kwargs,
    )


class Origin(StrEnum):
    MANUAL = "manual"
    CONTROL = "control"
    GENERATED = "generated"


class VariantStatus(StrEnum):
    PENDING_REVIEW = "pending_review"
    ACTIVE = "active"
    PAUSED = "paused"
    RETIRED = "retired"
    REJECTED = "rejected"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    # Stopped on request (the API, the dashboard, Ctrl-C in `copybandit generate`), migration 0014.
    CANCELLED = "cancelled"


class JobOutcome(StrEnum):
    """How a job ended, which its status alone does not say: the lifecycle backs off from copy
    the model keeps failing to write (service.copy_backoff), and told these apart by the job's
    error and message text. None while the job is queued or running. Migration 0015."""

    WROTE = "wrote"
    # Ran to the end with every line refused (the lint, the dedupe): as good as failed.
    WROTE_NONE = "wrote_none"
    FAILED = "failed"
    # No worker finished it (the server or command stopped, or an hour passed): it says nothing
    # of the model, but for two in a row that a pass gave up as they ran (service.copy_backoff).
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"
    # A brief too long for the model, held instead (service.long_briefs).
    TOO_LONG = "too_long"


# How the error of a job no worker finished begins, in every release: a job a server of the
# release before migration 0015 wrote off has no outcome, and only these words say so.
JOB_INTERRUPTED = "interrupted: "
# How the error of a job a lifecycle pass gave up begins: its worker vanished without writing it
# off (killed: out of memory, say). A server or command that stops writes its own jobs off, saying
# so (service.generation_jobs), as a deploy restart does to healthy ones.
# These are read back from stored rows (the holds, the copy backoff): reworded, jobs already
# stored would stop matching, so a new wording must keep these words at its start.
JOB_GIVEN_UP = f"{JOB_INTERRUPTED}no worker finished it within an hour"
# How the error of a job begins that `lifecycle --once` held when SIGTERM stopped it: a time limit
# (cron's `timeout`, systemd's RuntimeMaxSec) most likely, which a job too slow for it meets every
# run, as a model too big meets the memory limit; Ctrl-C, a person's choice, words it otherwise.
JOB_TERMINATED = f"{JOB_INTERRUPTED}the command running it was terminated"


class Scope(StrEnum):
    SERVE = "serve"
    ADMIN = "admin"


def _one_of(column: str, values: type[StrEnum]) -> sa.CheckConstraint:
    allowed = ", ".join(f"'{v.value}'" for v in values)
    return sa.CheckConstraint(f"{column} IN ({allowed})", name=f"{column}_allowed")


class Experiment(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, unique=True)
    product_name: str = Field(max_length=200)
    product_description: str = Field(sa_type=sa.Text)
    product_price: float | None = Field(default=None)
    product_url: str | None = Field(default=None, max_length=2000)
    sticky: bool = Field(default=False)
    brand_voice: str | None = Field(default=None, max_length=500)
    # Generated copy goes live without review when true.
    auto_approve: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})
    # service.policy.LifecyclePolicy fields that differ from the defaults.
    policy: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)
    created_at: datetime = _timestamp()


class Segment(SQLModel, table=True):
    __table_args__ = (sa.UniqueConstraint("experiment_id", "key"),)

    id: int | None = Field(default=None, primary_key=True)
    experiment_id: int = Field(foreign_key="experiment.id", index=True)
    key: str = Field(max_length=40)
    description: str = Field(sa_type=sa.Text)
    # The first segment (position 0) is the experiment's default for unknown or missing keys.
    position: int
    # Declared by the lifecycle job; no foreign key, since variants already reference segments.
    winner_variant_id: int | None = Field(default=None)
    winner_declared_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class Variant(SQLModel, table=True):
    __table_args__ = (_one_of("origin", Origin), _one_of("status", VariantStatus))

    id: int | None = Field(default=None, primary_key=True)
    experiment_id: int = Field(foreign_key="experiment.id", index=True)
    segment_id: int = Field(foreign_key="segment.id", index=True)
    text: str = Field(sa_type=sa.Text)
    origin: str = Field(max_length=16)
    status: str = Field(max_length=16)
    status_reason: str | None = Field(default=None, max_length=500)
    prior_alpha: float = Field(default=1.0)
    prior_beta: float = Field(default=1.0)
    impressions: int = Field(default=0, sa_type=sa.BigInteger)
    conversions: int = Field(default=0, sa_type=sa.BigInteger)
    # Discounting (policy.discount_per_hour): evidence up to the last fold, decayed, plus the exact
    # counts since. Never folded, all are zero and the posterior reads the counters as they are.
    decayed_successes: float = Field(default=0.0, sa_column_kwargs={"server_default": "0"})
    decayed_failures: float = Field(default=0.0, sa_column_kwargs={"server_default": "0"})
    folded_impressions: int = Field(
        default=0, sa_type=sa.BigInteger, sa_column_kwargs={"server_default": "0"}
    )
    folded_conversions: int = Field(
        default=0, sa_type=sa.BigInteger, sa_column_kwargs={"server_default": "0"}
    )
    folded_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    # Rows `copybandit purge` deleted. The counters keep them, so the statistics stay exact, and
    # `copybandit check` adds these to its recount of what is left.
    purged_impressions: int = Field(
        default=0, sa_type=sa.BigInteger, sa_column_kwargs={"server_default": "0"}
    )
    purged_conversions: int = Field(
        default=0, sa_type=sa.BigInteger, sa_column_kwargs={"server_default": "0"}
    )
    # For generated copy: model, prompt, seed, lint results and job, so every line can be explained.
    audit: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)
    created_at: datetime = _timestamp()
    # Written only by status changes and a pending variant's edits: the lifecycle reads an active
    # variant's as when it went live (service.lifecycle._served_since, for starved_after).
    updated_at: datetime = _timestamp()

    def posterior(self, *, decay: float = 1.0) -> tuple[float, float]:
        """Beta(alpha, beta): the prior plus (discounted) successes and failures. `decay`: the
        weight a fold now would leave on the evidence folded so far (see
        service.lifecycle.posteriors), applied here without one."""
        new_conversions = self.conversions - self.folded_conversions
        new_failures = (self.impressions - self.conversions) - (
            self.folded_impressions - self.folded_conversions
        )
        # A late conversion turns a failure that a fold already discounted back into a success,
        # and takes a whole failure off what is left of them: never below none (beta <= 0 made
        # every draw for the segment raise).
        return (
            self.prior_alpha + self.decayed_successes * decay + new_conversions,
            self.prior_beta + max(0.0, self.decayed_failures * decay + new_failures),
        )


class Impression(SQLModel, table=True):
    # A variant's rows over a span of time, as the dashboard's charts read them; the index serves
    # lookups by variant alone too.
    __table_args__ = (sa.Index("ix_impression_variant_id_created_at", "variant_id", "created_at"),)

    # Time-ordered text ids (see service.identity): opaque to storefronts, index-friendly.
    id: str = Field(primary_key=True, max_length=32)
    experiment_id: int = Field(foreign_key="experiment.id")
    segment_id: int = Field(foreign_key="segment.id")
    variant_id: int = Field(foreign_key="variant.id")
    propensity: float
    policy: str = Field(max_length=32)
    user_hash: str | None = Field(default=None, max_length=64)
    created_at: datetime = _timestamp(index=True)


class Event(SQLModel, table=True):
    __table_args__ = (
        # One conversion per impression, whatever event_id a retry carries.
        sa.UniqueConstraint("impression_id", "type"),
        # As on impression: a variant's conversions over a span of time, for the charts.
        sa.Index("ix_event_variant_id_created_at", "variant_id", "created_at"),
        # Every variant's conversions in one hour, as service.hourly_traffic counts them; without
        # it each hour counted read the whole table (migration 0019).
        sa.Index("ix_event_created_at", "created_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    event_id: str | None = Field(default=None, max_length=128, unique=True)
    impression_id: str = Field(foreign_key="impression.id", max_length=32)
    variant_id: int = Field(foreign_key="variant.id")
    type: str = Field(max_length=16)
    value: float | None = Field(default=None)
    created_at: datetime = _timestamp()


# A sticky repeat writes the time it used its assignment only once the stored one is this old:
# noting every use would add a write to each repeat, which otherwise only reads.
ASSIGNMENT_USE_NOTED_EVERY = timedelta(days=1)


class Assignment(SQLModel, table=True):
    """Sticky experiments: the variant a user keeps seeing while it stays active."""

    experiment_id: int = Field(foreign_key="experiment.id", primary_key=True)
    segment_id: int = Field(foreign_key="segment.id", primary_key=True)
    user_hash: str = Field(primary_key=True, max_length=64)
    variant_id: int = Field(foreign_key="variant.id")
    propensity: float
    created_at: datetime = _timestamp()
    # When a decision last served it, to within ASSIGNMENT_USE_NOTED_EVERY; `copybandit purge`
    # deletes assignments unused for longer than the rows it deletes.
    last_used_at: datetime = _timestamp_defaulting_to_now(index=True)


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_key"
    __table_args__ = (_one_of("scope", Scope),)

    # The public half of the key; the secret half is stored only as a SHA-256 digest.
    id: str = Field(primary_key=True, max_length=16)
    secret_hash: str = Field(max_length=64)
    scope: str = Field(max_length=16)
    label: str = Field(default="", max_length=200)
    created_at: datetime = _timestamp()
    revoked_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class Marketer(SQLModel, table=True):
    """A person who signs in to the dashboard. Dashboard sign-ins and API keys never stand in for
    each other."""

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=254, unique=True)
    # werkzeug's salted scrypt hash; the password itself is never stored.
    password_hash: str = Field(max_length=255)
    created_at: datetime = _timestamp()
    last_sign_in_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class MarketerSession(SQLModel, table=True):
    """A dashboard sign-in. Stored server-side, so signing out ends it even for a copied cookie."""

    __tablename__ = "marketer_session"

    # SHA-256 of the token in the cookie: a leaked table does not hand out live sessions.
    id: str = Field(primary_key=True, max_length=64)
    marketer_id: int = Field(foreign_key="marketer.id", index=True)
    created_at: datetime = _timestamp()
    expires_at: datetime = Field(sa_type=UtcDateTime)


class GenerationJob(SQLModel, table=True):
    """A request for generated copy, run in the background; its row is its progress report."""

    __tablename__ = "generation_job"
    __table_args__ = (_one_of("status", JobStatus), _one_of("outcome", JobOutcome))

    id: int | None = Field(default=None, primary_key=True)
    experiment_id: int = Field(foreign_key="experiment.id", index=True)
    # None: every segment of the experiment.
    segment_id: int | None = Field(default=None, foreign_key="segment.id", index=True)
    n: int
    status: str = Field(default=JobStatus.QUEUED.value, max_length=16)
    progress: float = Field(default=0.0)
    message: str = Field(default="queued", max_length=JOB_MESSAGE_MAX_CHARS)
    result: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)
    error: str | None = Field(default=None, max_length=JOB_ERROR_MAX_CHARS)
    outcome: str | None = Field(default=None, max_length=16)
    # The segment the running job is writing now, and how many of its lines have passed the checks
    # so far: they are stored only when the segment ends, so without these a one-segment job read
    # 0 lines until it was done. Written with its progress; cleared as the segment's copy is
    # stored or the job ends. No foreign key, as for winner_variant_id. Migration 0017.
    writing_segment_id: int | None = Field(default=None)
    writing_accepted: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    created_at: datetime = _timestamp()
    started_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    # Its last write: a running job's worker writes its progress every round of the model, so a
    # running job whose row stays unwritten has no worker (see generation_jobs.interrupted).
    updated_at: datetime = _timestamp_defaulting_to_now()


def jobs_covering(segment: Segment) -> sa.ColumnElement[bool]:
    """The generation jobs that write the segment's copy: its own, and its experiment's jobs for
    every segment."""
    return sa.or_(
        col(GenerationJob.segment_id) == segment.id,
        sa.and_(
            col(GenerationJob.segment_id).is_(None),
            col(GenerationJob.experiment_id) == segment.experiment_id,
        ),
    )


def jobs_covering_any(segments: Sequence[Segment]) -> sa.ColumnElement[bool]:
    """The generation jobs that write any of `segments`' copy, to be read grouped by experiment
    and segment: a job for every segment (no segment_id) counts for each of its experiment's."""
    return sa.and_(
        col(GenerationJob.experiment_id).in_({segment.experiment_id for segment in segments}),
        sa.or_(
            col(GenerationJob.segment_id).in_([segment.id for segment in segments]),
            col(GenerationJob.segment_id).is_(None),
        ),
    )


class LifecycleEvent(SQLModel, table=True):
    """Audit trail: what the lifecycle did, to which variant, by which rule, with which numbers."""

    __tablename__ = "lifecycle_event"
    __table_args__ = (
        # A segment's orders for copy (service.copy_backoff), not its every discount fold.
        sa.Index("ix_lifecycle_event_segment_id_action", "segment_id", "action"),
        # An experiment's newest rows of one action, for the audit trail (lifecycle.audit_trail),
        # without reading its discount folds, one per segment and pass (migration 0018).
        sa.Index("ix_lifecycle_event_experiment_id_action_id", "experiment_id", "action", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    experiment_id: int = Field(foreign_key="experiment.id")
    segment_id: int | None = Field(default=None, foreign_key="segment.id")
    variant_id: int | None = Field(default=None, foreign_key="variant.id")
    action: str = Field(max_length=32)
    reason: str = Field(sa_type=sa.Text)
    numbers: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)
    created_at: datetime = _timestamp()


class SchedulerLease(SQLModel, table=True):
    """One row per periodic job: the last interval slot some process claimed and ran, as the
    time its interval starts, in milliseconds since the epoch (service.scheduler)."""

    __tablename__ = "scheduler_lease"

    name: str = Field(primary_key=True, max_length=64)
    slot: int = Field(sa_type=sa.BigInteger)
    holder: str = Field(max_length=200)
    claimed_at: datetime = _timestamp()


class HourlyTraffic(SQLModel, table=True):
    """A variant's impressions and conversions in one whole UTC hour, by the rows' created_at,
    counted once the hour is past (service.hourly_traffic), so that a chart of hour-wide buckets
    or wider reads a row an hour instead of a row an impression. Migration 0019."""

    __tablename__ = "hourly_traffic"

    variant_id: int = Field(foreign_key="variant.id", primary_key=True)
    hour: datetime = Field(sa_type=UtcDateTime, primary_key=True)
    impressions: int = Field(sa_type=sa.BigInteger)
    conversions: int = Field(sa_type=sa.BigInteger)


class RecentTraffic(SQLModel, table=True):
    """A variant's impressions and conversions from `start` to the end of its 5-minute slice (or
    the recent mark), counted by service.hourly_traffic and kept 14 hours behind the hourly mark,
    so that a chart counts the rows of minutes rather than of the hour and more since the hourly
    mark, or of the 12 hours a chart of 30-minute buckets reaches. Migrations 0020 and 0021."""

    __tablename__ = "recent_traffic"

    variant_id: int = Field(foreign_key="variant.id", primary_key=True)
    start: datetime = Field(sa_type=UtcDateTime, primary_key=True)
    impressions: int = Field(sa_type=sa.BigInteger)
    conversions: int = Field(sa_type=sa.BigInteger)


class HourlyTrafficMark(SQLModel, table=True):
    """How far hourly_traffic (name 'hourly_traffic') and recent_traffic (name 'recent_traffic')
    have counted: every impression and event row created before `counted_before` is in that
    table, and none after; 'recent_slices': where recent_traffic's rows are whole 5-minute slices
    from. Each row is written in the transaction that stores what it counted, so counts and mark
    are written together or not at all. Migrations 0019, 0020 and 0021."""

    __tablename__ = "hourly_traffic_mark"

    name: str = Field(primary_key=True, max_length=32)
    counted_before: datetime | None = Field(default=None, sa_type=UtcDateTime)
