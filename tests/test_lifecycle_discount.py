"""Discounting: older evidence fades by `discount_per_hour`, applied to the counters the posterior
reads, while the exact impression and conversion counters stay untouched."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlmodel import Session, col, select

from bandits import stats
from service import lifecycle
from service.cli import main
from service.lifecycle import run_lifecycle
from service.models import Experiment, LifecycleEvent, Segment, Variant

QUIET = {"regenerate": False, "min_impressions": 10**9}  # only the discount acts


def _add(session: Session, variant_id: int, impressions: int, conversions: int) -> None:
    session.execute(
        sa.update(Variant)
        .where(col(Variant.id) == variant_id)
        .values(
            impressions=col(Variant.impressions) + impressions,
            conversions=col(Variant.conversions) + conversions,
        )
    )
    session.commit()


def _variant(session: Session, variant_id: int) -> Variant:
    session.expire_all()
    variant = session.get(Variant, variant_id)
    assert variant is not None
    return variant


@pytest.fixture
def setup(api: Any, app: Any, session: Session) -> tuple[Any, int, Variant]:
    created = api.create_experiment(policy={**QUIET, "discount_per_hour": 0.5})
    variant_id = api.add_variant(created["id"], "tea-lovers", "The Aurora kettle, fast.")["id"]
    return app.extensions["copybandit.engine"], variant_id, _variant(session, variant_id)


def test_old_evidence_decays_and_new_evidence_counts_in_full(
    setup: tuple[Any, int, Variant], session: Session
) -> None:
    engine, variant_id, fresh = setup
    start = fresh.created_at
    prior = (fresh.prior_alpha, fresh.prior_beta)

    _add(session, variant_id, impressions=100, conversions=10)
    run_lifecycle(engine=engine, model="", now=start + timedelta(hours=2))
    # Nothing was folded before: everything so far enters at full weight.
    assert _variant(session, variant_id).posterior() == pytest.approx(
        (prior[0] + 10, prior[1] + 90)
    )

    _add(session, variant_id, impressions=50, conversions=10)
    run_lifecycle(engine=engine, model="", now=start + timedelta(hours=4))
    # Two hours at 0.5 per hour: the old 10/90 weigh 0.25; the new 10/40 count in full.
    folded = _variant(session, variant_id)
    assert folded.posterior() == pytest.approx((prior[0] + 2.5 + 10, prior[1] + 22.5 + 40))
    assert (folded.impressions, folded.conversions) == (150, 20)  # exact counters untouched

    _add(session, variant_id, impressions=10, conversions=1)  # between passes: added as they come
    assert _variant(session, variant_id).posterior() == pytest.approx(
        (prior[0] + 12.5 + 1, prior[1] + 62.5 + 9)
    )


def test_each_fold_is_audited_with_the_weight_it_applied(
    setup: tuple[Any, int, Variant], session: Session
) -> None:
    engine, variant_id, fresh = setup
    _add(session, variant_id, impressions=1000, conversions=100)
    # Discounting turned on a month after the variant started: its first fold keeps it all.
    month_later = fresh.created_at + timedelta(days=30)
    run_lifecycle(engine=engine, model="", now=month_later)
    run_lifecycle(engine=engine, model="", now=month_later + timedelta(hours=1))

    first, second = session.exec(
        select(LifecycleEvent)
        .where(LifecycleEvent.action == "discount")
        .where(LifecycleEvent.segment_id == fresh.segment_id)
        .order_by(col(LifecycleEvent.id))
    ).all()
    assert _variant(session, variant_id).posterior() == pytest.approx(
        (fresh.prior_alpha + 50, fresh.prior_beta + 450)
    )
    assert first.numbers is not None and second.numbers is not None
    assert first.numbers["discount_per_hour"] == 0.5
    # Before, the first fold's audit said factor_min 0.5**720 while it kept the evidence in full.
    assert first.numbers["factor_min"] == 1.0
    assert first.numbers["first_folds"] == 1
    assert "1 folded for the first time, in full" in first.reason
    assert (second.numbers["factor_min"], second.numbers["first_folds"]) == (0.5, 0)


def test_two_passes_at_once_decay_the_evidence_once(
    setup: tuple[Any, int, Variant], session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, variant_id, fresh = setup
    prior = (fresh.prior_alpha, fresh.prior_beta)
    _add(session, variant_id, impressions=100, conversions=10)
    run_lifecycle(engine=engine, model="", now=fresh.created_at + timedelta(hours=1))
    later = fresh.created_at + timedelta(hours=3)

    # The other pass (the scheduler's beside `copybandit lifecycle --once`, say) folds after this
    # pass started, before it folds: this one reads the variants under the experiment's lock,
    # after the other's fold committed.
    fold = lifecycle.fold_segment
    others: list[bool] = []

    def other_pass_folds_first(*args: Any, **kwargs: Any) -> LifecycleEvent | None:
        if not others:
            others.append(True)
            run_lifecycle(engine=engine, model="", now=later)
        return fold(*args, **kwargs)

    monkeypatch.setattr(lifecycle, "fold_segment", other_pass_folds_first)
    run_lifecycle(engine=engine, model="", now=later)

    # Two hours at 0.5 per hour, once: before, the evidence weighed 0.0625, and two audit rows
    # each said 0.25.
    assert others
    assert _variant(session, variant_id).posterior() == pytest.approx(
        (prior[0] + 2.5, prior[1] + 22.5)
    )
    discounts = session.exec(
        select(LifecycleEvent)
        .where(LifecycleEvent.action == "discount")
        .where(LifecycleEvent.segment_id == fresh.segment_id)
        .where(LifecycleEvent.created_at == later)
    ).all()
    assert [d.numbers["factor_min"] for d in discounts if d.numbers] == [0.25]


def test_a_fold_of_variants_another_writer_folded_since_they_were_read_changes_nothing(
    setup: tuple[Any, int, Variant], session: Session
) -> None:
    """Passes of this version fold one at a time under the experiment's lock; a writer that does
    not take it (an older release's pass during a deploy) can still fold between a read and its
    write."""
    engine, variant_id, fresh = setup
    prior = (fresh.prior_alpha, fresh.prior_beta)
    _add(session, variant_id, impressions=100, conversions=10)
    run_lifecycle(engine=engine, model="", now=fresh.created_at + timedelta(hours=1))
    later = fresh.created_at + timedelta(hours=3)
    experiment = session.get(Experiment, fresh.experiment_id)
    segment = session.get(Segment, fresh.segment_id)
    assert experiment is not None and segment is not None
    read = session.exec(select(Variant).where(Variant.segment_id == fresh.segment_id)).all()

    run_lifecycle(engine=engine, model="", now=later)
    stale_fold = lifecycle._fold(session, experiment, segment, read, 0.5, later)
    session.commit()

    assert stale_fold is None  # no audit row for a discount that did not happen
    assert _variant(session, variant_id).posterior() == pytest.approx(
        (prior[0] + 2.5, prior[1] + 22.5)
    )


def test_a_pass_that_reads_a_later_passs_fold_leaves_it_alone(
    setup: tuple[Any, int, Variant], session: Session
) -> None:
    engine, variant_id, fresh = setup
    _add(session, variant_id, impressions=100, conversions=10)
    run_lifecycle(engine=engine, model="", now=fresh.created_at + timedelta(hours=1))
    _add(session, variant_id, impressions=50, conversions=10)
    # A pass that started later (the scheduler's, say) folds before one that started earlier
    # reads the variant.
    later, earlier = (fresh.created_at + timedelta(hours=h) for h in (3, 2))
    run_lifecycle(engine=engine, model="", now=later)
    folded = _variant(session, variant_id)
    expected = (folded.posterior(), folded.folded_at, folded.folded_impressions)

    report = run_lifecycle(engine=engine, model="", now=earlier)

    # Folding it again would decay by a negative age (refused: the segment failed its pass) and
    # move folded_at back, so the next fold would decay that hour again.
    assert report.failed_segments == []
    after = _variant(session, variant_id)
    assert (after.posterior(), after.folded_at, after.folded_impressions) == expected
    assert expected[1] == later
    assert not session.exec(
        select(LifecycleEvent)
        .where(LifecycleEvent.action == "discount")
        .where(LifecycleEvent.created_at == earlier)
    ).all()


def test_without_discount_the_posterior_is_the_exact_counts(
    api: Any, app: Any, session: Session
) -> None:
    created = api.create_experiment(policy=QUIET)
    variant_id = api.add_variant(created["id"], "tea-lovers", "The Aurora kettle, fast.")["id"]
    _add(session, variant_id, impressions=100, conversions=10)
    variant = _variant(session, variant_id)
    run_lifecycle(
        engine=app.extensions["copybandit.engine"],
        model="",
        now=variant.created_at + timedelta(hours=100),
    )
    after = _variant(session, variant_id)
    assert after.posterior() == (variant.prior_alpha + 10, variant.prior_beta + 90)
    assert after.folded_at is None


def test_late_conversions_of_discounted_impressions_keep_beta_at_least_the_prior(
    setup: tuple[Any, int, Variant], api: Any, session: Session
) -> None:
    engine, variant_id, fresh = setup
    experiment_id, start = fresh.experiment_id, fresh.created_at
    shown = [api.decide(experiment_id, segment="tea-lovers")["impression_id"] for _ in range(6)]
    run_lifecycle(engine=engine, model="", now=start + timedelta(hours=1))
    run_lifecycle(
        engine=engine, model="", now=start + timedelta(hours=49)
    )  # 6 failures decayed to ~0

    # Every one of them converts afterwards (an order paid days later, say).
    converted = api.post(
        "/v1/events",
        json={"events": [{"impression_id": i, "type": "conversion"} for i in shown]},
        key="serve",
    )
    run_lifecycle(engine=engine, model="", now=start + timedelta(hours=50))

    assert converted.get_json()["accepted"] == 6
    variant = _variant(session, variant_id)
    alpha, beta = variant.posterior()
    # Before, beta went to -2 and every decision and report of the experiment answered 500.
    assert beta >= fresh.prior_beta and variant.decayed_failures >= 0
    assert alpha == pytest.approx(fresh.prior_alpha + 6)
    assert (
        api.post("/v1/decide", json={"experiment": experiment_id}, key="serve").status_code == 200
    )
    assert api.get(f"/v1/experiments/{experiment_id}/report").status_code == 200


def test_turning_the_discount_off_counts_all_evidence_in_full_again(
    setup: tuple[Any, int, Variant], api: Any, session: Session
) -> None:
    engine, variant_id, fresh = setup
    experiment_id = fresh.experiment_id
    prior = (fresh.prior_alpha, fresh.prior_beta)
    other = api.create_experiment(
        name="Still discounting", policy={**QUIET, "discount_per_hour": 0.5}
    )
    other_id = api.add_variant(other["id"], "tea-lovers", "The Aurora kettle, quick.")["id"]
    for variant in (variant_id, other_id):
        _add(session, variant, impressions=1000, conversions=500)
    run_lifecycle(engine=engine, model="", now=fresh.created_at + timedelta(hours=1))
    _add(session, variant_id, impressions=10, conversions=0)
    run_lifecycle(engine=engine, model="", now=fresh.created_at + timedelta(hours=20))
    assert _variant(session, variant_id).posterior()[0] < prior[0] + 1  # shrunk to almost nothing

    response = api.patch(
        f"/v1/experiments/{experiment_id}/policy", json={"discount_per_hour": None}
    )
    assert response.status_code == 200, response.get_json()
    run_lifecycle(engine=engine, model="", now=fresh.created_at + timedelta(hours=21))

    assert _variant(session, variant_id).posterior() == pytest.approx(
        (prior[0] + 500, prior[1] + 510)
    )
    report = api.get(f"/v1/experiments/{experiment_id}/report").get_json()
    (row,) = [r for s in report["segments"] for r in s["variants"] if r["variant_id"] == variant_id]
    assert row["posterior_mean"] == pytest.approx((prior[0] + 500) / (sum(prior) + 1010))
    # Only this experiment's evidence counts in full again.
    assert _variant(session, other_id).posterior()[0] < 2


def test_a_fold_whose_plan_then_fails_is_in_the_pass_report(
    setup: tuple[Any, int, Variant],
    session: Session,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fold commits before the plan; a plan that then failed (a lock wait that timed out,
    say) left it done and audited, but out of the pass's report: `lifecycle --once` printed
    "0 actions" beside the segment it called unchanged."""
    _, variant_id, _ = setup
    _add(session, variant_id, impressions=100, conversions=10)

    def fails(*_: Any, **__: Any) -> None:
        raise RuntimeError("the plan went wrong")

    monkeypatch.setattr(lifecycle, "plan_segment", fails)
    monkeypatch.setenv("COPYBANDIT_DATABASE_URL", database_url)
    result = CliRunner().invoke(main, ["lifecycle", "--once", "--no-generate"])

    assert result.exit_code == 1
    audited = session.exec(select(LifecycleEvent).where(LifecycleEvent.action == "discount")).all()
    assert len(audited) == 1  # the segment with a variant; the empty one folds nothing
    place = f"experiment {audited[0].experiment_id} segment tea-lovers"
    assert f"{place}: discount: older evidence weighted by 0.5 per hour" in result.output
    assert "1 experiment, 1 action, 0 generation jobs queued" in result.output
    # The segment printed with a discount line above is not said to be left unchanged, bare.
    assert (
        f"2 segments left unchanged after an error (logged above): {place} (but for its"
        " discount fold), " in result.output
    )


def test_a_pass_does_not_fold_after_a_patch_turned_discounting_off(
    setup: tuple[Any, int, Variant],
    api: Any,
    session: Session,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine, variant_id, fresh = setup
    experiment_id, start = fresh.experiment_id, fresh.created_at
    prior = (fresh.prior_alpha, fresh.prior_beta)
    _add(session, variant_id, impressions=100, conversions=10)
    run_lifecycle(engine=engine, model="", now=start + timedelta(hours=1))
    assert _variant(session, variant_id).folded_at is not None

    # The PATCH commits after the pass read the policy (discounting on), before it folds.
    fold = lifecycle.fold_segment
    patched: list[int] = []

    def patch_commits_first(*args: Any, **kwargs: Any) -> LifecycleEvent | None:
        if not patched:
            response = api.patch(
                f"/v1/experiments/{experiment_id}/policy", json={"discount_per_hour": None}
            )
            patched.append(response.status_code)
        return fold(*args, **kwargs)

    monkeypatch.setattr(lifecycle, "fold_segment", patch_commits_first)
    report = run_lifecycle(engine=engine, model="", now=start + timedelta(hours=3))
    monkeypatch.undo()

    assert patched == [200]
    assert [a.action for a in report.actions] == []
    after = _variant(session, variant_id)
    # Before, the fold went ahead: a discount row after discounting was off, and folded_at set.
    assert (after.folded_at, after.posterior()) == (None, (prior[0] + 10, prior[1] + 90))
    assert not session.exec(
        select(LifecycleEvent)
        .where(LifecycleEvent.action == "discount")
        .where(LifecycleEvent.created_at == start + timedelta(hours=3))
    ).all()
    # So turning it on again keeps everything so far in full, as a first fold does; the stray
    # fold's folded_at had the next fold decay the seven hours since it.
    response = api.patch(f"/v1/experiments/{experiment_id}/policy", json={"discount_per_hour": 0.5})
    assert response.status_code == 200
    run_lifecycle(engine=engine, model="", now=start + timedelta(hours=10))
    assert _variant(session, variant_id).posterior() == pytest.approx(
        (prior[0] + 10, prior[1] + 90)
    )


def test_retired_copy_is_folded_no_more_and_reads_as_if_it_were(
    setup: tuple[Any, int, Variant], api: Any, session: Session
) -> None:
    engine, retired_id, fresh = setup
    experiment_id, start = fresh.experiment_id, fresh.created_at
    prior = (fresh.prior_alpha, fresh.prior_beta)
    live_id = api.add_variant(experiment_id, "tea-lovers", "The Aurora kettle, quiet.")["id"]
    _add(session, retired_id, impressions=100, conversions=10)
    _add(session, live_id, impressions=100, conversions=20)
    run_lifecycle(engine=engine, model="", now=start + timedelta(hours=1))
    response = api.patch(f"/v1/variants/{retired_id}", json={"status": "retired"})
    assert response.status_code == 200, response.get_json()

    for hours in (2, 4):
        run_lifecycle(engine=engine, model="", now=start + timedelta(hours=hours))

    # Nothing written to it after its retirement: each pass folded it, one UPDATE more per
    # variant ever retired.
    retired = _variant(session, retired_id)
    assert (retired.folded_at, retired.decayed_successes) == (start + timedelta(hours=1), 10)
    discounts = session.exec(
        select(LifecycleEvent)
        .where(LifecycleEvent.action == "discount")
        .where(LifecycleEvent.created_at > start + timedelta(hours=1))
    ).all()
    assert [d.numbers["variants"] for d in discounts if d.numbers] == [1, 1]
    # The report still shows its evidence decayed to the latest fold: three hours at 0.5.
    alpha, beta = prior[0] + 10 * 0.125, prior[1] + 90 * 0.125
    row = _report_row(api, experiment_id, retired_id)
    assert row["posterior_mean"] == pytest.approx(alpha / (alpha + beta))
    assert row["interval"] == pytest.approx(stats.credible_interval([alpha], [beta])[0].tolist())

    # A late conversion of one of its impressions counts in full beside the older evidence,
    # decayed as before: as if the last pass had folded it and the conversion came after. Until
    # the next pass folded it, the report read that older evidence as at the retirement (10 of
    # 100 in full, not an eighth).
    _add(session, retired_id, impressions=0, conversions=1)
    alpha, beta = prior[0] + 10 * 0.125 + 1, prior[1] + 90 * 0.125 - 1
    row = _report_row(api, experiment_id, retired_id)
    assert row["posterior_mean"] == pytest.approx(alpha / (alpha + beta))
    # It is folded in by the next pass, from when it is seen.
    run_lifecycle(engine=engine, model="", now=start + timedelta(hours=5))
    retired = _variant(session, retired_id)
    assert retired.folded_at == start + timedelta(hours=5)
    assert retired.posterior() == pytest.approx(
        (prior[0] + 10 * 0.0625 + 1, prior[1] + 90 * 0.0625 - 1)
    )


def _report_row(api: Any, experiment_id: int, variant_id: int) -> dict[str, Any]:
    report = api.get(f"/v1/experiments/{experiment_id}/report").get_json()
    (row,) = [r for s in report["segments"] for r in s["variants"] if r["variant_id"] == variant_id]
    return row  # type: ignore[no-any-return]
