"""Each way a generation job ends writes its outcome, which the lifecycle's backoff reads
(service.copy_backoff) where it read the job's error and message text."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlmodel import Session

from generation.writer import PromptTooLong, Sample
from service.generation_jobs import (
    STOPPED,
    GenerationOptions,
    create_job,
    fail_interrupted_jobs,
    run_job,
    write_off,
)
from service.job_cancel import cancel_job
from service.models import GenerationJob, utcnow
from tests.test_generation_service import GOOD, ScriptedWriter


class _TooLong(ScriptedWriter):
    def sample(self, messages: list[dict[str, str]], n: int, seed: int) -> list[Sample]:
        raise PromptTooLong("the prompt is 5,201 tokens", tokens=5201, limit=4096)


def _queued(app: Any, experiment: dict[str, Any]) -> int:
    with Session(app.extensions["copybandit.engine"]) as session:
        job = create_job(
            session=session, experiment_id=experiment["id"], segment_key="tea-lovers", n=1, model=""
        )
        return job.id  # type: ignore[return-value]


def _outcome(app: Any, job_id: int) -> tuple[str, str | None]:
    with Session(app.extensions["copybandit.engine"]) as session:
        job = session.get_one(GenerationJob, job_id)
        return job.status, job.outcome


@pytest.mark.parametrize(
    ("writer", "ended"),
    [
        (ScriptedWriter(GOOD), ("succeeded", "wrote")),
        # Every line refused by the lint: "done: 0 new variants".
        (
            ScriptedWriter(["Guaranteed to cure your mornings, kettle fans!"]),
            ("succeeded", "wrote_none"),
        ),
        (ScriptedWriter(GOOD, fail=True), ("failed", "failed")),
        (_TooLong(GOOD), ("failed", "too_long")),
    ],
    ids=["wrote", "wrote-none", "failed", "too-long"],
)
def test_a_job_that_runs_to_its_end_says_what_came_of_it(
    app: Any, experiment: dict[str, Any], writer: ScriptedWriter, ended: tuple[str, str]
) -> None:
    job_id = _queued(app, experiment)
    assert _outcome(app, job_id) == ("queued", None)

    run_job(
        engine=app.extensions["copybandit.engine"],
        job_id=job_id,
        writer=lambda: writer,
        options=GenerationOptions.from_settings(app.extensions["copybandit.settings"]),
    )

    assert _outcome(app, job_id) == ended


def test_a_job_written_off_or_cancelled_says_so(app: Any, experiment: dict[str, Any]) -> None:
    engine = app.extensions["copybandit.engine"]
    stale, stopped, cancelled = (_queued(app, experiment) for _ in range(3))

    with Session(engine) as session:
        cancel_job(session=session, job_id=cancelled, by="a test")
    assert write_off(engine=engine, job_ids=[stopped], reason=STOPPED) == [stopped]
    with Session(engine) as session:
        # The one job still queued, two hours on.
        assert fail_interrupted_jobs(session=session, now=utcnow() + timedelta(hours=2)) == [stale]

    assert [_outcome(app, job_id) for job_id in (stale, stopped, cancelled)] == [
        ("failed", "interrupted"),
        ("failed", "interrupted"),
        ("cancelled", "cancelled"),
    ]
