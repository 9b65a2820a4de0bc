"""Crash durability: `kill -9` the whole `copybandit serve --workers 2` process group (master and
workers) at a random moment under decide + event load, restart it on the same database, and let the
clients retry whatever they never saw acknowledged.

What an answer promises must survive the crash: every impression id a client got with a 200 is
stored, and so is every event a 200 acknowledged. Retries with the same event_id count nothing
twice, a batch lost in flight was stored whole or not at all, and `copybandit check` finds every
counter equal to its rows. COPYBANDIT_KILL_SEED replays a run's choices (failures show the seed and
the kill delay).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from service.auth import create_key
from service.demo import seed_demo
from service.models import Scope
from tests.conftest import BACKENDS, postgres_schema
from tests.live_http import call, free_port

BIN = Path(sys.executable).parent
WORKERS = 2
CLIENTS = 6
SEGMENTS = ("weekend-hikers", "trail-racers", "value-seekers")
SEED = int(os.environ.get("COPYBANDIT_KILL_SEED", "20240607"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize(
        "backend",
        [
            pytest.param(b, marks=[pytest.mark.postgres] if b == "postgres" else [])
            for b in BACKENDS
        ],
    ),
]


# --- The database and the server ---------------------------------------------------------------


@dataclass
class Database:
    url: str
    serve_key: str
    experiment_id: int


@pytest.fixture
def database(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Database]:
    """A migrated database of this test's own (a SQLite file, or a PostgreSQL schema), seeded with
    the demo experiment and a serve key, as `copybandit init --no-demo-history` would."""
    cleanup = contextlib.ExitStack()
    if backend == "sqlite":
        path = tmp_path / "kill.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        url = f"sqlite:///{path}"
        engine = sa.create_engine(url)
        cleanup.callback(engine.dispose)
    else:
        url, engine = cleanup.enter_context(postgres_schema(f"copybandit_kill_{os.getpid()}"))
    with cleanup:
        with Session(engine) as session:
            experiment = seed_demo(session=session)
            assert experiment is not None and experiment.id is not None
            key = create_key(session=session, scope=Scope.SERVE, label="kill test")[1]
            experiment_id = experiment.id
        engine.dispose()
        yield Database(url=url, serve_key=key, experiment_id=experiment_id)


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie nobody has reaped yet (a dead worker whose master
    was killed too is reparented, and in a container nothing may reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Server:
    """`copybandit serve --workers 2` in a process group of its own, so one `killpg` takes the
    master and every worker at once, the way a lost machine or an OOM kill of the group would."""

    def __init__(self, url: str, port: int, log: Path) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.log = log
        env = {
            **os.environ,
            "COPYBANDIT_DATABASE_URL": url,
            "COPYBANDIT_ENV": "test",
            "COPYBANDIT_SCHEDULER": "off",
            "COPYBANDIT_PROPENSITY_SAMPLES": "2000",
            # A killed master never removes its metrics folder: keep it out of the checkout.
            "PROMETHEUS_MULTIPROC_DIR": str(log.with_suffix(".metrics")),
        }
        with log.open("wb") as sink:
            self.process = subprocess.Popen(
                [BIN / "copybandit", "serve", "--port", str(port), "--workers", str(WORKERS)],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: master and workers
            )

    def workers(self) -> list[int]:
        return [int(p) for p in re.findall(r"Booting worker with pid: (\d+)", self.log.read_text())]

    def wait_up(self) -> None:
        deadline = time.monotonic() + 60  # a busy CI box may take long to import the app
        while call(self.base, "/healthz")[0] != 200 or len(self.workers()) < WORKERS:
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"server not up in 60 s:\n{self.log.read_text()}"
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL to the whole group; returns once the master and every worker are dead."""
        group = [self.process.pid, *self.workers()]
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in group):
            assert time.monotonic() < deadline, f"still running after SIGKILL: {group}"
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM: each worker finishes the request it has in hand, then exits. The master takes
        seconds more to wind down, with nothing left to do, so once its workers are gone it is
        killed."""
        if self.process.poll() is not None:
            return
        workers = self.workers()
        self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=15)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """Every server the test starts; any still running at the end is stopped."""
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


# --- The clients ---------------------------------------------------------------------------------


@dataclass
class Sent:
    """One request that carried events, and what its sender saw of it."""

    body: dict[str, Any]
    event_ids: list[str]
    refused: bool = False


@dataclass
class Storefront:
    """One client thread: decides, and conversions for about half of its impressions, sent one by
    one or in small batches, each with an event_id of the client's choosing."""

    name: str
    base: str
    key: str
    experiment_id: int
    rng: random.Random
    impressions: dict[str, int] = field(default_factory=dict)  # acknowledged: id -> variant
    decides_unanswered: int = 0  # sent, but no answer came back (refusals not counted)
    events: dict[str, str] = field(default_factory=dict)  # every event_id -> its impression
    acknowledged: set[str] = field(default_factory=set)  # event_ids a 200 answered
    lost: list[Sent] = field(default_factory=list)  # no answer came back (or refused)
    unsent: list[dict[str, Any]] = field(default_factory=list)  # buffered when the server died
    accepted: int = 0  # the sum of `accepted` over every answer seen
    errors: int = 0  # requests that got no answer
    failures: list[tuple[str, Any, Any]] = field(default_factory=list)  # what should not be

    def send(self, events: list[dict[str, Any]]) -> None:
        body = events[0] if len(events) == 1 and self.rng.random() < 0.5 else {"events": events}
        sent = Sent(body=body, event_ids=[e["event_id"] for e in events])
        status, answer = call(self.base, "/v1/events", self.key, body)
        if status <= 0:
            self.errors += 1
            sent.refused = status < 0
            self.lost.append(sent)
            return
        if status != 200:
            self.failures.append(("/v1/events", status, answer))
            self.lost.append(sent)
            return
        self.accepted += answer["accepted"]
        self.acknowledged.update(sent.event_ids)
        # Before the crash nothing is retried: every event is new, and stored now.
        if (answer["accepted"], answer["duplicate"], answer["rejected"]) != (len(events), 0, 0):
            self.failures.append(("/v1/events", status, answer))

    def run(self, stop: threading.Event) -> None:
        pending: list[dict[str, Any]] = []
        n = 0
        while not stop.is_set():
            n += 1
            decide: dict[str, Any] = {"experiment": self.experiment_id}
            if self.rng.random() < 0.8:
                decide["segment"] = self.rng.choice(SEGMENTS)
            if self.rng.random() < 0.3:
                decide["user_id"] = f"{self.name}-user-{self.rng.randrange(50)}"
            status, answer = call(self.base, "/v1/decide", self.key, decide)
            if status <= 0:
                self.errors += 1
                self.decides_unanswered += status == 0
                time.sleep(0.01)  # the server is gone: no busy loop until the test stops us
                continue
            if status != 200:
                self.failures.append(("/v1/decide", status, answer))
                continue
            self.impressions[answer["impression_id"]] = answer["variant_id"]
            if self.rng.random() < 0.5:
                event = {
                    "impression_id": answer["impression_id"],
                    "type": "conversion",
                    "event_id": f"{self.name}-order-{n}",
                }
                if self.rng.random() < 0.5:
                    event["value"] = round(self.rng.uniform(5, 200), 2)
                self.events[event["event_id"]] = answer["impression_id"]
                pending.append(event)
            if pending and (len(pending) >= 5 or self.rng.random() < 0.4):
                self.send(pending)
                pending = []
        self.unsent = pending


# --- The test ------------------------------------------------------------------------------------


def _stored(url: str) -> dict[str, Any]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            variants = connection.exec_driver_sql(
                "SELECT id, impressions, conversions FROM variant ORDER BY id"
            ).all()
            impressions: dict[str, int] = {
                i: v for i, v in connection.exec_driver_sql("SELECT id, variant_id FROM impression")
            }
            events = connection.exec_driver_sql(
                "SELECT event_id, impression_id, variant_id FROM event"
            ).all()
    finally:
        engine.dispose()
    return {
        "impression_counters": {v: shown for v, shown, _ in variants},
        "conversion_counters": {v: converted for v, _, converted in variants},
        "impressions": impressions,
        "events": {event_id: impression_id for event_id, impression_id, _ in events},
        "event_rows": Counter(variant_id for _, _, variant_id in events),
        "event_count": len(events),
    }


def test_kill_9_loses_nothing_acknowledged_and_counts_nothing_twice(
    backend: str, database: Database, servers: list[Server], tmp_path: Path
) -> None:
    rng = random.Random(f"{SEED}-{backend}")
    kill_after = rng.uniform(1.0, 3.0)
    where = f"(seed {SEED}, killed after {kill_after:.2f} s)"
    port = free_port()
    key = database.serve_key

    first = Server(database.url, port, tmp_path / "serve-1.log")
    servers.append(first)
    first.wait_up()

    # --- Load, and kill -9 of the whole process group at a random moment. --------------------
    clients = [
        Storefront(
            f"client{n}",
            first.base,
            key,
            database.experiment_id,
            random.Random(rng.getrandbits(64)),
        )
        for n in range(CLIENTS)
    ]
    stop = threading.Event()
    threads = [threading.Thread(target=c.run, args=(stop,), daemon=True) for c in clients]
    for thread in threads:
        thread.start()
    time.sleep(kill_after)
    first.kill()
    time.sleep(0.3)  # every client runs into the dead server
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive()

    assert [c.failures for c in clients] == [[]] * CLIENTS, where  # no 5xx before the crash
    assert all(c.errors > 0 for c in clients), f"the kill must come during the load {where}"
    assert sum(len(c.impressions) for c in clients) >= 20, (
        f"too little load before the kill {where}"
    )
    acknowledged_before = {e for c in clients for e in c.acknowledged}
    impressions_acknowledged = {i: v for c in clients for i, v in c.impressions.items()}
    assert len(impressions_acknowledged) == sum(len(c.impressions) for c in clients)

    # What the crash left, before anything is retried: everything acknowledged is there.
    after_crash = _stored(database.url)
    assert set(impressions_acknowledged) - set(after_crash["impressions"]) == set(), where
    assert acknowledged_before - set(after_crash["events"]) == set(), where

    # --- Restart on the same database; every client retries what it never saw answered. ------
    second = Server(database.url, port, tmp_path / "serve-2.log")
    servers.append(second)
    second.wait_up()

    def retry(client: Storefront) -> None:
        # Requests lost in flight are re-sent exactly as they were: a batch is one transaction, so
        # it was stored whole (all duplicates now) or not at all (all accepted now).
        for sent in client.lost:
            status, answer = call(second.base, "/v1/events", key, sent.body)
            if status != 200:
                client.failures.append(("retry", status, answer))
                continue
            n = len(sent.event_ids)
            # A refused request never reached the server: everything in it is new.
            outcomes = {(n, 0)} if sent.refused else {(n, 0), (0, n)}
            if answer["rejected"] or (answer["accepted"], answer["duplicate"]) not in outcomes:
                client.failures.append(("retry of a lost request", sent, answer))
            client.accepted += answer["accepted"]
            client.acknowledged.update(sent.event_ids)
        # Events that were still in the client's buffer never reached the server: all new.
        if client.unsent:
            status, answer = call(second.base, "/v1/events", key, {"events": client.unsent})
            if status != 200 or (answer["accepted"], answer["duplicate"], answer["rejected"]) != (
                len(client.unsent),
                0,
                0,
            ):
                client.failures.append(("retry of unsent events", status, answer))
            else:
                client.accepted += answer["accepted"]
                client.acknowledged.update(e["event_id"] for e in client.unsent)
        # A sample of what was acknowledged before the crash, again: duplicates, by event_id and
        # (under a new event_id) by impression.
        before = sorted(client.acknowledged & acknowledged_before)
        again = client.rng.sample(before, k=min(10, len(before)))
        for n, event_id in enumerate(again):
            impression_id = client.events[event_id]
            resend = {"impression_id": impression_id, "type": "conversion", "event_id": event_id}
            if n % 3 == 0:
                resend["event_id"] = f"{event_id}-retry"
            status, answer = call(second.base, "/v1/events", key, resend)
            if status != 200 or (answer["accepted"], answer["duplicate"]) != (0, 1):
                client.failures.append(("re-send of an acknowledged event", status, answer))
        # And the restarted server serves.
        for _ in range(5):
            status, answer = call(
                second.base, "/v1/decide", key, {"experiment": database.experiment_id}
            )
            if status != 200:
                client.failures.append(("decide after restart", status, answer))
            else:
                client.impressions[answer["impression_id"]] = answer["variant_id"]

    threads = [threading.Thread(target=retry, args=(c,), daemon=True) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive()
    second.stop()
    assert [c.failures for c in clients] == [[]] * CLIENTS, where

    # --- Every acknowledgement held; every counter equals its rows; nothing counted twice. ----
    stored = _stored(database.url)
    impressions = {i: v for c in clients for i, v in c.impressions.items()}
    assert len(impressions) == sum(len(c.impressions) for c in clients)  # ids stay unique
    assert {i: stored["impressions"].get(i) for i in impressions} == impressions, where
    # Only decides sent but never answered may have left an impression no client knows of.
    unknown = set(stored["impressions"]) - set(impressions)
    assert len(unknown) <= sum(c.decides_unanswered for c in clients), where

    sent_events = {e: i for c in clients for e, i in c.events.items()}
    assert {e for c in clients for e in c.acknowledged} == set(sent_events)  # all answered now
    assert stored["events"] == sent_events, where  # each stored once, under its own event_id
    assert stored["event_count"] == len(sent_events)
    # An event is accepted once: the acceptances the clients saw never exceed the rows, and the
    # rest are events stored just before the kill whose answer was lost (duplicates on retry).
    seen_accepted = sum(c.accepted for c in clients)
    in_flight = sum(len(s.event_ids) for c in clients for s in c.lost if not s.refused)
    assert seen_accepted <= len(sent_events) <= seen_accepted + in_flight, where

    expected_conversions = Counter(stored["impressions"][i] for i in sent_events.values())
    variants = stored["conversion_counters"]
    assert stored["conversion_counters"] == {v: expected_conversions[v] for v in variants}, where
    assert stored["conversion_counters"] == {v: stored["event_rows"][v] for v in variants}, where
    shown = Counter(stored["impressions"].values())
    assert stored["impression_counters"] == {v: shown[v] for v in variants}, where

    check = subprocess.run(
        [BIN / "copybandit", "check"],
        env={**os.environ, "COPYBANDIT_DATABASE_URL": database.url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, f"{where}\n{check.stdout}{check.stderr}"
    assert "every counter matches its rows" in check.stdout

    for server in (first, second):
        assert "Traceback" not in server.log.read_text(), server.log.read_text()
