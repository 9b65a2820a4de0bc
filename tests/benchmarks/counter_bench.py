"""One variant's counter on PostgreSQL: how many decisions per second can share it.

Every decision adds 1 to its variant's `impressions` in the statement that stores the impression
(`service.decisions`), so the row stays locked until that commit's WAL flush is done, and
decisions for the same variant commit one after another however many workers and hosts send them.
Decisions for different variants do not wait for each other.

Setup: a migrated database on the PostgreSQL server, an experiment with one segment per process,
each segment with one active variant. Then P processes (workers, as on several hosts) each call
`service.decisions.decide` in a loop for a few seconds, twice: all on one segment (every decision
increments the same row), then each on its own segment (no two processes share a row). Each
process has its own engine and snapshot cache, as a worker does; no HTTP. On a machine whose
cores the processes and the server share, the second figure is bounded by CPU, the first by the
lock. Afterwards every variant's counter must equal its rows, and the rows the decisions made
(warm-up included): nothing lost or counted twice under the contention.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from typing import Any

from tests.benchmarks.http_bench import postgres_database
from tests.benchmarks.targets import target

PROCESSES = (4, 8)
SECONDS = 4.0
WARMUP = 50


def _decide_loop(
    url: str, segment: str, seconds: float, start: Any, counts: Any, slot: int
) -> None:
    from sqlmodel import Session

    from service.config import load_settings
    from service.db import make_engine
    from service.decisions import decide
    from service.schemas import DecideIn
    from service.snapshot import SnapshotCache

    settings = load_settings({"database_url": url})
    engine = make_engine(settings)
    cache = SnapshotCache(ttl_seconds=1.0, propensity_draws=settings.propensity_samples)
    decide_in = DecideIn.model_validate({"experiment": 1, "segment": segment})

    def one() -> None:
        with Session(engine) as session:
            decide(
                session=lambda: session,
                bind=engine,
                cache=cache,
                settings=settings,
                decide_in=decide_in,
            )

    try:
        for _ in range(WARMUP):
            one()
    except BaseException:
        start.abort()  # the parent stops waiting for this process at once
        raise
    start.wait()
    made, stop = 0, time.monotonic() + seconds
    while time.monotonic() < stop:
        one()
        made += 1
    counts[slot] = made
    engine.dispose()


def _setup(url: str, segments: int) -> None:
    from sqlmodel import Session

    from service.config import load_settings
    from service.db import make_engine
    from service.demo import DEMO
    from service.experiments import add_variant, create_experiment
    from service.migrate import upgrade
    from service.schemas import ExperimentCreate, VariantCreate

    engine = make_engine(load_settings({"database_url": url}))
    upgrade(engine)
    spec = {
        **DEMO,
        "segments": [{"key": f"s{i}", "description": f"segment {i}"} for i in range(segments)],
    }
    with Session(engine) as session:
        experiment = create_experiment(
            session=session, experiment_create=ExperimentCreate.model_validate(spec)
        )
        for i in range(segments):
            add_variant(
                session=session,
                experiment_id=experiment.id,  # type: ignore[arg-type]
                variant_create=VariantCreate(segment=f"s{i}", text=f"Copy {i}", origin="control"),  # type: ignore[arg-type]
            )
    engine.dispose()


def _run_once(url: str, processes: int, shared: bool) -> tuple[float, int]:
    """Decisions per second in the timed loop, and every decision made (warm-up included)."""
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(processes + 1)
    counts = context.Array("q", processes)
    workers = [
        context.Process(
            target=_decide_loop,
            args=(url, "s0" if shared else f"s{i}", SECONDS, start, counts, i),
        )
        for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:
        start.wait(timeout=120)
    except threading.BrokenBarrierError:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.terminate()
                worker.join()
        codes = [worker.exitcode for worker in workers]
        raise RuntimeError(f"decide processes did not all start (exit codes {codes})") from None
    for worker in workers:
        worker.join(timeout=SECONDS + 60)
        if worker.exitcode != 0:
            raise RuntimeError(f"a decide process failed (exit code {worker.exitcode})")
    return sum(counts) / SECONDS, sum(counts) + WARMUP * processes


def _stored(url: str) -> tuple[int, int]:
    """Impression rows, and how many counters `copybandit check` finds off their rows."""
    import sqlalchemy as sa
    from sqlmodel import Session

    from service.config import load_settings
    from service.consistency import check_counters
    from service.db import make_engine

    engine = make_engine(load_settings({"database_url": url}))
    try:
        with Session(engine) as session:
            rows = session.execute(sa.text("SELECT count(*) FROM impression")).scalar_one()
            report = check_counters(session=session)
    finally:
        engine.dispose()
    return int(rows), len(report.mismatches)


def run() -> dict[str, Any]:
    results: dict[str, Any] = {"seconds_per_run": SECONDS}
    with postgres_database("counter") as url:
        if url is None:
            results["skipped"] = "PostgreSQL unreachable"
            _print(results)
            return results
        _setup(url, max(PROCESSES))
        made = 0
        for processes in PROCESSES:
            one_variant, made_shared = _run_once(url, processes, shared=True)
            own_variants, made_own = _run_once(url, processes, shared=False)
            made += made_shared + made_own
            results[f"{processes}_processes"] = {
                "one_variant_per_second": round(one_variant),
                "own_variants_per_second": round(own_variants),
            }
        rows, mismatched = _stored(url)
        results["checks"] = {"decisions": made, "rows": rows, "counters_off": mismatched}
    _print(results)
    checks = results["checks"]
    results["targets"] = [
        target(
            "one variant's counter: rows, counters (postgresql)",
            checks["rows"],
            f"== {checks['decisions']:,} decided",
            checks["rows"] == checks["decisions"] and checks["counters_off"] == 0,
            "rows",
        )
    ]
    return results


def _print(results: dict[str, Any]) -> None:
    print(
        "\nOne variant's counter, PostgreSQL (service.decisions.decide in P processes, "
        f"{SECONDS:g} s each; no HTTP)"
    )
    if "skipped" in results:
        print(f"  skipped: {results['skipped']}")
        return
    for processes in PROCESSES:
        figures = results[f"{processes}_processes"]
        print(
            f"  {processes} processes: all on one variant {figures['one_variant_per_second']:,}"
            f" decisions/s; each on its own {figures['own_variants_per_second']:,}"
        )
    checks = results["checks"]
    print(
        f"  afterwards: {checks['rows']:,} impression rows for {checks['decisions']:,} decisions;"
        f" counters that differ from their rows: {checks['counters_off']}"
    )
