"""Scale-out: `copybandit serve --workers 4` on PostgreSQL under decide and event load from several
client processes. Counters stay exact across worker processes, and every worker's snapshot picks
up a variant paused through another worker once the snapshot TTL has passed."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from service.auth import create_key
from service.demo import seed_demo
from service.models import Scope
from tests.conftest import PG_URL, postgres_schema
from tests.live_http import call, free_port

BIN = Path(sys.executable).parent
WORKERS = 4
CLIENTS = 4
DECIDES_PER_CLIENT = 150
SNAPSHOT_TTL = 0.5
SEGMENTS = ("weekend-hikers", "trail-racers", "value-seekers")
BATCH_SIZE = 8

# Like conftest's BACKENDS: the test exists only where PostgreSQL is configured, so a run without
# COPYBANDIT_TEST_DATABASE_URL reports it as skipped (empty parameter set), never as passed.
pytestmark = [
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.parametrize("backend", ["postgres"] if PG_URL else []),
]


@dataclass
class Server:
    base: str
    admin: str
    serve: str
    url: str
    log: Path


@pytest.fixture
def server(backend: str, tmp_path: Path) -> Iterator[Server]:
    """`copybandit serve --workers 4` on a PostgreSQL schema of this test's own, migrated and
    seeded with the demo experiment here (as `copybandit init --no-demo-history` would)."""
    assert backend == "postgres"
    cleanup = contextlib.ExitStack()
    url, engine = cleanup.enter_context(postgres_schema(f"copybandit_scale_out_{os.getpid()}"))
    process: subprocess.Popen[bytes] | None = None
    log = tmp_path / "serve.log"
    try:
        with Session(engine) as session:
            assert seed_demo(session=session) is not None
            admin = create_key(session=session, scope=Scope.ADMIN, label="scale-out admin")[1]
            serve = create_key(session=session, scope=Scope.SERVE, label="scale-out serve")[1]
        env = {
            **os.environ,
            "COPYBANDIT_DATABASE_URL": url,
            "COPYBANDIT_ENV": "test",
            "COPYBANDIT_SCHEDULER": "off",
            "COPYBANDIT_SNAPSHOT_TTL_SECONDS": str(SNAPSHOT_TTL),
            "COPYBANDIT_PROPENSITY_SAMPLES": "2000",
        }
        port = free_port()
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [BIN / "copybandit", "serve", "--port", str(port), "--workers", str(WORKERS)],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, master and workers
            )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        # Up means: answering, and every worker booted (so the load spreads over all four).
        while call(base, "/healthz")[0] != 200 or log.read_text().count("Booting worker") < WORKERS:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"server not up in 30 s:\n{log.read_text()}"
            time.sleep(0.1)
        yield Server(base=base, admin=admin, serve=serve, url=url, log=log)
    finally:
        if process is not None:
            # Quick shutdown (SIGINT) stops the workers at once; gunicorn's master then spends
            # seconds closing its control socket, so whatever is left after a moment is killed.
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=1.5)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)
        cleanup.close()


def _storefront(base: str, key: str, experiment_id: int, name: str, start_at: float) -> dict:
    """One client process: decides, and conversions for a fifth (single), a fifth (batched) of its
    impressions, with retries of every kind a storefront sends. Returns what it saw and what it
    expects the server to have counted."""
    failures: list[tuple[str, int, Any]] = []
    impressions: dict[str, int] = {}  # impression_id -> variant_id, for every 200 decide
    converted: set[str] = set()  # impressions this client expects to convert, exactly once each
    seen = {"accepted": 0, "duplicate": 0, "rejected": 0}
    expected_duplicate = 0

    def post(path: str, body: Any) -> Any:
        status, payload = call(base, path, key, body)
        if status != 200:
            failures.append((path, status, payload))
            return None
        if path == "/v1/events":
            for field in seen:
                seen[field] += payload[field]
        return payload

    def event(impression_id: str, event_id: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"impression_id": impression_id, "type": "conversion"}
        if event_id is not None:
            body["event_id"] = event_id
        return body

    batch: list[dict[str, Any]] = []
    batches = 0

    def flush() -> None:
        nonlocal batch, batches, expected_duplicate
        if not batch:
            return
        # The first event again inside the same batch: a duplicate, never a second count.
        body = {"events": [*batch, batch[0]]}
        expected_duplicate += 1
        post("/v1/events", body)
        if batches % 2 == 0:
            # A retry of the whole batch (say, after a timeout): all duplicates.
            post("/v1/events", body)
            expected_duplicate += len(body["events"])
        batches += 1
        batch = []

    while time.time() < start_at:
        time.sleep(0.005)
    for j in range(DECIDES_PER_CLIENT):
        decide: dict[str, Any] = {"experiment": experiment_id, "user_id": f"{name}-user-{j}"}
        if j % 7:
            decide["segment"] = SEGMENTS[j % len(SEGMENTS)]
        decision = post("/v1/decide", decide)
        if decision is None:
            continue
        impression_id = decision["impression_id"]
        impressions[impression_id] = decision["variant_id"]
        if j % 5 == 0:
            converted.add(impression_id)
            single = event(impression_id, f"{name}-single-{j}")
            post("/v1/events", single)
            if j % 10 == 0:
                post("/v1/events", single)  # a retry with the same event_id
                expected_duplicate += 1
        elif j % 5 == 2:
            converted.add(impression_id)
            batch.append(event(impression_id, f"{name}-batch-{j}"))
            if len(batch) == BATCH_SIZE:
                flush()
        elif j % 10 == 3 and j >= 3:
            # The impression converted three decisions ago, reported again under no event_id:
            # an impression converts at most once whatever event_id a retry carries.
            earlier = list(impressions)[-4]
            if earlier in converted:
                post("/v1/events", event(earlier, None))
                expected_duplicate += 1
    flush()
    return {
        "failures": failures,
        "impressions": impressions,
        "converted": converted,
        "seen": seen,
        "expected_duplicate": expected_duplicate,
    }


def _together(calls: list[Any]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda request: request(), calls))


def _database_counts(url: str) -> dict[str, Any]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            variants = connection.exec_driver_sql(
                "SELECT id, impressions, conversions FROM variant"
            ).all()
            impression_rows = connection.exec_driver_sql(
                "SELECT variant_id, count(*) FROM impression GROUP BY variant_id"
            ).all()
            event_rows = connection.exec_driver_sql(
                "SELECT variant_id, count(*) FROM event GROUP BY variant_id"
            ).all()
            impression_ids = set(connection.exec_driver_sql("SELECT id FROM impression").scalars())
            converted_ids = connection.exec_driver_sql("SELECT impression_id FROM event").scalars()
            converted = list(converted_ids)
    finally:
        engine.dispose()
    ids = [v for v, _, _ in variants]
    rows_i: dict[int, int] = dict(impression_rows)
    rows_e: dict[int, int] = dict(event_rows)
    return {
        "impression_counters": {v: shown for v, shown, _ in variants},
        "conversion_counters": {v: conv for v, _, conv in variants},
        "impression_rows": {v: rows_i.get(v, 0) for v in ids},
        "event_rows": {v: rows_e.get(v, 0) for v in ids},
        "impression_ids": impression_ids,
        "converted_ids": converted,
    }


def test_four_workers_keep_counters_exact_and_snapshots_fresh(server: Server) -> None:
    base, admin, key = server.base, server.admin, server.serve
    status, listing = call(base, "/v1/experiments", admin)
    assert status == 200, listing
    experiment_id = listing["experiments"][0]["id"]

    # --- Load: 4 client processes against 4 worker processes. ---------------------------------
    start_at = time.time() + 0.5
    with multiprocessing.get_context("fork").Pool(CLIENTS) as pool:
        results = pool.starmap(
            _storefront,
            [(base, key, experiment_id, f"client{n}", start_at) for n in range(CLIENTS)],
        )
    assert [r["failures"] for r in results] == [[]] * CLIENTS  # no 5xx, nor any other non-200

    impressions: dict[str, int] = {}
    converted: set[str] = set()
    for result in results:
        impressions.update(result["impressions"])
        converted |= result["converted"]
    assert len(impressions) == CLIENTS * DECIDES_PER_CLIENT  # impression ids are unique
    assert sum(r["seen"]["rejected"] for r in results) == 0
    assert sum(r["seen"]["accepted"] for r in results) == len(converted)
    assert sum(r["seen"]["duplicate"] for r in results) == sum(
        r["expected_duplicate"] for r in results
    )

    # --- The same batch sent at once to (most likely) different workers counts once. ---------
    fresh = [i for i in impressions if i not in converted][:24]
    shared = {
        "events": [
            {"impression_id": i, "type": "conversion", "event_id": f"shared-{n}"}
            for n, i in enumerate(fresh)
        ]
    }
    replies = _together([lambda: call(base, "/v1/events", key, shared)] * CLIENTS)
    assert [status for status, _ in replies] == [200] * CLIENTS, replies
    assert sum(body["accepted"] for _, body in replies) == len(fresh)
    assert sum(body["duplicate"] for _, body in replies) == (CLIENTS - 1) * len(fresh)
    converted |= set(fresh)

    # --- Exactness: counters == responses == rows, per variant. -------------------------------
    counts = _database_counts(server.url)
    served = Counter(impressions.values())
    expected_conversions = Counter(impressions[i] for i in converted)
    every = counts["impression_counters"]
    assert counts["impression_counters"] == {v: served[v] for v in every}
    assert counts["impression_rows"] == counts["impression_counters"]
    assert counts["impression_ids"] == set(impressions)
    assert counts["conversion_counters"] == {v: expected_conversions[v] for v in every}
    assert counts["event_rows"] == counts["conversion_counters"]
    assert sorted(counts["converted_ids"]) == sorted(converted)  # nothing converted twice

    # --- Snapshot refresh across workers: a pause through one worker reaches all of them. -----
    status, detail = call(base, f"/v1/experiments/{experiment_id}", admin)
    assert status == 200, detail
    segment = next(s for s in detail["segments"] if s["key"] == "trail-racers")
    active = [v["id"] for v in segment["variants"] if v["status"] == "active"]
    assert len(active) >= 2, segment
    target = max(active, key=lambda v: served[v])

    def decide() -> tuple[int, Any]:
        return call(
            base, "/v1/decide", key, {"experiment": experiment_id, "segment": segment["key"]}
        )

    # Right before the pause the target is being served (40 decides spread over the workers).
    before = _together([decide] * 40)
    assert [status for status, _ in before] == [200] * 40, before
    assert target in {body["variant_id"] for _, body in before}

    status, paused = call(
        base,
        f"/v1/variants/{target}",
        admin,
        {"status": "paused", "reason": "scale-out"},
        method="PATCH",
    )
    assert (status, paused["status"]) == (200, "paused"), paused
    time.sleep(SNAPSHOT_TTL + 0.3)

    after = _together([decide] * 40)
    assert [status for status, _ in after] == [200] * 40, after
    assert [body for _, body in after if body["variant_id"] == target] == []

    counts = _database_counts(server.url)
    assert counts["impression_rows"] == counts["impression_counters"]
    assert sum(counts["impression_counters"].values()) == len(impressions) + 80
    assert "Traceback" not in server.log.read_text(), server.log.read_text()
