"""Cancelling generation jobs: the API, the runner stopping at its next round, what is kept, the
lifecycle ordering a cancelled job's copy again, and interrupted jobs started by hand."""

from __future__ import annotations

import logging
import re
import threading
from datetime import timedelta
from typing import Any

import pytest
from sqlmodel import Session

from generation.writer import Sample
from service import generation_jobs
from service.generation_jobs import (
    INTERRUPTED,
    STOPPED,
    GenerationOptions,
    create_job,
    fail_interrupted_jobs,
    interruption,
    run_job,
)
from service.job_cancel import cancel_job
from service.lifecycle import run_lifecycle
from service.models import GenerationJob, utcnow
from tests.test_generation_service import GOOD, ScriptedWriter, _variants


class _HeldInSecondSegment(ScriptedWriter):
    """A slow model: its first round for the second segment waits until the test lets it go."""

    def __init__(self) -> None:
        super().__init__(GOOD)
        self.in_second_segment = threading.Event()
        self.go_on = threading.Event()

    def sample(self, messages: list[dict[str, str]], n: int, seed: int) -> list[Sample]:
        if seed % 1000 == 1 and not self.in_second_segment.is_set():
            self.in_second_segment.set()
            assert self.go_on.wait(timeout=30), "the test never let the model go on"
        return super().sample(messages, n, seed)


def _run(app: Any, job_id: int, writer: ScriptedWriter) -> GenerationJob:
    return run_job(
        engine=app.extensions["copybandit.engine"],
        job_id=job_id,
        writer=lambda: writer,
        options=GenerationOptions.from_settings(app.extensions["copybandit.settings"]),
    )


def _queued_job(app: Any, experiment: dict[str, Any]) -> int:
    """A job queued by hand for every segment, that nothing runs until the test does."""
    with Session(app.extensions["copybandit.engine"]) as session:
        job = create_job(
            session=session, experiment_id=experiment["id"], segment_key=None, n=1, model=""
        )
        return job.id  # type: ignore[return-value]


def test_a_running_job_cancelled_stops_at_its_next_round_and_keeps_what_it_stored(
    api: Any, app: Any, experiment: dict[str, Any]
) -> None:
    writer = _HeldInSecondSegment()
    app.extensions["copybandit.jobs"].writer_factory = lambda: writer
    job_id = api.post(f"/v1/experiments/{experiment['id']}/generate", json={"n": 2}).get_json()[
        "job_id"
    ]
    assert writer.in_second_segment.wait(timeout=30)
    parents_before = _variants(api, experiment["id"], "busy-parents")

    response = api.post(f"/v1/jobs/{job_id}/cancel")
    writer.go_on.set()
    app.extensions["copybandit.jobs"].join(timeout=30)

    assert response.status_code == 200, response.get_json()
    shown = response.get_json()
    assert shown["status"] == "cancelled"
    assert re.fullmatch(
        r"cancelled by API key \S+; kept 2 new variants in tea-lovers", shown["message"]
    ), shown["message"]
    ended = api.get(f"/v1/jobs/{job_id}").get_json()
    # The worker stopped after the round it was in: nothing more stored, the row as cancelled.
    assert (ended["status"], ended["message"]) == ("cancelled", shown["message"])
    assert ended["finished_at"] is not None
    assert list(ended["result"]["segments"]) == ["tea-lovers"]
    assert len(writer.calls) == 2
    assert _variants(api, experiment["id"], "busy-parents") == parents_before
    kept = ended["result"]["segments"]["tea-lovers"]["variant_ids"]
    tea = {v["id"]: v["status"] for v in _variants(api, experiment["id"], "tea-lovers")}
    assert [tea[variant_id] for variant_id in kept] == ["pending_review"] * 2


def test_a_queued_job_cancelled_never_starts(
    api: Any, app: Any, experiment: dict[str, Any]
) -> None:
    job_id = _queued_job(app, experiment)

    response = api.post(f"/v1/jobs/{job_id}/cancel")
    writer = ScriptedWriter(GOOD)
    ran = _run(app, job_id, writer)

    assert response.status_code == 200
    assert response.get_json()["message"].endswith("before it started; nothing stored")
    assert ran.status == "cancelled" and writer.calls == []


def test_a_job_cancelled_after_its_last_write_is_logged_as_cancelled(
    app: Any, experiment: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """Cancelled once its last segment's copy was stored, before it recorded its end: its end was
    logged as "after it was given up as interrupted", a warning, which no one had done."""
    job_id = _queued_job(app, experiment)
    finish = generation_jobs._finish

    def cancelled_first(session: Session, job: GenerationJob, **values: Any) -> bool:
        with Session(app.extensions["copybandit.engine"]) as other:
            cancel_job(session=other, job_id=job_id, by="mia@example.com")
        return finish(session, job, **values)

    monkeypatch.setattr(generation_jobs, "_finish", cancelled_first)
    caplog.set_level(logging.INFO, logger="service.generation_jobs")

    ran = _run(app, job_id, ScriptedWriter(GOOD))

    assert ran.status == "cancelled"
    assert ran.message == (
        "cancelled by mia@example.com; kept 2 new variants in tea-lovers, busy-parents"
    )
    (said,) = [
        r for r in caplog.records if r.getMessage().startswith(f"generation job {job_id} ended")
    ]
    assert said.levelno == logging.INFO
    assert said.getMessage() == (
        f"generation job {job_id} ended (succeeded) after it was cancelled; its row keeps that: "
        f"{ran.message}"
    )


def test_a_job_written_off_after_its_last_write_is_logged_with_what_its_row_says(
    app: Any, experiment: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    job_id = _queued_job(app, experiment)
    finish = generation_jobs._finish
    engine = app.extensions["copybandit.engine"]

    def written_off_first(session: Session, job: GenerationJob, **values: Any) -> bool:
        generation_jobs.write_off(engine=engine, job_ids=[job_id], reason=STOPPED)
        return finish(session, job, **values)

    monkeypatch.setattr(generation_jobs, "_finish", written_off_first)

    ran = _run(app, job_id, ScriptedWriter(GOOD))

    assert ran.status == "failed"
    (said,) = [
        r for r in caplog.records if r.getMessage().startswith(f"generation job {job_id} ended")
    ]
    assert said.levelno == logging.WARNING
    assert said.getMessage() == (
        f"generation job {job_id} ended (succeeded) after it was written off; its row keeps "
        f"that: {interruption(STOPPED, by_lifecycle=False)}"
    )


def test_cancelling_an_unknown_or_ended_job_says_why(
    api: Any, app: Any, experiment: dict[str, Any]
) -> None:
    job_id = _queued_job(app, experiment)
    _run(app, job_id, ScriptedWriter(GOOD))

    unknown = api.post("/v1/jobs/99999/cancel")
    ended = api.post(f"/v1/jobs/{job_id}/cancel")
    serve_key = api.post(f"/v1/jobs/{job_id}/cancel", key="serve")

    assert unknown.status_code == 404 and unknown.get_json()["field"] == "job_id"
    assert ended.status_code == 409
    assert ended.get_json()["field"] == "status"
    assert "it is succeeded" in ended.get_json()["message"]
    assert api.get(f"/v1/jobs/{job_id}").get_json()["status"] == "succeeded"
    assert serve_key.status_code == 403


def test_a_pass_orders_a_cancelled_job_s_copy_again(
    api: Any, app: Any, experiment: dict[str, Any]
) -> None:
    engine = app.extensions["copybandit.engine"]
    first = run_lifecycle(engine=engine, model="")
    assert len(first.jobs) == 2
    for job_id in first.jobs:
        assert api.post(f"/v1/jobs/{job_id}/cancel").status_code == 200

    again = run_lifecycle(engine=engine, model="")

    # As after a failed job: the segments still miss the lines the cancelled jobs were to write.
    assert len(again.jobs) == 2


def test_an_interrupted_job_says_its_copy_is_ordered_again_only_if_the_lifecycle_ordered_it(
    app: Any, experiment: dict[str, Any]
) -> None:
    engine = app.extensions["copybandit.engine"]
    (ordered, _) = run_lifecycle(engine=engine, model="").jobs
    by_hand = _queued_job(app, experiment)
    with Session(engine) as session:
        fail_interrupted_jobs(session=session, now=utcnow() + timedelta(hours=2))
        said = {job_id: session.get(GenerationJob, job_id).message for job_id in (ordered, by_hand)}  # type: ignore[union-attr]

    assert said == {
        ordered: interruption(INTERRUPTED, by_lifecycle=True),
        # Before, it said "the lifecycle orders copy still missing again": nothing ever did.
        by_hand: interruption(INTERRUPTED, by_lifecycle=False),
    }
    assert "started by hand" in said[by_hand] and "lifecycle orders" in said[ordered]
