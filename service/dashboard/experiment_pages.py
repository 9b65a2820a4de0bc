"""Experiments: the list, one experiment's standings and charts, creation, generation, audit and
CSV export."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from flask import current_app, flash, g, redirect, render_template, request, url_for
from pydantic import ValidationError
from sqlmodel import Session, col, select
from werkzeug.wrappers import Response

from service import db
from service.copy_backoff import Backoff, LatestFailure, copy_backoffs
from service.dashboard import charts
from service.dashboard.blueprint import bp, flash_about_segment, form_int, validated
from service.dashboard.blueprint import invalidate as invalidate_snapshot
from service.errors import APIError, Conflict, InvalidInput, in_words
from service.experiments import (
    add_variant,
    create_experiment,
    find_segment,
    get_experiment,
    list_experiments,
    segments_of,
    variant_texts,
)
from service.generation_jobs import (
    INTERRUPTED,
    create_job,
    get_job,
    interrupted,
    interruption,
    jobs_on_order,
)
from service.history import REACH, History, purged_impressions, segments_history
from service.job_cancel import cancel_job
from service.lifecycle import (
    AUDIT_ACTIONS,
    AUDIT_PAGE,
    audit_trail,
    jobs_it_ordered,
    short_of_copy,
)
from service.long_briefs import BriefHeld, briefs_refused, held_for
from service.models import (
    Experiment,
    GenerationJob,
    JobStatus,
    Segment,
    Variant,
    VariantStatus,
    utcnow,
)
from service.policy import LifecyclePolicy
from service.query import refuse_repeated_parameters
from service.reports import experiment_report, segment_report, serving_winners
from service.schemas import (
    MAX_SEGMENTS,
    ExperimentCreate,
    GenerateIn,
    SegmentIn,
    SegmentReport,
    ThinLead,
    VariantCreate,
    Verdict,
)

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# A price in ASCII digits, with an optional sign, point and exponent (a little looser than JSON's
# numbers: ".5" and "5." are taken). float() alone also read "1_000" as 1000, "٤٩" as 49, and
# "nan" and "infinity" as numbers.
_PRICE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")

CSV_COLUMNS = (
    "variant_id",
    "segment",
    "status",
    "origin",
    "text",
    "impressions",
    "conversions",
    "rate",
    "posterior_mean",
    "ci95_low",
    "ci95_high",
    "prob_best",
    "expected_loss",
)
# Spreadsheet apps run a cell that starts with one of these as a formula; copy is untrusted.
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class ExperimentRow:
    experiment: Experiment
    segment_keys: list[str]
    impressions: int
    conversions: int
    winners: int
    pending: int


# Experiments on a page of the list: thousands on one page took seconds to draw and to scroll.
EXPERIMENTS_PAGE = 50


@dataclass(frozen=True)
class ListPage:
    """Where a page of the list is in it: its first and last experiment's places (from 1) and the
    whole list's length, and the cursors of the pages around it (None where there is none)."""

    first: int
    last: int
    total: int
    previous_after: int | None
    next_before: int | None


@bp.get("/")
def experiments() -> str:
    """Newest first, EXPERIMENTS_PAGE at a time: oldest first, as the API lists them, a shop's
    newest experiment was on the last page. `before` an experiment id: the page of those just
    older than it (Next, from the id the page ended with); `after` one: those just newer
    (Previous). Cut by id, so an experiment created while someone pages lands before the first
    page, and moves no page they go on to."""
    refuse_repeated_parameters()
    after, before = _cursor("after"), _cursor("before")
    if after is not None and before is not None:
        raise InvalidInput("before: give after or before, not both", field="before")
    session = db.session()
    page = list_experiments(
        session=session, after=after, before=before, limit=EXPERIMENTS_PAGE, newest_first=True
    )
    if after is not None and len(page) < EXPERIMENTS_PAGE:
        # The start of the list: its first page, full, rather than the few after `after`.
        page = list_experiments(session=session, limit=EXPERIMENTS_PAGE, newest_first=True)
    ids = [experiment.id for experiment in page]
    totals = {
        experiment_id: (impressions or 0, conversions or 0, pending or 0)
        for experiment_id, impressions, conversions, pending in session.execute(
            sa.select(
                col(Variant.experiment_id),
                sa.func.sum(Variant.impressions),
                sa.func.sum(Variant.conversions),
                sa.func.sum(
                    sa.case((col(Variant.status) == VariantStatus.PENDING_REVIEW.value, 1), else_=0)
                ),
            )
            .where(col(Variant.experiment_id).in_(ids))
            .group_by(col(Variant.experiment_id))
        )
    }
    segments: dict[int, list[Segment]] = {}
    for segment in session.exec(
        select(Segment).where(col(Segment.experiment_id).in_(ids)).order_by(col(Segment.position))
    ):
        segments.setdefault(segment.experiment_id, []).append(segment)
    won = serving_winners(session, [s for own in segments.values() for s in own])
    rows = []
    for experiment in page:
        assert experiment.id is not None
        own = segments.get(experiment.id, [])
        impressions, conversions, pending = totals.get(experiment.id, (0, 0, 0))
        rows.append(
            ExperimentRow(
                experiment=experiment,
                segment_keys=[s.key for s in own],
                impressions=int(impressions),
                conversions=int(conversions),
                winners=sum(1 for s in own if s.id in won),
                pending=int(pending),
            )
        )
    return render_template(
        "experiments.html",
        rows=rows,
        place=_place(session, page, after if after is not None else before),
    )


def _cursor(name: str) -> int | None:
    """A page's `after` or `before`, or a 400 naming it: 0 as well as an id, as the API takes."""
    text = request.args.get(name)
    return None if text is None else form_int(name, text, low=0)


def _place(session: Session, page: Sequence[Experiment], cursor: int | None) -> ListPage | None:
    """Where `page` (newest first) is in the list; None on a list that fits one page, which needs
    no links. `cursor`: the page's after or before, for a page past the list's end."""
    total = session.exec(select(sa.func.count()).select_from(Experiment)).one()
    if not page:
        # An empty page comes past the experiments from its cursor up, the newer ones.
        newer = 0 if cursor is None else _counted(session, col(Experiment.id) >= cursor)
        return ListPage(newer + 1, newer, total, None, None) if total else None
    if total <= EXPERIMENTS_PAGE and len(page) == total:
        return None
    newer = _counted(session, col(Experiment.id) > page[0].id)
    return ListPage(
        first=newer + 1,
        last=newer + len(page),
        total=total,
        previous_after=page[0].id if newer else None,
        next_before=page[-1].id if newer + len(page) < total else None,
    )


def _counted(session: Session, where: sa.ColumnElement[bool]) -> int:
    return session.exec(select(sa.func.count()).where(where)).one()


@dataclass(frozen=True)
class RefusedForm:
    """A form on the experiment page that was refused: which one ("brief", "add-segment", or
    "persona:" or "add-copy:" and a segment's key), the error, the box it names, and what was
    typed, shown back in it."""

    form: str
    error: str
    box: str | None
    typed: dict[str, str]


@bp.get("/experiments/<id:experiment_id>")
def experiment(experiment_id: int) -> str:
    return experiment_page(experiment_id)


def experiment_page(experiment_id: int, refused: RefusedForm | None = None) -> str:
    session = db.session()
    experiment = get_experiment(session=session, experiment_id=experiment_id)
    report = experiment_report(session=session, experiment_id=experiment_id)
    # By id, which a message about a segment's copy names (flash_about_segment).
    rows = segments_of(session=session, experiment_id=experiment_id)
    ids = {segment.key: segment.id for segment in rows if segment.id is not None}
    settings = current_app.extensions["copybandit.settings"]
    held = briefs_refused(session, experiment, rows, model=settings.model)
    # The report has validated the stored policy already: passes leave the experiment alone while
    # it does not validate, and order it no copy.
    policy = report.policy if report.policy_error is None else None
    unheld = [segment for segment in rows if held[segment.id] is None]  # type: ignore[index]
    # A held segment's brief is too long for the model: a job for every segment skips it.
    # Read once for the note of copy on order and for whether a wait holds an order back, so the
    # two count the same jobs.
    orders = jobs_on_order(session=session, segments=unheld, now=utcnow())
    waiting = _backing_off(
        session,
        unheld,
        timedelta(seconds=settings.lifecycle_interval_seconds),
        policy,
        orders,
    )
    on_order = _on_order(orders, unheld)
    charted = {segment.key: _charted(segment) for segment in report.segments}
    served = {key: variant_ids for key, (variant_ids, _) in charted.items() if variant_ids}
    histories = segments_history(session=session, variant_ids=served)
    quiet = {key: served[key] for key, history in histories.items() if history.empty}
    purged = purged_impressions(session=session, variant_ids=quiet) if quiet else {}
    views = []
    for segment in report.segments:
        segment_id = ids[segment.key]
        why = held[segment_id]
        # Only an unheld segment's copy waits: its hold is why it gets none.
        wait = waiting.get(segment_id)
        views.append(
            _segment_view(
                segment_id,
                segment,
                charted[segment.key],
                histories.get(segment.key),
                purged=purged.get(segment.key, 0) > 0,
                no_copy=why or (wait.paused() if wait else None),
                failed_last=wait.latest if wait else None,
                held=held_for(segment.key, why) if why is not None else None,
                on_order=on_order.get(segment_id, ()),
            )
        )
    return render_template(
        "experiment.html",
        experiment=experiment,
        segments=views,
        pending=_pending_count(session, experiment_id),
        reasons=_status_reasons(session, experiment_id),
        reach_weeks=REACH.days // 7,
        personas={segment.key: segment.description for segment in rows},
        refused=refused,
        discount_per_hour=report.policy.discount_per_hour,
        policy_error=report.policy_error,
    )


def _backing_off(
    session: Session,
    segments: list[Segment],
    interval: timedelta,
    policy: LifecyclePolicy | None,
    orders: Mapping[int, Sequence[GenerationJob]],
) -> dict[int, Backoff]:
    """The waits that keep the lifecycle from ordering some of `segments` (by id) copy for now,
    after their orders failed. Only where it would otherwise order some: beside copy enough, the
    note said it held back an order it would not have made. `orders`: each one's jobs on order."""
    if policy is None:
        return {}
    short = short_of_copy(session, segments, policy, orders)
    backoffs = copy_backoffs(session, [s for s in segments if s.id in short], interval=interval)
    now = utcnow()
    return {
        segment_id: backoff
        for segment_id, backoff in backoffs.items()
        if backoff is not None and backoff.holds_at(now, interval)
    }


@dataclass(frozen=True)
class JobOnOrder:
    """A queued or running generation job that writes a segment's copy, and how many of the
    lines it was asked for it has stored there so far; while it is writing that segment, how many
    have passed the checks so far (`accepted`), none of them stored until the segment ends."""

    job_id: int
    status: str
    delivered: int
    n: int
    accepted: int | None = None


def _on_order(
    orders: Mapping[int, Sequence[GenerationJob]], segments: list[Segment]
) -> dict[int, tuple[JobOnOrder, ...]]:
    """The jobs on order for each of `segments` (by id), oldest first, from `orders`
    (generation_jobs.jobs_on_order, read for every segment in one query, as it would take one per
    segment). Without them a segment with no copy said nothing while the lifecycle's order for it
    waited or ran."""
    return {
        segment.id: tuple(
            JobOnOrder(
                job_id=job.id,  # type: ignore[arg-type]
                status=job.status,
                delivered=len(
                    (job.result or {})
                    .get("segments", {})
                    .get(segment.key, {})
                    .get("variant_ids", [])
                ),
                n=job.n,
                accepted=job.writing_accepted if job.writing_segment_id == segment.id else None,
            )
            for job in orders[segment.id]
        )
        for segment in segments
        if segment.id is not None
    }


def _status_reasons(session: Session, experiment_id: int) -> dict[int, str | None]:
    """Why each variant is in its status: who changed it by hand, or which job or rule did."""
    query = sa.select(col(Variant.id), col(Variant.status_reason)).where(
        col(Variant.experiment_id) == experiment_id
    )
    return {variant_id: reason for variant_id, reason in session.execute(query)}


@dataclass(frozen=True)
class SegmentView:
    segment_id: int
    report: SegmentReport
    # The copy a marketer most wants to read, as the report's verdict names it (its kind the
    # headline's, "" with no live copy); None where it is too early and the leader has never
    # been shown, so it names no copy.
    headline_id: int | None
    headline_text: str | None
    headline_kind: str
    # What the headline calls that copy (headline_badge), "" with no live copy.
    headline_badge: str
    # The headline's CSS class (headline_style): its kind, but for a lone leader's own.
    headline_style: str
    headline_prob_best: float | None
    bars: dict[int, charts.IntervalBar]
    styles: dict[int, charts.LineStyle]
    # The leader, where it is ahead on too little evidence to be called leading.
    thin_lead: ThinLead | None
    # Why some served variants have no line, when the chart would hold more than it can tell apart.
    charted_note: str
    # Whether any copy has been served: without charts, a segment that has served copy has no
    # rows in the charts' window, either purged or older than the charts reach.
    served: bool
    # Whether a retention purge deleted some of its rows, so the totals hold traffic no row shows.
    purged: bool
    share_chart: charts.LineChart | None
    rate_chart: charts.LineChart | None
    # Why the lifecycle orders no copy for it (a brief too long for the model, or its last orders
    # failed and the next waits), if it orders none.
    no_copy: str | None = None
    # Where its last orders failed: the newest of those jobs, and the first line of its error.
    # "paused after 3 failed jobs" alone said neither why nor where to look.
    failed_last: LatestFailure | None = None
    # What a job started by hand for it is refused with, while its brief is held as too long for
    # the model: the page says so beside the Generate button, which it turns off.
    held: str | None = None
    # The queued or running jobs that will write its copy.
    on_order: tuple[JobOnOrder, ...] = ()


def _segment_view(
    segment_id: int,
    report: SegmentReport,
    charted: tuple[list[int], str],
    history: History | None,
    *,
    purged: bool,
    no_copy: str | None,
    failed_last: LatestFailure | None,
    held: str | None,
    on_order: tuple[JobOnOrder, ...],
) -> SegmentView:
    """`charted`: the variants the charts draw and a note on those left out (_charted);
    `history`: theirs, None where there are none."""
    rows = {row.variant_id: row for row in report.variants}
    verdict = report.verdict
    headline_id = verdict.variant_id if verdict is not None else None
    thin = verdict.thin_lead if verdict is not None else None
    if (
        verdict is not None
        and verdict.kind == "early"
        and thin is not None
        and thin.impressions == 0
    ):
        # A leader never shown tops probability best on its prior alone: the page named one of
        # several unserved lines, picked by sampling noise, as "ahead".
        headline_id = None
    scale = max((row.interval[1] for row in report.variants), default=0.0)
    bars = {
        row.variant_id: charts.interval_bar(*row.interval, row.posterior_mean, scale)
        for row in report.variants
    }
    served, charted_note = charted
    styles = {variant_id: charts.style(i) for i, variant_id in enumerate(served)}
    share_chart = rate_chart = None
    if history is not None and not history.empty:
        labels = [f"#{variant_id}" for variant_id in served]
        fmt = _label_format(history.width)
        x_labels = [start.strftime(fmt) for start in history.starts]
        share_chart = charts.line_chart(
            # The periods are UTC days or hours; a marketer elsewhere would misread them.
            title="Traffic share per period (UTC)",
            labels=labels,
            series=history.traffic_share().tolist(),
            x_labels=x_labels,
            y_max=1.0,
        )
        rate_chart = charts.line_chart(
            title="Conversion rate, cumulative (UTC)",
            labels=labels,
            series=history.cumulative_rate().tolist(),
            x_labels=x_labels,
        )
    return SegmentView(
        segment_id=segment_id,
        report=report,
        headline_id=headline_id,
        headline_text=rows[headline_id].text if headline_id is not None else None,
        headline_kind=verdict.kind if verdict is not None else "",
        headline_badge=headline_badge(verdict) if verdict is not None else "",
        headline_style=headline_style(verdict) if verdict is not None else "",
        headline_prob_best=rows[headline_id].prob_best if headline_id is not None else None,
        bars=bars,
        styles=styles,
        thin_lead=thin,
        charted_note=charted_note,
        served=bool(served),
        purged=purged,
        share_chart=share_chart,
        rate_chart=rate_chart,
        no_copy=no_copy,
        failed_last=failed_last,
        held=held,
        on_order=on_order,
    )


_BADGES = {
    "winner": "Winner",
    "leader": "Leading",
    "proven": "Best proven",
    "early": "Too early to tell",
}


def headline_badge(verdict: Verdict) -> str:
    """What the headline calls the copy `verdict` names. A segment's only live copy with the
    evidence was badged "Leading" above the note that it was the only live copy: it leads
    nothing, so it is called what the note says it is."""
    if verdict.kind == "leader" and verdict.alone:
        return "Only live copy"
    return _BADGES[verdict.kind]


def headline_style(verdict: Verdict) -> str:
    """The headline's class, which colours it. Badged "Only live copy", a lone leader was still
    styled as a leader, in the leader's blue: it leads nothing, so it is styled as alone."""
    if verdict.kind == "leader" and verdict.alone:
        return "alone"
    return verdict.kind


def _charted(report: SegmentReport) -> tuple[list[int], str]:
    """The variants the charts draw, in the table's order, and a note when some are left out.
    Charts follow the copy that has been served (pending copy has no history yet); past
    MAX_LINES, the active copy and then the most served, since the lines would no longer look
    different."""
    served = [row for row in report.variants if row.impressions > 0]
    if len(served) <= charts.MAX_LINES:
        return [row.variant_id for row in served], ""
    first = sorted(served, key=lambda row: (row.status != VariantStatus.ACTIVE, -row.impressions))
    kept = {row.variant_id for row in first[: charts.MAX_LINES]}
    note = (
        f"The charts show {charts.MAX_LINES} of the {len(served)} variants served here: "
        "the active ones, then the most served."
    )
    return [row.variant_id for row in served if row.variant_id in kept], note


def _label_format(width: timedelta) -> str:
    if width >= timedelta(days=1):
        return "%b %d"
    if width >= timedelta(hours=3):
        return "%b %d %H:00"
    return "%H:%M"


def _pending_count(session: Session, experiment_id: int) -> int:
    return session.exec(
        select(sa.func.count()).where(
            Variant.experiment_id == experiment_id,
            Variant.status == VariantStatus.PENDING_REVIEW.value,
        )
    ).one()


@bp.route("/experiments/new", methods=["GET", "POST"])
def new_experiment() -> Response | str | tuple[str, int]:
    if request.method == "GET":
        return render_template("experiment_new.html", form={}, error=None)
    form = request.form.to_dict()
    try:
        body = validated(ExperimentCreate, _experiment_fields(form))
        experiment = create_experiment(session=db.session(), experiment_create=body)
    except APIError as exc:
        # Shown on the form with what was typed, so nothing the marketer wrote is lost.
        db.session().rollback()
        page = render_template(
            "experiment_new.html",
            form=form,
            error=exc.message,
            error_box=box_for(exc.field),
        )
        return page, exc.status
    # Isolated (a flash is text, no <bdi>): a right-to-left name would otherwise reorder the
    # sentence around it, its closing quote and the period included.
    flash(
        f"Created experiment “\u2068{experiment.name}\u2069”. "
        "Add copy to each segment to start serving."
    )
    return redirect(url_for("dashboard.experiment", experiment_id=experiment.id), code=303)


# The form's box for each field an error names, by the API's dotted path.
_FORM_BOXES = {
    "name": "name",
    "product.name": "product_name",
    "product.description": "product_description",
    "product.price": "price",
    "product.url": "product_url",
    "brand_voice": "brand_voice",
    "segments": "segments",
    "auto_approve": "auto_approve",
}


def box_for(field: str | None) -> str | None:
    """The box the page marks invalid and puts the cursor in, so a screen reader reads the error
    with the box's label; a segment's path ("segments.0.key") is found by its first part."""
    if field is None:
        return None
    return _FORM_BOXES.get(field, _FORM_BOXES.get(field.split(".")[0]))


def _experiment_fields(form: dict[str, str]) -> dict[str, Any]:
    """The form's flat fields in the API's shape; segments are `key: description` lines."""
    segments = []
    # The line each key was first given on: a repeat is named by both lines, not only as "segment
    # keys must be unique", which left the marketer to find it.
    first_line: dict[str, int] = {}
    # Split only where a browser ends a textarea's lines: splitlines() also broke at U+2028 and
    # other separators inside a description, and the line numbers it named were off.
    for number, line in enumerate(_LINE_BREAK.split(form.get("segments", "")), start=1):
        if not line.strip():
            continue
        key, sep, description = line.partition(":")
        if not sep:
            raise _segment_line_error(number, "must read 'key: description'")
        segment = {"key": key.strip(), "description": description.strip()}
        _check_segment_line(number, segment)
        if segment["key"] in first_line:
            problem = f"the key {segment['key']} is already on line {first_line[segment['key']]}"
            raise _segment_line_error(number, problem)
        first_line[segment["key"]] = number
        segments.append(segment)
    # Counted here, in the box's words: pydantic's were "List should have at least 1 item after
    # validation, not 0" (a box of blank lines) and "at most 50 items ..., not 51".
    if not segments:
        raise InvalidInput(
            "segments: write at least one line, as 'key: description'", field="segments"
        )
    if len(segments) > MAX_SEGMENTS:
        raise InvalidInput(
            f"segments: {len(segments)} lines, where an experiment has at most {MAX_SEGMENTS}",
            field="segments",
        )
    price = form_price(form.get("price", ""))
    return {
        "name": form.get("name", ""),
        "product": {
            "name": form.get("product_name", ""),
            "description": form.get("product_description", ""),
            "price": price,
            "url": form.get("product_url", "").strip() or None,
        },
        "segments": segments,
        "brand_voice": form.get("brand_voice", "").strip() or None,
        "auto_approve": form.get("auto_approve") == "on",
    }


def form_price(text: str) -> float | None:
    """The price box's text as a number; empty is none."""
    text = text.strip()
    if text and not _PRICE.fullmatch(text):
        # "must be a number" alone, to someone who typed "$49", "1,299.00" or (in much of Europe,
        # and on a phone's decimal keypad there) "49,50", did not say what was wrong.
        raise InvalidInput(
            "product.price: must be a number written like 1299.50, with a decimal point and "
            "no currency sign or thousands separator",
            field="product.price",
        )
    return float(text) if text else None


def _check_segment_line(number: int, segment: dict[str, str]) -> None:
    """Each line on its own, so a problem is named by the line the marketer sees: blank lines are
    skipped, so the position in the list would point at the wrong one."""
    try:
        SegmentIn.model_validate(segment)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["loc"][0] == "key":
            raise _segment_line_error(number, KEY_RULE) from None
        # pydantic says "String should have at least 1 character": the string is the description.
        problem = in_words(first).removeprefix("String ")
        raise _segment_line_error(number, f"the description after the colon {problem}") from None


# SegmentKey's pattern, for people.
KEY_RULE = (
    "the key must be lower-case letters, digits, - or _, up to 40 characters, "
    "starting with a letter or digit"
)


def _segment_line_error(number: int, problem: str) -> InvalidInput:
    return InvalidInput(f"segments, line {number}: {problem}", field="segments")


@bp.post("/experiments/<id:experiment_id>/variants")
def add_manual_variant(experiment_id: int) -> Response | tuple[str, int]:
    segment_key = request.form.get("segment", "")
    try:
        body = validated(
            VariantCreate, {"segment": segment_key, "text": request.form.get("text", "")}
        )
        variant = add_variant(
            session=db.session(), experiment_id=experiment_id, variant_create=body
        )
    except APIError as exc:
        # A segment that is not there has no form to show the error in: the error page says so.
        if exc.field != "text":
            raise
        return refused_form(experiment_id, add_copy_form(segment_key), exc, "text")
    invalidate_snapshot(experiment_id)
    flash_about_segment(
        f"Added variant #{variant.id} to {body.segment}; it is being served now.",
        variant.segment_id,
    )
    return back_to(experiment_id, body.segment)


@bp.app_template_global()
def add_copy_form(segment_key: str) -> str:
    """The name a refused "Add copy by hand" form goes by on the experiment page (see
    persona_form)."""
    return f"add-copy:{segment_key}"


def refused_form(
    experiment_id: int,
    form: str,
    exc: APIError,
    box: str | None,
    shown_now: dict[str, str] | None = None,
) -> tuple[str, int]:
    """The experiment page again, the refused form open with what was typed and its error.
    `shown_now` replaces hidden fields that say what the page showed, for a form refused because
    that has changed since."""
    db.session().rollback()
    typed = request.form.to_dict() | (shown_now or {})
    typed.pop("csrf_token", None)
    refused = RefusedForm(form=form, error=exc.message, box=box, typed=typed)
    return experiment_page(experiment_id, refused), exc.status


@bp.post("/experiments/<id:experiment_id>/generate")
def generate(experiment_id: int) -> Response:
    n = form_int("n", request.form.get("n", ""), high=20)
    body = validated(GenerateIn, {"segment": request.form.get("segment") or None, "n": n})
    runner = current_app.extensions["copybandit.jobs"]
    try:
        job = create_job(
            session=db.session(),
            experiment_id=experiment_id,
            segment_key=body.segment,
            n=body.n,
            model=runner.options.model,
        )
    except BriefHeld as exc:
        # Beside the button pressed, in the segment's section; a job for every segment has none.
        if body.segment is None:
            flash(exc.message, "error")
        else:
            held = find_segment(session=db.session(), experiment_id=experiment_id, key=body.segment)
            flash_about_segment(exc.message, held.id, "error")  # type: ignore[arg-type]
        return back_to(experiment_id, body.segment)
    runner.submit(job.id)
    return redirect(url_for("dashboard.job", job_id=job.id), code=303)


@bp.get("/jobs/<id:job_id>")
def job(job_id: int) -> str:
    session = db.session()
    found = get_job(session=session, job_id=job_id)
    segment = session.get(Segment, found.segment_id) if found.segment_id is not None else None
    # Until the lifecycle marks it failed, an interrupted job's row still says queued or running.
    gave_up = interrupted(found, utcnow())
    finished = _finished(found, gave_up)
    # job.js follows a running job in place; a finished job's page has nothing to follow.
    g.runs_script = not finished
    return render_template(
        "job.html",
        job=found,
        segment=segment,
        experiment=get_experiment(session=session, experiment_id=found.experiment_id),
        finished=finished,
        interrupted=(
            interruption(INTERRUPTED, by_lifecycle=bool(jobs_it_ordered(session, [job_id])))
            if gave_up
            else None
        ),
        accepted=_accepted_count(found),
    )


@bp.post("/jobs/<id:job_id>/cancel")
def cancel(job_id: int) -> Response:
    try:
        cancel_job(session=db.session(), job_id=job_id, by=g.signed_in_as)
    except Conflict:
        # It ended while its page was open: the page, drawn again, says how.
        flash("The job had already ended, so there was nothing to cancel.", "error")
    return redirect(url_for("dashboard.job", job_id=job_id), code=303)


@bp.get("/jobs/<id:job_id>/progress")
def job_progress(job_id: int) -> dict[str, Any]:
    """What job.js updates the job's page with in place: a reload sent a screen reader back to
    the top of the page every 2 seconds, and took the keyboard focus with it."""
    found = get_job(session=db.session(), job_id=job_id)
    return {
        "status": found.status,
        "message": found.message,
        "progress": found.progress,
        # The script reloads the page once this is true, to show the result: the same test as
        # the page's own, or the page would go on reloading.
        "finished": _finished(found, interrupted(found, utcnow())),
    }


def _finished(job: GenerationJob, gave_up: bool) -> bool:
    return job.status not in (JobStatus.QUEUED, JobStatus.RUNNING) or gave_up


def _accepted_count(job: GenerationJob) -> int:
    """How many new variants the job stored, as its result lists them per segment."""
    segments = (job.result or {}).get("segments", {})
    return sum(len(done.get("variant_ids", [])) for done in segments.values())


# One discount row per segment per pass soon fills the log; they show only when asked for.
_AUDIT_DEFAULT = tuple(a for a in AUDIT_ACTIONS if a != "discount")


@bp.get("/experiments/<id:experiment_id>/audit")
def audit(experiment_id: int) -> str:
    refuse_repeated_parameters()
    session = db.session()
    experiment = get_experiment(session=session, experiment_id=experiment_id)
    action = request.args.get("action", "")
    if action and action not in AUDIT_ACTIONS:
        raise InvalidInput(f"action: must be one of {', '.join(AUDIT_ACTIONS)}", field="action")
    before = request.args.get("before")
    events = audit_trail(
        session,
        experiment_id=experiment_id,
        limit=AUDIT_PAGE + 1,
        before=None if before is None else form_int("before", before),
        actions=(action,) if action else _AUDIT_DEFAULT,
    )
    shown = events[:AUDIT_PAGE]
    keys = {s.id: s.key for s in segments_of(session=session, experiment_id=experiment_id)}
    named = {event.variant_id for event in shown if event.variant_id is not None}
    texts = variant_texts(session=session, experiment_id=experiment_id, variant_ids=named)
    return render_template(
        "audit.html",
        experiment=experiment,
        events=shown,
        older=events[AUDIT_PAGE - 1].id if len(events) > AUDIT_PAGE else None,
        action=action,
        actions=AUDIT_ACTIONS,
        segment_keys=keys,
        texts=texts,
    )


@bp.get("/experiments/<id:experiment_id>/segments/<segment_key>.csv")
def export_csv(experiment_id: int, segment_key: str) -> Response:
    session = db.session()
    found = find_segment(session=session, experiment_id=experiment_id, key=segment_key)
    segment = segment_report(session=session, segment=found)
    out = io.StringIO()
    # The byte-order mark tells Excel the file is UTF-8: without it, Excel read non-Latin copy as
    # Windows-1252 and showed mojibake. Read it in Python with encoding="utf-8-sig".
    out.write("\ufeff")
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in segment.variants:
        writer.writerow(
            [
                row.variant_id,
                segment.key,
                row.status.value,
                row.origin.value,
                _cell(row.text),
                row.impressions,
                row.conversions,
                _number(row.rate),
                _number(row.posterior_mean),
                _number(row.interval[0]),
                _number(row.interval[1]),
                _number(row.prob_best),
                _number(row.expected_loss),
            ]
        )
    return Response(
        out.getvalue(),
        mimetype="text/csv",
        headers={
            "Content-Disposition": (
                f'attachment; filename="experiment-{experiment_id}-{segment.key}.csv"'
            )
        },
    )


def _cell(text: str) -> str:
    return "'" + text if text.startswith(_FORMULA_PREFIXES) else text


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def back_to(experiment_id: int, segment_key: str | None = None) -> Response:
    anchor = f"segment-{segment_key}" if segment_key else None
    return redirect(
        url_for("dashboard.experiment", experiment_id=experiment_id, _anchor=anchor), code=303
    )
