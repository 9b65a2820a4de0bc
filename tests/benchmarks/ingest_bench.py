"""Conversion ingestion: the service's event path beside a raw INSERT, on SQLite and PostgreSQL.

A migrated database with the demo experiment (3 segments x 3 arms) and impressions bulk-inserted
for its variants. Then, each on impressions of its own:

- service, single: one event per call, each a fresh Session as a request has, through
  `EventsIn.model_validate` (what POST /v1/events accepts) and `service.events.record_events`
  (the endpoint's data function: impression lookup, INSERT ... ON CONFLICT DO NOTHING RETURNING,
  counter UPDATEs, commit), in this process;
- raw, single: the same row with a DBAPI `execute` and a commit;
- service, batched: 1,000 events per call, as above;
- raw, batched: the same columns of the same table with a DBAPI `executemany` of 1,000 rows and a
  commit per 1,000, so both sides commit as often; rounds of the two alternate, so a change in
  background load hits both, and the ratio is the median round's. On SQLite each side's round ends
  with a checkpoint of the write-ahead log, timed as part of that side: both write about the same
  pages per batch, and each pays for copying its own into the database file;
- the endpoint itself: POST /v1/events through the Flask app's test client (auth, strict JSON,
  validation, guardrail check; no socket), single and batched, for scale.

Afterwards the raw rows are deleted and the service's checked: event rows == events sent, each
variant's `conversions` == its event rows, and re-sending a batch (with the same event ids, and
with new ones for the same impressions) counts nothing twice.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.benchmarks.http_bench import postgres_database
from tests.benchmarks.targets import target

SINGLE = 500
BATCH = 1_000
ROUNDS = 12
BATCHES_PER_ROUND = 4
APP_SINGLE = 200
APP_BATCHES = 3
RATIO_GOAL = 0.5
COLUMNS = ("event_id", "impression_id", "variant_id", "type", "value", "created_at")


def _impressions(engine: Any, count: int) -> list[tuple[str, int]]:
    """Bulk-insert `count` impressions spread over the demo's active variants (their counters
    follow); returns (impression id, variant id) pairs."""
    import sqlalchemy as sa

    from service.identity import new_impression_id
    from service.models import Impression, Variant, utcnow

    impression, variant = Impression.__table__, Variant.__table__  # type: ignore[attr-defined]
    with engine.begin() as connection:
        arms = connection.execute(
            sa.select(variant.c.id, variant.c.experiment_id, variant.c.segment_id)
            .where(variant.c.status == "active")
            .order_by(variant.c.id)
        ).all()
        pairs: list[tuple[str, int]] = []
        per_variant: dict[int, int] = {}
        rows = []
        for i in range(count):
            arm = arms[i % len(arms)]
            impression_id = new_impression_id()
            pairs.append((impression_id, arm.id))
            per_variant[arm.id] = per_variant.get(arm.id, 0) + 1
            rows.append(
                {
                    "id": impression_id,
                    "experiment_id": arm.experiment_id,
                    "segment_id": arm.segment_id,
                    "variant_id": arm.id,
                    "propensity": 1 / 3,
                    "policy": "thompson-v1",
                    "user_hash": None,
                    "created_at": utcnow(),
                }
            )
        for start in range(0, len(rows), 5_000):
            connection.execute(sa.insert(impression), rows[start : start + 5_000])
        for variant_id, n in per_variant.items():
            connection.execute(
                sa.update(variant)
                .where(variant.c.id == variant_id)
                .values(impressions=variant.c.impressions + n)
            )
    return pairs


def _event_bodies(pairs: list[tuple[str, int]], prefix: str) -> list[dict[str, Any]]:
    return [
        {
            "impression_id": impression_id,
            "type": "conversion",
            "value": 129.0,
            "event_id": f"{prefix}-{i}",
        }
        for i, (impression_id, _) in enumerate(pairs)
    ]


class _Raw:
    """The same rows the service writes, by the driver alone: INSERT and commit, nothing else."""

    def __init__(self, engine: Any) -> None:
        self.sqlite = engine.dialect.name == "sqlite"
        mark = "?" if self.sqlite else "%s"
        self.sql = (
            f"INSERT INTO event ({', '.join(COLUMNS)}) VALUES ({', '.join([mark] * len(COLUMNS))})"
        )
        self.connection = engine.raw_connection()

    def rows(self, pairs: list[tuple[str, int]], prefix: str) -> list[tuple[Any, ...]]:
        now = datetime.now(UTC)
        # SQLAlchemy stores SQLite datetimes as this text; PostgreSQL takes the aware datetime.
        created: Any = now.strftime("%Y-%m-%d %H:%M:%S.%f") if self.sqlite else now
        return [
            (f"{prefix}-{i}", impression_id, variant_id, "conversion", 129.0, created)
            for i, (impression_id, variant_id) in enumerate(pairs)
        ]

    def single(self, row: tuple[Any, ...]) -> None:
        cursor = self.connection.cursor()
        cursor.execute(self.sql, row)
        cursor.close()
        self.connection.commit()

    def batch(self, rows: list[tuple[Any, ...]]) -> None:
        cursor = self.connection.cursor()
        cursor.executemany(self.sql, rows)
        cursor.close()
        self.connection.commit()

    def checkpoint(self) -> None:
        """Copy what the write-ahead log holds into the database file (SQLite; PostgreSQL
        checkpoints in the background, on its own schedule)."""
        if self.sqlite:
            cursor = self.connection.cursor()
            cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
            cursor.close()

    def close(self) -> None:
        self.connection.close()


def _timed(calls: list[Callable[[], Any]]) -> float:
    started = time.perf_counter()
    for call in calls:
        call()
    return time.perf_counter() - started


def _bench_backend(database_url: str) -> dict[str, Any]:
    import sqlalchemy as sa
    from sqlmodel import Session

    from service import create_app
    from service.auth import create_key
    from service.demo import seed_demo
    from service.events import record_events
    from service.migrate import upgrade
    from service.models import Scope
    from service.schemas import EventsIn

    load_before, started = os.getloadavg(), time.perf_counter()
    app = create_app({"database_url": database_url, "scheduler": "off", "log_level": "WARNING"})
    engine = app.extensions["copybandit.engine"]
    upgrade(engine)
    with Session(engine, expire_on_commit=False) as session:
        seed_demo(session=session)
        _, key = create_key(session=session, scope=Scope.SERVE, label="ingest bench")

    batched_n = ROUNDS * BATCHES_PER_ROUND * BATCH
    pairs = _impressions(engine, 2 * SINGLE + 2 * batched_n + APP_SINGLE + APP_BATCHES * BATCH)
    service_single, raw_single, service_batched, raw_batched, app_single, app_batched = (
        pairs[:SINGLE],
        pairs[SINGLE : 2 * SINGLE],
        pairs[2 * SINGLE : 2 * SINGLE + batched_n],
        pairs[2 * SINGLE + batched_n : 2 * SINGLE + 2 * batched_n],
        pairs[2 * SINGLE + 2 * batched_n : 2 * SINGLE + 2 * batched_n + APP_SINGLE],
        pairs[2 * SINGLE + 2 * batched_n + APP_SINGLE :],
    )

    def service_call(body: str) -> Callable[[], Any]:
        def call() -> Any:
            events = EventsIn.model_validate(json.loads(body)).as_list()
            with Session(engine, expire_on_commit=False) as session:
                outcome = record_events(session=session, events=events)
            if outcome.accepted != len(events):
                raise AssertionError(f"accepted {outcome.accepted} of {len(events)}")
            return outcome

        return call

    # As a server worker does after start-up (service/gunicorn.py): the set-up's objects (the app,
    # a hundred thousand prepared rows) are not traversed by every collection a batch triggers.
    gc.freeze()
    raw = _Raw(engine)
    try:
        # Single events: one call, one transaction each.
        single_bodies = [json.dumps(b) for b in _event_bodies(service_single, "single")]
        service_single_s = _timed([service_call(b) for b in single_bodies])
        raw_rows = raw.rows(raw_single, "raw-single")
        raw_single_s = _timed([lambda row=row: raw.single(row) for row in raw_rows])

        # Batches of 1,000, rounds alternating which side goes first.
        bodies = _event_bodies(service_batched, "batch")
        batch_bodies = [
            json.dumps({"events": bodies[i : i + BATCH]}) for i in range(0, batched_n, BATCH)
        ]
        raw_rows = raw.rows(raw_batched, "raw-batch")
        raw_batches = [raw_rows[i : i + BATCH] for i in range(0, batched_n, BATCH)]
        service_batched_s = raw_batched_s = validate_s = 0.0
        round_ratios = []
        raw.checkpoint()
        for r in range(ROUNDS):
            chunk = slice(r * BATCHES_PER_ROUND, (r + 1) * BATCHES_PER_ROUND)
            # Each side ends its round by checkpointing the pages it wrote, timed as its own: a
            # round writes about 330 pages, short of SQLite's automatic checkpoint (service/db.py
            # sets where), so otherwise whichever side crossed that line paid for both (round
            # ratios 0.32-1.01 when it was 1,000 pages).
            service_calls = [service_call(b) for b in batch_bodies[chunk]] + [raw.checkpoint]
            raw_calls = [lambda rows=rows: raw.batch(rows) for rows in raw_batches[chunk]]
            raw_calls.append(raw.checkpoint)
            if r % 2 == 0:
                raw_s = _timed(raw_calls)
                service_s = _timed(service_calls)
            else:
                service_s = _timed(service_calls)
                raw_s = _timed(raw_calls)
            service_batched_s += service_s
            raw_batched_s += raw_s
            round_ratios.append(raw_s / service_s)
            validate_s += _timed(
                [lambda b=b: EventsIn.model_validate(json.loads(b)) for b in batch_bodies[chunk]]
            )
    finally:
        raw.close()

    # The endpoint, in process (test client: no socket, no gunicorn).
    client = app.test_client()
    headers = {"Authorization": f"Bearer {key}"}

    def post(body: dict[str, Any], accepted: int) -> Callable[[], None]:
        def call() -> None:
            response = client.post("/v1/events", json=body, headers=headers)
            if response.status_code != 200 or response.json["accepted"] != accepted:  # type: ignore[index]
                raise AssertionError(f"{response.status_code} {response.data[:300]!r}")

        return call

    app_single_s = _timed([post(b, 1) for b in _event_bodies(app_single, "app-single")])
    app_bodies = _event_bodies(app_batched, "app-batch")
    app_batched_s = _timed(
        [
            post({"events": app_bodies[i : i + BATCH]}, BATCH)
            for i in range(0, len(app_bodies), BATCH)
        ]
    )
    sent = SINGLE + batched_n + APP_SINGLE + len(app_bodies)

    # Checks: raw rows out, then the service's rows against what was sent and the counters.
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM event WHERE event_id LIKE :raw"), {"raw": "raw-%"})

    def stored() -> tuple[int, dict[int, int], dict[int, int]]:
        with engine.connect() as connection:
            rows = connection.exec_driver_sql("SELECT COUNT(*) FROM event").scalar_one()
            per_variant = dict(
                connection.exec_driver_sql(
                    "SELECT variant_id, COUNT(*) FROM event GROUP BY 1"
                ).all()
            )
            counters = dict(connection.exec_driver_sql("SELECT id, conversions FROM variant").all())
        return int(rows), per_variant, counters

    rows, per_variant, counters = stored()
    counters_match = all(counters.get(v, 0) == n for v, n in per_variant.items()) and sum(
        counters.values()
    ) == sum(per_variant.values())
    first = json.loads(batch_bodies[0])
    renamed = {"events": [{**e, "event_id": "retry-" + e["event_id"]} for e in first["events"]]}
    resent = []
    for body in (first, renamed, json.loads(single_bodies[0])):
        events = EventsIn.model_validate(body).as_list()
        with Session(engine, expire_on_commit=False) as session:
            outcome = record_events(session=session, events=events)
        resent.append((outcome.accepted, outcome.duplicate, len(events)))
    rows_after, _, counters_after = stored()
    resend_ok = (
        all(accepted == 0 and duplicate == n for accepted, duplicate, n in resent)
        and rows_after == rows
        and counters_after == counters
    )
    engine.dispose()
    gc.unfreeze()
    load_after = os.getloadavg()

    def rate(n: int, seconds: float) -> int:
        return round(n / seconds)

    return {
        "service_single_per_second": rate(SINGLE, service_single_s),
        "raw_single_per_second": rate(SINGLE, raw_single_s),
        "service_batched_per_second": rate(batched_n, service_batched_s),
        "raw_batched_per_second": rate(batched_n, raw_batched_s),
        # The median of paired rounds: this machine's speed drifts by half within a minute, and
        # each round times both sides back to back.
        "batched_over_raw": round(statistics.median(round_ratios), 3),
        "batched_over_raw_rounds": [round(x, 3) for x in round_ratios],
        "validation_share_of_batched": round(validate_s / service_batched_s, 3),
        "app_single_per_second": rate(APP_SINGLE, app_single_s),
        "app_batched_per_second": rate(len(app_bodies), app_batched_s),
        "events": {"single": SINGLE, "batched": batched_n, "batch": BATCH},
        "checks": {
            "events_sent": sent,
            "event_rows": rows,
            "counters_match_rows": counters_match,
            "resend": [
                dict(zip(("accepted", "duplicate", "sent"), r, strict=True)) for r in resent
            ],
            "resend_counts_nothing": resend_ok,
        },
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "bench_seconds": round(time.perf_counter() - started, 1),
    }


def run() -> dict[str, Any]:
    results: dict[str, Any] = {
        "path": "service.events.record_events in process (EventsIn validation included); "
        "app: POST /v1/events via the Flask test client; raw: DBAPI execute/executemany",
    }
    targets: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="copybandit-ingest-bench-") as tmp:
        for label in ("sqlite", "postgresql"):
            if label == "sqlite":
                result = _bench_backend(f"sqlite:///{Path(tmp) / 'ingest.db'}")
            else:
                with postgres_database("ingest") as url:
                    if url is None:
                        results[label] = {"skipped": "PostgreSQL unreachable"}
                        continue
                    result = _bench_backend(url)
            results[label] = result
            checks = result["checks"]
            targets += [
                target(
                    f"batched ingestion / raw insert ({label})",
                    100 * result["batched_over_raw"],
                    f">= {100 * RATIO_GOAL:.0f}%",
                    result["batched_over_raw"] >= RATIO_GOAL,
                    "%",
                ),
                target(
                    f"ingestion: rows, counters, re-send ({label})",
                    checks["event_rows"],
                    f"== {checks['events_sent']:,} sent",
                    checks["event_rows"] == checks["events_sent"]
                    and checks["counters_match_rows"]
                    and checks["resend_counts_nothing"],
                    "rows",
                ),
            ]
    _print(results)
    results["targets"] = targets
    return results


def _print(results: dict[str, Any]) -> None:
    print(
        f"\nConversion ingestion, events per second (batches of {BATCH:,}; service = "
        "record_events in process; app = POST /v1/events via the test client)"
    )
    print(
        f"  {'backend':<11}{'single':>8}{'raw 1':>8}{'app 1':>8}{'batched':>9}{'raw':>9}"
        f"{'ratio':>7}{'app':>8}  checks                              load avg"
    )
    for label in ("sqlite", "postgresql"):
        r = results.get(label)
        if r is None or "skipped" in r:
            print(f"  {label:<11}skipped")
            continue
        c = r["checks"]
        ok = c["counters_match_rows"] and c["resend_counts_nothing"]
        print(
            f"  {label:<11}{r['service_single_per_second']:>8,}{r['raw_single_per_second']:>8,}"
            f"{r['app_single_per_second']:>8,}{r['service_batched_per_second']:>9,}"
            f"{r['raw_batched_per_second']:>9,}{r['batched_over_raw']:>7.0%}"
            f"{r['app_batched_per_second']:>8,}  {c['event_rows']:,} rows / {c['events_sent']:,} "
            f"sent, {'counters and re-send ok' if ok else 'CHECK FAILED'}"
            f"   {r['load_average_before'][0]:.2f} -> {r['load_average_after'][0]:.2f}"
        )


if __name__ == "__main__":
    run()
