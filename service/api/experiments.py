"""Marketer/admin endpoints: experiments, variants, reports (`admin` scope)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from flask import current_app, g, url_for
from flask_openapi3 import APIBlueprint, Tag
from pydantic_core import to_jsonable_python
from sqlmodel import Session

from service import db
from service.api.common import (
    BEARER,
    IfMatch,
    etag_matches,
    guarded,
    json_of,
    located,
    preconditioned,
    responses,
    with_etag,
)
from service.brief_edits import (
    add_segment,
    brief_etag,
    persona_etag,
    update_experiment,
    update_segment,
)
from service.copy_checks import lint_config
from service.errors import Conflict
from service.experiments import (
    add_variant,
    contents_of,
    create_experiment,
    find_segment,
    get_experiment,
    get_variant,
    list_experiments,
    policy_etag,
    segment_contents_of,
    segments_of,
    update_policy,
    update_variant,
    variant_etag,
)
from service.generation_jobs import create_job, get_job
from service.job_cancel import cancel_job
from service.lifecycle import AUDIT_ACTIONS, AUDIT_PAGE, audit_trail
from service.models import Experiment, GenerationJob, JobStatus, Scope, Segment, Variant
from service.policy import LifecyclePolicy, PolicyChanges, policy_of, policy_shown
from service.reports import experiment_report
from service.schemas import (
    AuditEvent,
    AuditQuery,
    AuditTrail,
    ExperimentCreate,
    ExperimentList,
    ExperimentListQuery,
    ExperimentOut,
    ExperimentPatch,
    ExperimentPath,
    GenerateIn,
    JobAccepted,
    JobOut,
    JobPath,
    JobWriting,
    ProductOut,
    Report,
    SegmentIn,
    SegmentOut,
    SegmentPatch,
    SegmentPath,
    VariantCreate,
    VariantOut,
    VariantPatch,
    VariantPath,
)

api = guarded(
    APIBlueprint(
        "experiments",
        __name__,
        url_prefix="/v1",
        abp_tags=[Tag(name="experiments")],
        abp_security=BEARER,
    ),
    Scope.ADMIN,
)


_VARIANT_FIELDS = {
    "id",
    "text",
    "origin",
    "status",
    "status_reason",
    "impressions",
    "conversions",
    "audit",
    "created_at",
    "updated_at",
}


def _variant_out(variant: Variant, segment_key: str) -> VariantOut:
    return VariantOut(segment=segment_key, **variant.model_dump(include=_VARIANT_FIELDS))


def _experiment_out(session: Session, experiment: Experiment) -> dict[str, Any]:
    segments, variants = contents_of(
        session=session,
        experiment_ids=[experiment.id],  # type: ignore[list-item]
        with_audit=True,
    )
    return _shown(experiment, segments, variants, with_audit=True)


def _shown(
    experiment: Experiment,
    segments: Sequence[Sequence[Any]],
    variants: Sequence[Sequence[Any]],
    *,
    with_audit: bool,
) -> dict[str, Any]:
    """ExperimentOut's JSON form. `segments` and `variants` are the experiment's rows from
    contents_of, in the order they are shown. Without the audit, each variant leaves its key out
    rather than writing null, which would read as copy never generated.

    Below the experiment it is built as plain dicts, not models: a VariantOut validated and
    dumped for each of a page's 30,000 variants was a third of its time (and reading the rows
    by name, not unpacking them, 100 ms). Stored values are what VariantOut's would dump as (the
    CHECK constraints hold origin and status to their enums); pydantic's own serializer writes
    the timestamps and the audit, as it does a model's."""
    policy, policy_error = policy_shown(experiment.policy)
    shown = ExperimentOut(
        id=experiment.id,  # type: ignore[arg-type]
        name=experiment.name,
        sticky=experiment.sticky,
        brand_voice=experiment.brand_voice,
        auto_approve=experiment.auto_approve,
        policy=policy,
        policy_error=policy_error,
        created_at=experiment.created_at,
        product=ProductOut(
            name=experiment.product_name,
            description=experiment.product_description,
            price=experiment.product_price,
            url=experiment.product_url,
        ),
        segments=[],
    ).model_dump(mode="json")
    shown["segments"] = _segments_shown(segments, variants, with_audit=with_audit)
    return shown


def _segments_shown(
    segments: Sequence[Sequence[Any]],
    variants: Sequence[Sequence[Any]],
    *,
    with_audit: bool,
) -> list[dict[str, Any]]:
    """SegmentOut's JSON form of each of `segments` (rows of contents_of) with its `variants`
    (rows of contents_of or segment_contents_of), for an experiment or a segment alike, so that
    the two answers cannot come to differ (see _shown)."""
    keys = {segment_id: key for _, segment_id, key, _ in segments}
    by_segment: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for (
        _,
        segment_id,
        variant_id,
        text,
        origin,
        status,
        status_reason,
        impressions,
        conversions,
        created_at,
        updated_at,
        audit,
    ) in variants:
        variant = {
            "id": variant_id,
            "segment": keys[segment_id],
            "text": text,
            "origin": origin,
            "status": status,
            "status_reason": status_reason,
            "impressions": impressions,
            "conversions": conversions,
            "created_at": to_jsonable_python(created_at),
            "updated_at": to_jsonable_python(updated_at),
        }
        if with_audit:
            # A float JSON has no word for (a NaN logprob, which SQLite's JSON column keeps) is
            # null, as a model dumps it: Flask's json.dumps writes NaN, which no JSON parser reads.
            variant["audit"] = to_jsonable_python(audit, inf_nan_mode="null")
        by_segment[segment_id].append(variant)
    return [
        {"key": key, "description": description, "variants": by_segment[segment_id]}
        for _, segment_id, key, description in segments
    ]


@api.post("/experiments", responses=responses(_201=located(ExperimentOut)))
def create(body: ExperimentCreate) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Create an experiment with its product and segments."""
    session = db.session()
    experiment = create_experiment(session=session, experiment_create=body)
    return _experiment_out(session, experiment), 201, _at("show", experiment_id=experiment.id)


def _at(endpoint: str, **values: Any) -> dict[str, str]:
    """The Location of what a 201 created, or of the job a 202 accepted (RFC 9110, 10.2.2): a
    client reads where to find it rather than building the path from the body's id."""
    return {"Location": url_for(f"{api.name}.{endpoint}", **values)}


@api.get("/experiments", responses=responses(_200=ExperimentList))
def index(query: ExperimentListQuery) -> tuple[dict[str, Any], int]:
    """Experiments with their segments and variants, oldest first, 100 at a time."""
    session = db.session()
    # One more than a page, to tell whether another follows.
    experiments = list_experiments(session=session, after=query.after, limit=query.limit + 1)
    page = experiments[: query.limit]
    segments, variants = contents_of(session=session, experiment_ids=[e.id for e in page])  # type: ignore[misc]
    # Each row begins with its experiment's id.
    segments_by: dict[int, list[Sequence[Any]]] = defaultdict(list)
    variants_by: dict[int, list[Sequence[Any]]] = defaultdict(list)
    for segment in segments:
        segments_by[segment[0]].append(segment)
    for variant in variants:
        variants_by[variant[0]].append(variant)
    listed = {
        "experiments": [
            _shown(e, segments_by[e.id], variants_by[e.id], with_audit=False)  # type: ignore[index]
            for e in page
        ],
        "next_after": page[-1].id if len(experiments) > query.limit else None,
    }
    return listed, 200


@api.get("/experiments/<path_id:experiment_id>", responses=responses(_200=with_etag(ExperimentOut)))
def show(path: ExperimentPath) -> tuple[dict[str, Any], int, dict[str, str]]:
    """One experiment with its segments and variants; its ETag is its brief's, for an If-Match."""
    session = db.session()
    experiment = get_experiment(session=session, experiment_id=path.experiment_id)
    return _with_brief_etag(session, experiment)


def _with_brief_etag(
    session: Session, experiment: Experiment
) -> tuple[dict[str, Any], int, dict[str, str]]:
    return _experiment_out(session, experiment), 200, {"ETag": brief_etag(experiment)}


def _by_key() -> str:
    # The key's public half, as `copybandit keys list` shows it; the secret never reaches a row.
    return f"API key {g.api_key_id}"


@api.patch("/experiments/<path_id:experiment_id>", responses=preconditioned(ExperimentOut))
def patch(
    path: ExperimentPath, body: ExperimentPatch, header: IfMatch
) -> tuple[dict[str, Any], int, dict[str, str]]:
    # No blank line after the summary: see patch_policy.
    """Change the name, product, brand voice or auto-approval; fields not given keep their values.
    Each change is an `edit` in the audit trail, with who made it and the old and new values.
    With If-Match, only while the brief's ETag is the one it names (412 otherwise)."""
    session = db.session()
    experiment = update_experiment(
        session=session,
        experiment_id=path.experiment_id,
        patch=body,
        by=_by_key(),
        etag_matches=etag_matches(),
    )
    return _with_brief_etag(session, experiment)


@api.post(
    "/experiments/<path_id:experiment_id>/segments", responses=responses(_201=located(SegmentOut))
)
def create_segment(
    path: ExperimentPath, body: SegmentIn
) -> tuple[dict[str, Any], int, dict[str, str]]:
    # No blank line after the summary: see patch_policy.
    """Add a segment, after the others; it has no copy until some is added or generated.
    Decisions for its key are served the default segment's copy until it has active copy."""
    segment = add_segment(
        session=db.session(), experiment_id=path.experiment_id, segment_in=body, by=_by_key()
    )
    # A view lists the segments it loaded: this worker's lists the new one at once.
    current_app.extensions["copybandit.snapshots"].invalidate(path.experiment_id)
    created = SegmentOut(key=segment.key, description=segment.description, variants=[])
    where = _at("show_segment", experiment_id=path.experiment_id, segment_key=segment.key)
    return *json_of(created, 201), where


@api.get(
    "/experiments/<path_id:experiment_id>/segments/<segment_key>",
    responses=responses(_200=with_etag(SegmentOut)),
)
def show_segment(path: SegmentPath) -> tuple[dict[str, Any], int, dict[str, str]]:
    """One segment with its variants; its ETag is its persona's, for an If-Match."""
    session = db.session()
    get_experiment(session=session, experiment_id=path.experiment_id)
    segment = find_segment(
        session=session,
        experiment_id=path.experiment_id,
        key=path.segment_key,
        field="segment_key",
    )
    return _with_persona_etag(session, segment)


def _with_persona_etag(
    session: Session, segment: Segment
) -> tuple[dict[str, Any], int, dict[str, str]]:
    row = (segment.experiment_id, segment.id, segment.key, segment.description)
    variants = segment_contents_of(session=session, segment_id=segment.id)  # type: ignore[arg-type]
    (shown,) = _segments_shown([row], variants, with_audit=True)
    return shown, 200, {"ETag": persona_etag(segment)}


@api.patch(
    "/experiments/<path_id:experiment_id>/segments/<segment_key>",
    responses=preconditioned(SegmentOut),
)
def patch_segment(
    path: SegmentPath, body: SegmentPatch, header: IfMatch
) -> tuple[dict[str, Any], int, dict[str, str]]:
    # No blank line after the summary: see patch_policy.
    """Rewrite a segment's description, the persona its copy is written for.
    With If-Match, only while the persona's ETag is the one it names (412 otherwise)."""
    session = db.session()
    segment = update_segment(
        session=session,
        experiment_id=path.experiment_id,
        key=path.segment_key,
        description=body.description,
        by=_by_key(),
        etag_matches=etag_matches(),
    )
    return _with_persona_etag(session, segment)


@api.post(
    "/experiments/<path_id:experiment_id>/variants", responses=responses(_201=located(VariantOut))
)
def create_variant(
    path: ExperimentPath, body: VariantCreate
) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Add hand-written copy to a segment; it is served at once."""
    variant = add_variant(
        session=db.session(), experiment_id=path.experiment_id, variant_create=body
    )
    current_app.extensions["copybandit.snapshots"].invalidate(path.experiment_id)
    return *json_of(_variant_out(variant, body.segment), 201), _at(
        "show_variant", variant_id=variant.id
    )


@api.get("/variants/<path_id:variant_id>", responses=responses(_200=with_etag(VariantOut)))
def show_variant(path: VariantPath) -> tuple[dict[str, Any], int, dict[str, str]]:
    """One variant; its ETag is its status's and text's, for an If-Match."""
    session = db.session()
    return _with_variant_etag(session, get_variant(session=session, variant_id=path.variant_id))


def _with_variant_etag(
    session: Session, variant: Variant
) -> tuple[dict[str, Any], int, dict[str, str]]:
    segment = session.get(Segment, variant.segment_id)
    shown = _variant_out(variant, segment.key if segment else "")
    return *json_of(shown), {"ETag": variant_etag(variant)}


@api.patch("/variants/<path_id:variant_id>", responses=preconditioned(VariantOut))
def patch_variant(
    path: VariantPath, body: VariantPatch, header: IfMatch
) -> tuple[dict[str, Any], int, dict[str, str]]:
    # No blank line after the summary: see patch_policy.
    """Change a variant's status, or the text of one still pending review.
    With If-Match, only while the variant's ETag is the one it names (412 otherwise)."""
    session = db.session()
    variant = update_variant(
        session=session,
        variant_id=path.variant_id,
        patch=body,
        lint_config=lint_config(current_app.extensions["copybandit.settings"]),
        by=_by_key(),
        etag_matches=etag_matches(),
    )
    current_app.extensions["copybandit.snapshots"].invalidate(variant.experiment_id)
    return _with_variant_etag(session, variant)


@api.get("/experiments/<path_id:experiment_id>/report", responses=responses(_200=Report))
def report(path: ExperimentPath) -> tuple[dict[str, Any], int]:
    """Per segment and variant: counts, rate, credible interval, probability best, leader."""
    return json_of(experiment_report(session=db.session(), experiment_id=path.experiment_id))


@api.post("/experiments/<path_id:experiment_id>/generate", responses=responses(_202=JobAccepted))
def generate(path: ExperimentPath, body: GenerateIn) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Have the model write `n` new lines per segment, in the background; poll the job."""
    runner = current_app.extensions["copybandit.jobs"]
    job = create_job(
        session=db.session(),
        experiment_id=path.experiment_id,
        segment_key=body.segment,
        n=body.n,
        model=runner.options.model,
    )
    runner.submit(job.id)
    accepted = JobAccepted(job_id=job.id, status=job.status)  # type: ignore[arg-type]
    return *json_of(accepted, 202), _at("show_job", job_id=job.id)


@api.get("/jobs/<path_id:job_id>", responses=responses(_200=JobOut))
def show_job(path: JobPath) -> tuple[dict[str, Any], int]:
    """A generation job's status, progress and, when done, its result."""
    session = db.session()
    return json_of(_job_out(session, get_job(session=session, job_id=path.job_id)))


def _job_out(session: Session, job: GenerationJob) -> JobOut:
    segment = session.get(Segment, job.segment_id) if job.segment_id is not None else None
    writing = None
    # Only while it runs: a server of the release before that ends the job leaves the columns be.
    if job.status == JobStatus.RUNNING.value and job.writing_segment_id is not None:
        written = session.get(Segment, job.writing_segment_id)
        if written is not None:
            writing = JobWriting(segment=written.key, accepted=job.writing_accepted)
    return JobOut(
        segment=segment.key if segment else None,
        writing=writing,
        **job.model_dump(exclude={"segment_id"}),
    )


@api.post("/jobs/<path_id:job_id>/cancel", responses=responses(_200=JobOut))
def cancel(path: JobPath) -> tuple[dict[str, Any], int]:
    """Stop a queued or running job; copy it stored stays. 409 once it has ended."""
    session = db.session()
    job = cancel_job(session=session, job_id=path.job_id, by=f"API key {g.api_key_id}")
    return json_of(_job_out(session, job))


@api.get(
    "/experiments/<path_id:experiment_id>/policy",
    responses=responses(_200=with_etag(LifecyclePolicy)),
)
def show_policy(path: ExperimentPath) -> tuple[dict[str, Any], int, dict[str, str]]:
    """The lifecycle rules, defaults filled in; its ETag is the policy's, for an If-Match.
    409 while the stored policy does not validate: a PATCH making it valid replaces it."""
    experiment = get_experiment(session=db.session(), experiment_id=path.experiment_id)
    policy, error = policy_shown(experiment.policy)
    if error is not None:
        # The defaults shown in its place are not what the experiment runs: the lifecycle leaves
        # it alone until the policy validates.
        raise Conflict(f"experiment {path.experiment_id}'s {error}", field="policy")
    return *json_of(policy), {"ETag": policy_etag(experiment)}


@api.patch("/experiments/<path_id:experiment_id>/policy", responses=preconditioned(LifecyclePolicy))
def patch_policy(
    path: ExperimentPath, body: PolicyChanges, header: IfMatch
) -> tuple[dict[str, Any], int, dict[str, str]]:
    # No blank line after the summary: flask-openapi3 joins the docstring's other lines with
    # <br/> into the description, which then began with one.
    """Change lifecycle rules; fields not given keep their current values.
    Stored fields this version does not know (written by another) are dropped.
    With If-Match, only while the policy's ETag is the one it names (412 otherwise)."""
    experiment = update_policy(
        session=db.session(),
        experiment_id=path.experiment_id,
        changes=body,
        by=_by_key(),
        etag_matches=etag_matches(),
    )
    return *json_of(policy_of(experiment.policy)), {"ETag": policy_etag(experiment)}


@api.get("/experiments/<path_id:experiment_id>/audit", responses=responses(_200=AuditTrail))
def audit(path: ExperimentPath, query: AuditQuery) -> tuple[dict[str, Any], int]:
    """What the lifecycle did and why, newest first, 500 at a time."""
    session = db.session()
    get_experiment(session=session, experiment_id=path.experiment_id)
    keys = {s.id: s.key for s in segments_of(session=session, experiment_id=path.experiment_id)}
    # One more than a page, to tell whether another follows.
    events = audit_trail(
        session,
        experiment_id=path.experiment_id,
        limit=AUDIT_PAGE + 1,
        before=query.before,
        actions=AUDIT_ACTIONS if query.action is None else (query.action,),
    )
    page = events[:AUDIT_PAGE]
    return json_of(
        AuditTrail(
            events=[
                AuditEvent(
                    segment=keys.get(e.segment_id) if e.segment_id else None,
                    **e.model_dump(
                        include={"id", "created_at", "variant_id", "action", "reason", "numbers"}
                    ),
                )
                for e in page
            ],
            next_before=page[-1].id if len(events) > AUDIT_PAGE else None,
        )
    )
