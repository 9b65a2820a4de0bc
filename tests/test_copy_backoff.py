"""The wait before a segment's next order for copy, from its failed orders (no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service.copy_backoff import BACKOFF_CAP, backoff_after

LAST = datetime(2026, 3, 14, 15, 0, tzinfo=UTC)
INTERVAL = timedelta(minutes=15)


def failed(n: int) -> list[datetime]:
    """`n` failed orders an interval apart, newest first, the last at LAST."""
    return [LAST - k * INTERVAL for k in range(n)]


def test_no_failed_order_is_no_backoff() -> None:
    assert backoff_after([], interval=INTERVAL) is None


@pytest.mark.parametrize(
    ("n", "wait"),
    [
        (1, INTERVAL),
        (2, 2 * INTERVAL),
        (3, 4 * INTERVAL),
        (7, 64 * INTERVAL),
        # 128 intervals is 32 h.
        (8, BACKOFF_CAP),
        # Far past the cap, and past what a timedelta holds doubled out.
        (1_000, BACKOFF_CAP),
    ],
)
def test_the_wait_doubles_from_one_interval_up_to_a_day(n: int, wait: timedelta) -> None:
    backoff = backoff_after(failed(n), interval=INTERVAL)

    assert backoff is not None
    assert (backoff.failed_in_a_row, backoff.since) == (n, LAST)
    assert backoff.until == LAST + wait


def test_a_pass_a_moment_early_on_its_interval_boundary_orders() -> None:
    backoff = backoff_after(failed(2), interval=INTERVAL)

    assert backoff is not None
    assert backoff.holds_at(LAST + INTERVAL, INTERVAL)
    assert not backoff.holds_at(LAST + 2 * INTERVAL - timedelta(seconds=1), INTERVAL)


def test_the_wait_is_said_with_the_failures_and_its_end() -> None:
    one, three = (backoff_after(failed(n), interval=INTERVAL) for n in (1, 3))

    assert one is not None and three is not None
    assert one.paused() == "paused after 1 failed job, until 2026-03-14 15:15:00 UTC"
    assert three.paused() == "paused after 3 failed jobs in a row, until 2026-03-14 16:00:00 UTC"
    assert three.resumed() == "ordering again after 3 failed jobs in a row"


def test_the_wait_s_end_is_said_to_the_second() -> None:
    """At a 30 s interval it said "until 22:16" of a wait that ends at 22:16:47, which a reader
    at 22:16:30 took as already past."""
    ordered = datetime(2026, 3, 14, 22, 16, 17, 250_000, tzinfo=UTC)
    backoff = backoff_after([ordered], interval=timedelta(seconds=30))

    assert backoff is not None
    assert backoff.paused() == "paused after 1 failed job, until 2026-03-14 22:16:47 UTC"


@pytest.mark.parametrize(
    ("n", "interrupted", "said"),
    [
        (2, 2, "2 failed jobs in a row (both interrupted mid-job"),
        (3, 3, "3 failed jobs in a row (all interrupted mid-job"),
        (3, 2, "3 failed jobs in a row (2 of them interrupted mid-job"),
    ],
)
def test_a_wait_after_interrupted_jobs_says_they_were(n: int, interrupted: int, said: str) -> None:
    """A model that kills its worker leaves each job interrupted: the note said only that jobs
    failed, and nothing anywhere said why."""
    backoff = backoff_after(failed(n), interval=INTERVAL, interrupted=interrupted)

    assert backoff is not None
    why = ": their worker stopped, out of memory perhaps)"
    until = f"{backoff.until:%Y-%m-%d %H:%M:%S} UTC"
    assert backoff.paused() == f"paused after {said}{why}, until {until}"
    assert backoff.resumed() == f"ordering again after {said}{why}"
