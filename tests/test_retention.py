"""`copybandit check` and `copybandit purge`: counters recount exactly, before and after a purge."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlmodel import Session, select

from service.cli import main
from service.consistency import check_counters
from service.models import Event, Impression, Variant, utcnow
from service.reports import experiment_report
from service.retention import parse_age, purge


def _traffic(api: Any, experiment_id: int, n: int, convert_every: int) -> list[str]:
    ids = []
    for i in range(n):
        impression = api.decide(experiment_id, segment="tea-lovers")["impression_id"]
        ids.append(impression)
        if i % convert_every == 0:
            response = api.post(
                "/v1/events",
                json={"impression_id": impression, "type": "conversion"},
                key="serve",
            )
            assert response.status_code == 200
    return ids


def _age(session: Session, impression_ids: list[str], *, days: int) -> None:
    """Move these impressions and their events `days` into the past."""
    when = utcnow() - timedelta(days=days)
    for table, key in ((Impression, "id"), (Event, "impression_id")):
        column = getattr(table, key)
        session.execute(sa.update(table).where(column.in_(impression_ids)).values(created_at=when))
    session.commit()


def _counters(session: Session) -> dict[int, tuple[int, int]]:
    session.expire_all()
    return {v.id: (v.impressions, v.conversions) for v in session.exec(select(Variant))}  # type: ignore[misc]


def test_check_passes_on_real_traffic_and_names_a_tampered_counter(
    api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    _traffic(api, experiment["id"], 30, convert_every=4)
    report = check_counters(session=session)
    assert report.ok and report.variants == 4

    variant_id = experiment["segments"][0]["variants"][0]["id"]
    session.execute(
        sa.update(Variant)
        .where(Variant.id == variant_id)
        .values(conversions=Variant.conversions + 2)  # type: ignore[arg-type]
    )
    session.commit()
    report = check_counters(session=session)
    assert not report.ok
    [mismatch] = report.mismatches
    assert (mismatch.variant_id, mismatch.counter) == (variant_id, "conversions")
    assert mismatch.stored == mismatch.recounted + 2


def test_purge_deletes_old_rows_in_batches_and_keeps_counters_and_report_exact(
    app: Any, api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    old = _traffic(api, experiment["id"], 40, convert_every=3)
    young = _traffic(api, experiment["id"], 10, convert_every=2)
    _age(session, old, days=100)
    before = _counters(session)
    report_before = experiment_report(session=session, experiment_id=experiment["id"])
    batches = []

    result = purge(
        engine=app.extensions["copybandit.engine"],
        older_than=timedelta(days=90),
        batch_size=7,
        progress=lambda r: batches.append((r.events, r.impressions)),
    )

    assert (result.events, result.impressions) == (14, 40)  # 40 old, one in three converted
    assert len(batches) == 2 + 6  # events in 2 batches of at most 7, impressions in 6
    left = set(session.exec(select(Impression.id)).all())
    assert left == set(young)
    assert _counters(session) == before
    assert check_counters(session=session).ok
    report_after = experiment_report(session=session, experiment_id=experiment["id"])
    assert [
        (v.variant_id, v.impressions, v.conversions, v.posterior_mean)
        for s in report_after.segments
        for v in s.variants
    ] == [
        (v.variant_id, v.impressions, v.conversions, v.posterior_mean)
        for s in report_before.segments
        for v in s.variants
    ]
    # A second run finds nothing more to delete.
    again = purge(engine=app.extensions["copybandit.engine"], older_than=timedelta(days=90))
    assert (again.events, again.impressions) == (0, 0)


def test_an_old_impression_with_a_young_conversion_is_kept_until_the_conversion_ages(
    app: Any, api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    [impression] = _traffic(api, experiment["id"], 1, convert_every=1)
    session.execute(
        sa.update(Impression)
        .where(Impression.id == impression)  # type: ignore[arg-type]
        .values(created_at=utcnow() - timedelta(days=100))
    )
    session.commit()
    engine = app.extensions["copybandit.engine"]
    assert (purge(engine=engine, older_than=timedelta(days=90)).impressions) == 0
    _age(session, [impression], days=100)
    result = purge(engine=engine, older_than=timedelta(days=90))
    assert (result.events, result.impressions) == (1, 1)
    assert check_counters(session=session).ok


@pytest.mark.parametrize(
    ("text", "expected"),
    [("90d", timedelta(days=90)), ("12h", timedelta(hours=12)), ("30m", timedelta(minutes=30))],
)
def test_parse_age(text: str, expected: timedelta) -> None:
    assert parse_age(text) == expected


@pytest.mark.parametrize("text", ["", "90", "0d", "-1d", "1w", "1.5d", "d", "9999999d"])
def test_parse_age_refuses_other_forms(text: str) -> None:
    with pytest.raises(ValueError, match="90d, 12h or 30m"):
        parse_age(text)


def test_parse_age_refuses_ages_before_year_one() -> None:
    with pytest.raises(ValueError, match="at most 36500d"):
        parse_age("999999d")
    assert parse_age("36500d") == timedelta(days=36_500)


def test_cli_check_and_purge(
    app: Any,
    api: Any,
    session: Session,
    experiment: dict[str, Any],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COPYBANDIT_DATABASE_URL", database_url)
    old = _traffic(api, experiment["id"], 12, convert_every=5)
    _age(session, old, days=10)
    runner = CliRunner()
    checked = runner.invoke(main, ["check"])
    assert checked.exit_code == 0 and "every counter matches" in checked.output
    purged = runner.invoke(main, ["purge", "--older-than", "7d", "--batch-size", "5"])
    assert purged.exit_code == 0, purged.output
    assert "purged 3 events and 12 impressions" in purged.output
    assert runner.invoke(main, ["check"]).exit_code == 0
    refused = runner.invoke(main, ["purge", "--older-than", "soon"])
    assert refused.exit_code == 2 and "90d, 12h or 30m" in refused.output

    session.execute(sa.update(Variant).values(impressions=Variant.impressions + 1))
    session.commit()
    broken = runner.invoke(main, ["check"])
    assert broken.exit_code == 1 and "mismatched counter(s)" in broken.output
