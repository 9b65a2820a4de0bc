"""The slot lease: a periodic job runs exactly once per interval, however many schedulers tick."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from service.config import load_settings
from service.db import make_engine
from service.lifecycle import RunReport, scheduled_pass
from service.models import SchedulerLease
from service.scheduler import NotStarted, PeriodicJob, claim, start_background
from tests.conftest import PG_URL
from tests.pg_backends import end_backends, named

INTERVAL = 900.0
# A realistic epoch time at the start of a slot, so slot numbers are as large as in production.
START = INTERVAL * 1_888_889
# A time no clock here reaches: the lease is never taken for one a clock set back left ahead.
NO_CLOCK_YET = 10**15


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def engines(database_url: str) -> Iterator[Callable[[], sa.Engine]]:
    """Separate engines (separate connection pools) on one database, like separate processes."""
    made: list[sa.Engine] = []

    def new_engine() -> sa.Engine:
        made.append(make_engine(load_settings({"database_url": database_url})))
        return made[-1]

    yield new_engine
    for engine in made:
        engine.dispose()


def test_claim_is_won_once_per_slot(engines: Callable[[], sa.Engine]) -> None:
    engine = engines()
    assert claim(engine, name="lifecycle", slot=10, holder="a", ahead_above=NO_CLOCK_YET) is True
    assert claim(engine, name="lifecycle", slot=10, holder="b", ahead_above=NO_CLOCK_YET) is False
    assert claim(engine, name="lifecycle", slot=11, holder="b", ahead_above=NO_CLOCK_YET) is True
    assert claim(engine, name="lifecycle", slot=9, holder="a", ahead_above=NO_CLOCK_YET) is False
    assert claim(engine, name="lifecycle", slot=11, holder="a", ahead_above=NO_CLOCK_YET) is False
    # Each job name has a lease of its own.
    assert claim(engine, name="other", slot=10, holder="a", ahead_above=NO_CLOCK_YET) is True
    with Session(engine) as session:
        lease = session.get(SchedulerLease, "lifecycle")
        assert lease is not None and (lease.slot, lease.holder) == (11, "b")
        assert len(session.exec(select(SchedulerLease)).all()) == 2


def _tick_together(jobs: list[PeriodicJob], clock: FakeClock, times: list[float]) -> list[bool]:
    """Every job ticks once at each clock time, all at once from their own threads; the clock
    moves on only when every thread has finished the previous round."""
    upcoming = iter(times)

    def advance() -> None:
        clock.now = next(upcoming, clock.now)

    barrier = threading.Barrier(len(jobs), action=advance)

    def worker(job: PeriodicJob) -> list[bool]:
        outcomes = []
        for _ in times:
            barrier.wait(timeout=60)
            outcomes.append(job.tick())
        return outcomes

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return [won for outcomes in pool.map(worker, jobs) for won in outcomes]


def _schedulers(
    engines: Callable[[], sa.Engine], count: int, clock: FakeClock, job: Callable[[], object]
) -> list[PeriodicJob]:
    return [
        PeriodicJob(engines(), name="lifecycle", interval_seconds=INTERVAL, job=job, clock=clock)
        for _ in range(count)
    ]


@pytest.mark.parametrize(
    ("schedulers", "times", "slots"),
    [
        pytest.param(
            2,
            [START + i * INTERVAL / 10 for i in range(30)],
            3,
            id="2-schedulers-3-intervals",
        ),
        pytest.param(
            4,
            [START + i * INTERVAL / 40 for i in range(20)],
            1,
            id="4-schedulers-20-ticks-in-1-interval",
        ),
    ],
)
def test_exactly_once_per_interval_across_schedulers(
    engines: Callable[[], sa.Engine], schedulers: int, times: list[float], slots: int
) -> None:
    clock = FakeClock()
    runs: list[int] = []
    jobs = _schedulers(engines, schedulers, clock, lambda: runs.append(int(clock() // INTERVAL)))
    won = _tick_together(jobs, clock, times)
    assert len(won) == schedulers * len(times)
    first_slot = int(START // INTERVAL)
    assert runs == list(range(first_slot, first_slot + slots))
    assert sum(won) == slots


def test_a_failing_job_still_uses_up_its_slot(engines: Callable[[], sa.Engine]) -> None:
    clock = FakeClock()
    calls: list[float] = []

    def broken() -> None:
        calls.append(clock())
        raise RuntimeError("the job fell over")

    job, other = _schedulers(engines, 2, clock, broken)
    assert job.tick() is True
    clock.now += INTERVAL / 2
    assert job.tick() is False and other.tick() is False
    assert calls == [START]
    clock.now = START + INTERVAL
    assert other.tick() is True
    assert calls == [START, START + INTERVAL]


def _job(engines: Callable[[], sa.Engine], clock: FakeClock, interval: float, runs: list[float]):  # type: ignore[no-untyped-def]
    return PeriodicJob(
        engines(),
        name="lifecycle",
        interval_seconds=interval,
        job=lambda: runs.append(clock()),
        clock=clock,
    )


def _tick_every(job: PeriodicJob, clock: FakeClock, *, until: float, step: float) -> None:
    while clock.now < until:
        job.tick()
        clock.now += step


def test_a_longer_interval_keeps_running_after_the_setting_changes(
    engines: Callable[[], sa.Engine],
) -> None:
    """The slot numbers of an hour's interval stayed below those of 15 minutes for 160 years."""
    clock, runs = FakeClock(), []
    assert _job(engines, clock, INTERVAL, runs).tick() is True
    hourly = _job(engines, clock, 4 * INTERVAL, runs)
    _tick_every(hourly, clock, until=START + 24 * 3600, step=60)
    hours = [int(when // 3600) for when in runs[1:]]
    # Every hour from the next whole one on, once each, for the rest of the day.
    assert hours == list(range(hours[0], hours[0] + len(hours))) and len(hours) >= 23
    assert runs[1] - START <= 3600


@pytest.mark.parametrize(
    ("interval", "starts"),
    [
        pytest.param(24 * 3600.0, {"00:00"}, id="daily-at-midnight-utc"),
        # 1970-01-01, where the slots count from, was a Thursday.
        pytest.param(7 * 24 * 3600.0, {"Thu 00:00"}, id="weekly-on-thursday-utc"),
    ],
)
def test_a_daily_or_weekly_interval_runs_on_utc_boundaries(
    engines: Callable[[], sa.Engine], interval: float, starts: set[str]
) -> None:
    """As README says: slots are whole intervals since the epoch, whatever the host's zone."""
    engine = engines()
    clock, slots = FakeClock(START + 3 * 3600 + 17 * 60), []

    def job() -> None:
        with Session(engine) as session:
            lease = session.get(SchedulerLease, "lifecycle")
            assert lease is not None
            slots.append(datetime.fromtimestamp(lease.slot / 1000, UTC))

    scheduler = PeriodicJob(
        engine, name="lifecycle", interval_seconds=interval, job=job, clock=clock
    )
    _tick_every(scheduler, clock, until=clock.now + 3 * interval, step=interval / 8)
    assert len(slots) in (3, 4)
    shape = "%a %H:%M" if interval > 24 * 3600 else "%H:%M"
    assert {f"{slot:{shape}}" for slot in slots} == starts


def test_a_lease_from_a_clock_days_ahead_is_taken_over(
    engines: Callable[[], sa.Engine], caplog: pytest.LogCaptureFixture
) -> None:
    clock, runs = FakeClock(), []
    ahead = FakeClock(START + 2 * 86400)
    assert _job(engines, ahead, INTERVAL, runs).tick() is True
    healthy = _job(engines, clock, INTERVAL, runs)
    _tick_every(healthy, clock, until=START + 3 * INTERVAL, step=60)
    assert runs[1:] == [START, START + INTERVAL, START + 2 * INTERVAL]
    assert "took over the lease" in caplog.text and "was the clock set back?" in caplog.text


def test_clocks_a_little_apart_still_run_a_slot_once(engines: Callable[[], sa.Engine]) -> None:
    """A host 30 s ahead claims each slot first; the others must not run it again."""
    clock, runs = FakeClock(START - 120), []
    ahead_clock = FakeClock(START - 90)
    ahead, behind = _job(engines, ahead_clock, INTERVAL, runs), _job(engines, clock, INTERVAL, runs)
    while clock.now < START + 3 * INTERVAL:
        ahead.tick()
        behind.tick()
        clock.now += 10
        ahead_clock.now += 10
    # The slot before START, START's and the next three (the host ahead reaches the third).
    assert [int(when // INTERVAL) for when in runs] == [
        int(START // INTERVAL) + i for i in range(-1, 4)
    ]


def test_a_lease_stored_as_a_slot_number_gives_way(engines: Callable[[], sa.Engine]) -> None:
    """Earlier versions stored the slot's number; their rows compare below any slot time."""
    engine = engines()
    assert (
        claim(
            engine,
            name="lifecycle",
            slot=int(START // INTERVAL),
            holder="old",
            ahead_above=NO_CLOCK_YET,
        )
        is True
    )
    clock, runs = FakeClock(), []
    assert _job(engines, clock, INTERVAL, runs).tick() is True and runs == [START]


def test_hosts_whose_clocks_disagree_share_the_databases_clock(
    engines: Callable[[], sa.Engine],
) -> None:
    """By their own clocks, a host two days ahead and one on time took the lease back from each
    other on every tick: the job ran every minute on both. Slots follow the database's clock."""
    runs: list[str] = []
    jobs = [
        PeriodicJob(engines(), name="lifecycle", interval_seconds=3600, job=lambda: runs.append(""))
        for _ in range(2)
    ]
    engine = jobs[0].engine
    if engine.dialect.name == "sqlite":
        # One file, one host, one clock: the host's.
        assert jobs[0].clock is time.time
        return
    with engine.connect() as connection:
        server = connection.exec_driver_sql("SELECT extract(epoch FROM now())").scalar_one()
    assert all(job.clock is not time.time for job in jobs)
    assert all(abs(job.clock() - float(server)) < 5 for job in jobs)
    for _ in range(5):
        for job in jobs:
            job.tick()
    assert len(runs) == 1


@pytest.mark.parametrize(
    "unreachable",
    [
        pytest.param("sqlite:///{folder}", id="sqlite-file-that-cannot-open"),
        pytest.param("postgresql://postgres@127.0.0.1:1/none", id="postgres-clock-no-server"),
    ],
)
def test_a_tick_during_an_outage_skips_its_slot_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, unreachable: str
) -> None:
    """The claim and the clock's read raised out of tick: APScheduler logged a 20-line traceback
    every tick in every worker for as long as the database was away."""
    url = unreachable.format(folder=tmp_path)  # a folder: SQLite cannot open it as a file
    engine = make_engine(load_settings({"database_url": url}))
    runs: list[str] = []
    job = PeriodicJob(
        engine, name="lifecycle", interval_seconds=INTERVAL, job=lambda: runs.append("")
    )
    try:
        with caplog.at_level(logging.WARNING, logger="service.scheduler"):
            assert job.tick() is False
    finally:
        engine.dispose()
    assert runs == []
    [record] = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert record.getMessage().startswith("lifecycle: database unavailable, slot skipped: ")


def test_a_pass_that_loses_the_database_gives_up_its_slot_with_one_warning(
    engines: Callable[[], sa.Engine], caplog: pytest.LogCaptureFixture
) -> None:
    """A pass that met a restart once it had begun (reading an experiment's segments) raised out
    to tick, which logged a traceback for an outage. It may have changed segments already, so its
    slot is used up."""
    clock = FakeClock()

    def restarted() -> None:
        raise sa.exc.OperationalError(
            "SELECT 1", None, RuntimeError("terminating connection due to administrator command")
        )

    [job] = _schedulers(engines, 1, clock, restarted)
    with caplog.at_level(logging.WARNING, logger="service.scheduler"):
        assert job.tick() is True
    [record] = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert record.getMessage() == (
        "lifecycle: database unavailable, slot 2023-11-14 22:15:00 UTC given up: "
        "terminating connection due to administrator command"
    )


def test_a_job_that_did_not_start_runs_again_at_the_next_tick_of_its_slot(
    engines: Callable[[], sa.Engine], caplog: pytest.LogCaptureFixture
) -> None:
    """A pass that found the database away as it began gave up its slot: a restart lost the
    interval's pass. Its holder runs it again; no one else does, and a pass that ran is not."""
    clock = FakeClock()
    calls: list[float] = []

    def away_at_first() -> None:
        calls.append(clock())
        if len(calls) < 3:
            raise NotStarted("terminating connection due to administrator command")

    job, other = _schedulers(engines, 2, clock, away_at_first)
    with caplog.at_level(logging.WARNING, logger="service.scheduler"):
        assert job.tick() is True
    assert [r.getMessage() for r in caplog.records] == [
        "lifecycle: database unavailable, slot 2023-11-14 22:15:00 UTC not started, tried again at "
        "the next tick: terminating connection due to administrator command"
    ]
    for step in (1, 2):
        clock.now = START + step * INTERVAL / 4
        assert other.tick() is False
        assert job.tick() is True
    clock.now = START + 3 * INTERVAL / 4
    assert job.tick() is False and other.tick() is False
    assert calls == [START, START + INTERVAL / 4, START + INTERVAL / 2]
    clock.now = START + INTERVAL
    assert other.tick() is True and job.tick() is False
    assert calls[-1] == START + INTERVAL


@pytest.mark.parametrize("database_url", ["postgres"] if PG_URL else [], indirect=True)
def test_a_scheduled_pass_that_meets_a_restart_as_it_begins_runs_at_the_next_tick(
    database_url: str, experiment: dict[str, Any]
) -> None:
    """The server restarts between the claim and the pass: the pass's first read meets the ended
    connection."""
    engine = make_engine(load_settings({"database_url": named(database_url, "pass_under_test")}))
    admin = sa.create_engine(database_url)
    reports: list[RunReport] = []

    def restart_then_pass() -> None:
        if not restarted:
            with admin.begin() as connection:
                restarted.extend(end_backends(connection, "pass_under_test"))
        reports.append(scheduled_pass(engine=engine, model=""))

    restarted: list[bool] = []
    job = PeriodicJob(
        engine,
        name="lifecycle",
        interval_seconds=INTERVAL,
        job=restart_then_pass,
        clock=FakeClock(),
    )
    try:
        assert job.tick() is True and restarted == [True] and reports == []
        assert job.tick() is True and len(reports) == 1
        assert reports[0].experiments == 1
        assert job.tick() is False
    finally:
        engine.dispose()
        admin.dispose()


@pytest.mark.parametrize(
    ("level", "apscheduler_lines"), [(logging.INFO, False), (logging.DEBUG, True)]
)
def test_apscheduler_says_nothing_about_its_ticks_unless_logs_are_at_debug(
    engines: Callable[[], sa.Engine],
    caplog: pytest.LogCaptureFixture,
    level: int,
    apscheduler_lines: bool,
) -> None:
    """At the default INFO it logged its start-up, then 'Running job' and 'executed successfully'
    on every tick of every worker."""
    ticked = threading.Event()
    job = PeriodicJob(engines(), name="lifecycle", interval_seconds=4.0, job=ticked.set)
    logging.getLogger("apscheduler").setLevel(logging.NOTSET)
    try:
        with caplog.at_level(level):
            scheduler: Any = start_background(job)
            try:
                assert ticked.wait(timeout=10)
            finally:
                scheduler.shutdown()
    finally:
        logging.getLogger("apscheduler").setLevel(logging.NOTSET)
    from_apscheduler = [r for r in caplog.records if r.name.startswith("apscheduler")]
    assert bool(from_apscheduler) == apscheduler_lines


def test_a_pass_longer_than_the_tick_period_logs_no_apscheduler_warnings(
    engines: Callable[[], sa.Engine], caplog: pytest.LogCaptureFixture
) -> None:
    """A tick due while the pass still ran logged 'skipped: maximum number of running instances
    reached' at WARNING, once a tick period (a minute at most) through a long pass; the next tick
    claims the slot all the same. A tick that raises is still logged."""
    finished = threading.Event()

    def long_pass() -> None:
        time.sleep(2.5)  # the tick period is 1 s at this interval
        finished.set()

    job = PeriodicJob(engines(), name="lifecycle", interval_seconds=4.0, job=long_pass)
    broken = PeriodicJob(
        engines(), name="broken", interval_seconds=4.0, job=long_pass, clock=_raises
    )
    logging.getLogger("apscheduler").setLevel(logging.NOTSET)
    try:
        with caplog.at_level(logging.INFO):
            schedulers: list[Any] = [start_background(job), start_background(broken)]
            try:
                assert finished.wait(timeout=10)
            finally:
                for scheduler in schedulers:
                    scheduler.shutdown()
    finally:
        logging.getLogger("apscheduler").setLevel(logging.NOTSET)
    from_apscheduler = [r for r in caplog.records if r.name.startswith("apscheduler")]
    assert from_apscheduler, "the broken tick's exception is logged"
    assert {r.levelno for r in from_apscheduler} == {logging.ERROR}, [
        r.getMessage() for r in from_apscheduler
    ]


@pytest.mark.parametrize("zone", ["UTC+3", "JST-9"])
def test_a_server_starts_its_scheduler_under_a_posix_time_zone(tmp_path: Path, zone: str) -> None:
    """A TZ in POSIX form, which the C library reads, stopped every server process at start-up:
    APScheduler asked tzlocal for the host's zone, which takes only names like Asia/Tokyo. A
    fresh process, as a server's worker is: tzlocal keeps the first zone it finds."""
    starts = (
        "from service import create_app\n"
        "app = create_app({'database_url': 'sqlite:///' + sys.argv[1], 'scheduler': 'on'})\n"
        "app.extensions['copybandit.scheduler'].shutdown()\n"
    )
    started = subprocess.run(
        [sys.executable, "-c", "import sys\n" + starts, str(tmp_path / "db.sqlite")],
        env={**os.environ, "TZ": zone},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 0, started.stderr


def _raises() -> float:
    raise RuntimeError("no clock")


def test_a_servers_scheduled_pass_is_told_the_model_it_is_configured_with(
    app_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A brief too long for the model is held only while that model is configured
    (service.long_briefs): the server's pass judges by COPYBANDIT_MODEL."""
    import service

    passes: list[dict[str, Any]] = []
    monkeypatch.setattr(service, "scheduled_pass", lambda **kwargs: passes.append(kwargs))
    app = service.create_app({**app_config, "scheduler": "on", "model": "/models/longer"})
    scheduler = app.extensions["copybandit.scheduler"]
    try:
        # The job its ticks run once this process wins the slot.
        scheduler.get_job("lifecycle").func.__self__.job()
    finally:
        scheduler.shutdown()
        app.extensions["copybandit.engine"].dispose()
    assert [kwargs["model"] for kwargs in passes] == ["/models/longer"]


def test_a_pass_names_its_slot_as_a_utc_time(
    engines: Callable[[], sa.Engine], caplog: pytest.LogCaptureFixture
) -> None:
    """A live server logged 'running for slot 1796573400000' every pass: milliseconds since 1970,
    which no operator reads as 16:10 UTC."""
    job = _job(engines, FakeClock(), INTERVAL, [])
    with caplog.at_level(logging.INFO, logger="service.scheduler"):
        assert job.tick() is True
    [line] = [r.getMessage() for r in caplog.records]
    assert line == f"lifecycle: running for slot 2023-11-14 22:15:00 UTC as {job.holder}"
    half_second = _job(engines, FakeClock(START + 1000.5), 1.5, [])
    with caplog.at_level(logging.INFO, logger="service.scheduler"):
        assert half_second.tick() is True
    assert "running for slot 2023-11-14 22:31:40.500 UTC as" in caplog.records[-1].getMessage()
