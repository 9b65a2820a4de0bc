"""Generation wired into the service: jobs over HTTP, stored variants, audit trail (fake writer)."""

from __future__ import annotations

import dataclasses
import functools
import gc
import logging
import subprocess
import sys
import threading
from typing import Any
from unittest import mock

import pytest
import sqlalchemy as sa
from sqlmodel import Session, col

from generation.lint import DEFAULT_BANNED_PHRASES
from generation.writer import PromptTooLong, Sample
from service import create_app
from service.config import load_settings
from service.generation_jobs import (
    GenerationOptions,
    JobRunner,
    create_job,
    default_writer,
    progress_bars_wanted,
    run_job,
)
from service.lifecycle import DEFAULT_INTERVAL as INTERVAL
from service.lifecycle import run_lifecycle
from service.models import GenerationJob
from tests.conftest import PG_URL, store_policy_by_hand
from tests.pg_backends import end_backends, named
from tests.test_lifecycle_run import held_as_too_long

GOOD = [
    "Brew every cup right with the Aurora kettle.",
    "The Aurora kettle boils in three minutes flat.",
    "Tea lovers, meet the Aurora kettle.",
    "Aurora: the glass kettle for loose-leaf mornings.",
]


class ScriptedWriter:
    model_id = "scripted-test-writer"

    def __init__(self, lines: list[str], fail: bool = False) -> None:
        self.lines = lines
        self.fail = fail
        self.calls: list[int] = []

    def sample(self, messages: list[dict[str, str]], n: int, seed: int) -> list[Sample]:
        if self.fail:
            raise RuntimeError("the model fell over")
        self.calls.append(seed)
        return [
            Sample(text=line, finished=True, logprob=-1.0 - i / 10)
            for i, line in enumerate(self.lines)
        ]


@pytest.fixture
def writer(app: Any) -> ScriptedWriter:
    scripted = ScriptedWriter([*GOOD, "Guaranteed to cure your mornings, kettle fans!"])
    app.extensions["copybandit.jobs"].writer_factory = lambda: scripted
    return scripted


def _run(api: Any, app: Any, experiment_id: int, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post(f"/v1/experiments/{experiment_id}/generate", json=body)
    assert response.status_code == 202, response.get_json()
    accepted = response.get_json()
    assert accepted["status"] == "queued"
    assert response.headers["Location"] == f"/v1/jobs/{accepted['job_id']}"
    app.extensions["copybandit.jobs"].join(timeout=30)
    job = api.get(f"/v1/jobs/{accepted['job_id']}").get_json()
    return job  # type: ignore[no-any-return]


def _variants(api: Any, experiment_id: int, segment: str) -> list[dict[str, Any]]:
    experiment = api.get(f"/v1/experiments/{experiment_id}").get_json()
    return next(s["variants"] for s in experiment["segments"] if s["key"] == segment)


def test_generated_copy_is_stored_for_review_with_its_audit_trail(
    api: Any, app: Any, experiment: dict[str, Any], writer: ScriptedWriter
) -> None:
    job = _run(api, app, experiment["id"], {"segment": "tea-lovers", "n": 2})

    assert (job["status"], job["progress"], job["segment"]) == ("succeeded", 1.0, "tea-lovers")
    outcome = job["result"]["segments"]["tea-lovers"]
    assert len(outcome["variant_ids"]) == 2
    banned = next(r for r in outcome["rejections"] if r["text"].startswith("Guaranteed"))
    assert any(reason.startswith("banned_phrase") for reason in banned["reasons"])

    generated = [
        v for v in _variants(api, experiment["id"], "tea-lovers") if v["origin"] == "generated"
    ]
    assert [v["id"] for v in generated] == outcome["variant_ids"]
    for variant in generated:
        assert variant["status"] == "pending_review"
        assert variant["text"] in GOOD
        audit = variant["audit"]
        assert audit["model"] == "scripted-test-writer" and audit["job_id"] == job["id"]
        assert audit["seed"] == writer.calls[0]
        assert "banned_phrase" in audit["lint"]["passed"]
        assert audit["prompt"][-1]["role"] == "user"
        assert "Aurora kettle" in audit["prompt"][-1]["content"]
    # Pending copy is not served until a marketer approves it.
    served = {api.decide(experiment["id"], segment="tea-lovers")["variant_id"] for _ in range(30)}
    assert served.isdisjoint(outcome["variant_ids"])


def test_auto_approve_serves_generated_copy_at_once(
    api: Any, app: Any, writer: ScriptedWriter
) -> None:
    created = api.create_experiment(name="Auto", auto_approve=True, brand_voice="Calm and precise.")
    job = _run(api, app, created["id"], {"n": 1})

    assert set(job["result"]["segments"]) == {"tea-lovers", "busy-parents"}  # every segment
    for segment in ("tea-lovers", "busy-parents"):
        (variant,) = _variants(api, created["id"], segment)
        assert variant["status"] == "active" and variant["origin"] == "generated"
        assert "Voice: Calm and precise." in variant["audit"]["prompt"][-1]["content"]
        assert api.decide(created["id"], segment=segment)["variant_id"] == variant["id"]


def test_existing_copy_is_not_written_again(
    api: Any, app: Any, experiment: dict[str, Any], writer: ScriptedWriter
) -> None:
    api.add_variant(experiment["id"], "tea-lovers", GOOD[0])
    job = _run(api, app, experiment["id"], {"segment": "tea-lovers", "n": 4})

    outcome = job["result"]["segments"]["tea-lovers"]
    texts = [v["text"] for v in _variants(api, experiment["id"], "tea-lovers")]
    assert texts.count(GOOD[0]) == 1
    assert len(outcome["variant_ids"]) == 3
    twin = next(r for r in outcome["rejections"] if r["text"] == GOOD[0])
    assert twin["reasons"][0].startswith("near_duplicate: 1.00")
    # Too few survivors: it kept sampling, up to the configured number of rounds.
    assert writer.calls == [writer.calls[0] + i for i in range(4)]


def test_a_failing_model_fails_the_job_and_stores_nothing(
    api: Any, app: Any, experiment: dict[str, Any]
) -> None:
    app.extensions["copybandit.jobs"].writer_factory = lambda: ScriptedWriter([], fail=True)
    before = _variants(api, experiment["id"], "tea-lovers")
    job = _run(api, app, experiment["id"], {"segment": "tea-lovers", "n": 2})

    assert job["status"] == "failed"
    assert job["error"] == "RuntimeError: the model fell over"
    assert _variants(api, experiment["id"], "tea-lovers") == before


@pytest.mark.parametrize(
    ("said", "recorded"),
    [
        # A file name read with os.fsdecode keeps a byte that is not UTF-8 as a lone surrogate.
        (
            "cannot read /models/caf\udce9/config.json",
            "cannot read /models/caf[U+DCE9]/config.json",
        ),
        ("the tokenizer cannot read 'ab\x00c'", "the tokenizer cannot read 'ab[U+0000]c'"),
    ],
    ids=["lone-surrogate", "nul"],
)
def test_a_job_whose_error_holds_characters_no_database_stores_records_its_failure(
    api: Any,
    app: Any,
    experiment: dict[str, Any],
    said: str,
    recorded: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its failure could not be written (psycopg and sqlite3 encode no lone surrogate, PostgreSQL
    stores no NUL), and the job read running until a pass gave it up an hour later."""
    # The job's failure is logged with its traceback, the surrogate in it (stderr writes it
    # escaped); captured into this test's report, it crashed pytest-xdist's worker, which sends
    # reports to the controller as UTF-8.
    caplog.set_level(logging.CRITICAL, logger="service.generation_jobs")

    class Raises(ScriptedWriter):
        def sample(self, messages: list[dict[str, str]], n: int, seed: int) -> list[Sample]:
            raise OSError(said)

    app.extensions["copybandit.jobs"].writer_factory = lambda: Raises([])
    job = _run(api, app, experiment["id"], {"segment": "tea-lovers", "n": 2})

    assert (job["status"], job["error"]) == ("failed", f"OSError: {recorded}")


def test_generated_copy_with_a_lone_surrogate_is_refused_with_a_replacement_character(
    api: Any, app: Any, experiment: dict[str, Any]
) -> None:
    # A writer that decodes with surrogateescape: the segment's copy failed to store, and the job.
    # Now the line reads U+FFFD where the character was lost, and the lint refuses it, as a
    # shopper would have read "caf\ufffd or tea"; the job stores the rest.
    garbled = "The Aurora kettle boils in three minutes flat, caf\udce9 or tea."
    scripted = ScriptedWriter([garbled, GOOD[0]])
    app.extensions["copybandit.jobs"].writer_factory = lambda: scripted
    job = _run(api, app, experiment["id"], {"segment": "tea-lovers", "n": 2})

    assert job["status"] == "succeeded", job["error"]
    stored = {v["text"] for v in _variants(api, experiment["id"], "tea-lovers")}
    assert GOOD[0] in stored
    assert not [text for text in stored if "\ufffd" in text or "\udce9" in text]
    assert {
        "text": "The Aurora kettle boils in three minutes flat, caf\ufffd or tea.",
        "reasons": ["lost_character: contains U+FFFD, a character lost in decoding"],
    } in job["result"]["segments"]["tea-lovers"]["rejections"]


def test_a_model_that_cannot_be_loaded_fails_the_job_in_one_logged_line(
    api: Any, app: Any, experiment: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Its message says what is wrong and where; `copybandit generate` printed the loader's
    traceback under it, on the terminal."""
    from generation.model import ModelUnavailable

    reason = "the model folder '/models/x' cannot be loaded: its weights (SafetensorError: bad)"

    def unloadable() -> ScriptedWriter:
        raise ModelUnavailable(reason)

    app.extensions["copybandit.jobs"].writer_factory = unloadable
    job = _run(api, app, experiment["id"], {"segment": "tea-lovers", "n": 2})

    assert job["status"] == "failed"
    assert job["error"] == f"ModelUnavailable: {reason}"
    failed = [r for r in caplog.records if r.getMessage().endswith("failed: " + reason)]
    assert len(failed) == 1
    assert failed[0].exc_info is None


def test_a_job_for_an_experiment_whose_stored_policy_does_not_validate_runs(
    api: Any, app: Any, session: Session, experiment: dict[str, Any], writer: ScriptedWriter
) -> None:
    # Accepted with 202, the job then failed on pydantic's ValidationError; copy added by hand
    # goes in at the policy shown, and so does the model's.
    store_policy_by_hand(session, experiment["id"], {"max_active": 2})
    job = _run(api, app, experiment["id"], {"segment": "tea-lovers", "n": 2})
    assert (job["status"], job["error"]) == ("succeeded", None)
    assert len(job["result"]["segments"]["tea-lovers"]["variant_ids"]) == 2


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/v1/experiments/{id}/generate", {"n": 0}, 400, "n"),
        ("/v1/experiments/{id}/generate", {"n": 21}, 400, "n"),
        ("/v1/experiments/{id}/generate", {"n": "3"}, 400, "n"),
        ("/v1/experiments/{id}/generate", {"segment": "nobody"}, 404, "segment"),
        ("/v1/experiments/424242/generate", {"n": 1}, 404, "experiment_id"),
    ],
)
def test_generate_refuses_bad_requests(
    api: Any, experiment: dict[str, Any], path: str, body: dict[str, Any], status: int, field: str
) -> None:
    response = api.post(path.format(id=experiment["id"]), json=body)
    assert (response.status_code, response.get_json()["field"]) == (status, field)


def test_jobs_need_an_admin_key_and_an_existing_id(api: Any, experiment: dict[str, Any]) -> None:
    assert api.get("/v1/jobs/424242").status_code == 404
    response = api.post(f"/v1/experiments/{experiment['id']}/generate", json={"n": 1}, key="serve")
    assert response.status_code == 403
    assert api.get("/v1/jobs/1", key="serve").status_code == 403


class _AnotherJobGoesFirst(ScriptedWriter):
    """While this job samples, a job for the same segment in another worker stores its lines."""

    def __init__(self, lines: list[str], other: Any) -> None:
        super().__init__(lines)
        self.other = other

    def sample(self, messages: list[dict[str, str]], n: int, seed: int) -> list[Sample]:
        if self.other is not None:
            other, self.other = self.other, None
            worker = threading.Thread(target=other)
            worker.start()
            worker.join(timeout=30)
        return super().sample(messages, n, seed)


def _options(app: Any) -> GenerationOptions:
    return GenerationOptions.from_settings(app.extensions["copybandit.settings"])


def _two_jobs(engine: Any, experiment: dict[str, Any]) -> tuple[Any, Any]:
    """Two queued jobs for tea-lovers, as two workers' Generate buttons make them."""
    with Session(engine, expire_on_commit=False) as session:
        first, second = (
            create_job(
                session=session,
                experiment_id=experiment["id"],
                segment_key="tea-lovers",
                n=2,
                model="",
            )
            for _ in range(2)
        )
    return first, second


def test_two_jobs_for_one_segment_at_once_store_no_line_twice(
    api: Any, app: Any, experiment: dict[str, Any]
) -> None:
    engine, options = app.extensions["copybandit.engine"], _options(app)
    first, second = _two_jobs(engine, experiment)
    lines = GOOD[:2]
    finished: dict[int, Any] = {}

    def run(job_id: int, writer: ScriptedWriter) -> None:
        finished[job_id] = run_job(
            engine=engine, job_id=job_id, writer=lambda: writer, options=options
        )

    later = functools.partial(run, second.id, ScriptedWriter(lines))
    run(first.id, _AnotherJobGoesFirst(lines, later))

    texts = [v["text"] for v in _variants(api, experiment["id"], "tea-lovers")]
    # Before, each line was stored twice: both jobs compared with the segment as it was at start.
    assert sorted(t for t in texts if t in lines) == sorted(lines)
    assert {job.status for job in finished.values()} == {"succeeded"}
    assert len(finished[second.id].result["segments"]["tea-lovers"]["variant_ids"]) == 2
    outcome = finished[first.id].result["segments"]["tea-lovers"]
    assert outcome["variant_ids"] == []
    # Its lines are in its record, refused: it said "done: 0 new variants" and rejected none.
    assert outcome["rejected"] == 2
    assert outcome["rejections"] == [
        {"text": line, "reasons": [f"near_duplicate: 1.00 similar to {line!r}, added meanwhile"]}
        for line in lines
    ]


def test_two_jobs_for_one_segment_at_once_store_no_near_duplicates(
    api: Any, app: Any, experiment: dict[str, Any]
) -> None:
    engine, options = app.extensions["copybandit.engine"], _options(app)
    first, second = _two_jobs(engine, experiment)
    theirs = GOOD[:2]
    # A mark or a word apart: what the pipeline's de-duplication refuses within one job.
    ours = [
        "Brew every cup right with the Aurora kettle!",
        "The Aurora kettle boils in three minutes, flat.",
    ]
    later = functools.partial(
        run_job,
        engine=engine,
        job_id=second.id,
        writer=lambda: ScriptedWriter(theirs),
        options=options,
    )
    done = run_job(
        engine=engine,
        job_id=first.id,
        writer=lambda: _AnotherJobGoesFirst(ours, later),
        options=options,
    )

    texts = [v["text"] for v in _variants(api, experiment["id"], "tea-lovers")]
    # Before, only the same text (up to case and spaces) counted as taken: all four were stored.
    assert sorted(t for t in texts if t in [*theirs, *ours]) == sorted(theirs)
    assert done.status == "succeeded" and done.result["segments"]["tea-lovers"]["variant_ids"] == []
    assert done.result["segments"]["tea-lovers"]["rejections"] == [
        {"text": line, "reasons": [f"near_duplicate: 1.00 similar to {twin!r}, added meanwhile"]}
        for line, twin in zip(ours, theirs, strict=True)
    ]


class _FailsOnSecondSegment(ScriptedWriter):
    def sample(self, messages: list[dict[str, str]], n: int, seed: int) -> list[Sample]:
        if self.calls:
            raise RuntimeError("the model fell over")
        return super().sample(messages, n, seed)


def test_a_job_that_fails_after_storing_copy_says_what_it_stored(api: Any, app: Any) -> None:
    created = api.create_experiment(name="Auto", auto_approve=True)
    app.extensions["copybandit.jobs"].writer_factory = lambda: _FailsOnSecondSegment(GOOD)
    job = _run(api, app, created["id"], {"n": 1})

    (served,) = _variants(api, created["id"], "tea-lovers")
    # Before, the job said only "failed", with no result, while this variant was live.
    assert job["status"] == "failed" and job["error"] == "RuntimeError: the model fell over"
    assert job["message"] == "failed after storing 1 new variant in tea-lovers"
    assert job["result"]["segments"]["tea-lovers"]["variant_ids"] == [served["id"]]
    assert _variants(api, created["id"], "busy-parents") == []


class _FailsOnLastSegment(ScriptedWriter):
    def __init__(self, lines: list[str], segments: int) -> None:
        super().__init__(lines)
        self.segments = segments

    def sample(self, messages: list[dict[str, str]], n: int, seed: int) -> list[Sample]:
        if len(self.calls) == self.segments - 1:
            raise RuntimeError("the model fell over")
        return super().sample(messages, n, seed)


def test_a_job_that_fails_after_storing_copy_in_many_segments_still_records_it(
    api: Any, app: Any
) -> None:
    keys = [f"segment-{i:02d}-" + "x" * 29 for i in range(21)]  # 40 letters, the longest key
    created = api.create_experiment(
        name="Wide",
        auto_approve=True,
        segments=[{"key": key, "description": "Tea drinkers."} for key in keys],
    )
    app.extensions["copybandit.jobs"].writer_factory = lambda: _FailsOnLastSegment(GOOD, len(keys))
    job = _run(api, app, created["id"], {"n": 1})

    # Naming all 20 segments took 878 characters: PostgreSQL refused the row, and the job read
    # running until a pass wrote it off an hour later.
    assert job["status"] == "failed" and job["error"] == "RuntimeError: the model fell over"
    assert len(job["message"]) <= 500
    assert job["message"].startswith(f"failed after storing 20 new variants in {keys[0]}, ")
    assert job["message"].endswith(" more")
    assert list(job["result"]["segments"]) == keys[:-1]


class _BriefTooLongFor(ScriptedWriter):
    def __init__(self, lines: list[str], persona: str) -> None:
        super().__init__(lines)
        self.persona = persona

    def sample(self, messages: list[dict[str, str]], n: int, seed: int) -> list[Sample]:
        if any(self.persona in message["content"] for message in messages):
            raise PromptTooLong(
                "the prompt is 5,201 tokens, and at most 4,096 fit", tokens=5201, limit=4096
            )
        return super().sample(messages, n, seed)


# 2,000 characters, over 4,096 tokens
WORDY = "茶" * 2000


def _wordy_experiment(api: Any, app: Any, *, also_last: bool) -> dict[str, Any]:
    """Segments "first", "wordy" (a persona too long for the model) and, if asked, "last"; the
    writer refuses the wordy one's prompt as too long."""
    segments = [
        {"key": "first", "description": "Tea drinkers."},
        {"key": "wordy", "description": WORDY},
    ]
    if also_last:
        segments.append({"key": "last", "description": "Coffee drinkers."})
    created = api.create_experiment(name="Wordy", auto_approve=True, segments=segments)
    writer = _BriefTooLongFor(GOOD, WORDY)
    app.extensions["copybandit.jobs"].writer_factory = lambda: writer
    return created  # type: ignore[no-any-return]


def test_a_brief_too_long_for_one_segment_leaves_the_others_their_copy(api: Any, app: Any) -> None:
    created = _wordy_experiment(api, app, also_last=True)
    job = _run(api, app, created["id"], {"n": 1})

    # The job had stopped at "wordy": "last" got no copy until its brief was shortened.
    assert [len(_variants(api, created["id"], key)) for key in ("first", "wordy", "last")] == [
        1,
        0,
        1,
    ]
    assert job["status"] == "failed"
    assert job["error"] == (
        "PromptTooLong: segment wordy: the prompt is 5,201 tokens, and at most 4,096 fit"
    )
    assert job["message"] == "failed after storing 2 new variants in first, last"
    assert list(job["result"]["segments"]) == ["first", "last"]


def _lifecycle_pass(app: Any, runner: JobRunner | None = None) -> list[GenerationJob]:
    """One pass with its jobs run by the runner (the app's unless given), both configured with
    the runner's model, as in one server; the jobs it ordered."""
    engine = app.extensions["copybandit.engine"]
    runner = runner or app.extensions["copybandit.jobs"]
    report = run_lifecycle(engine=engine, model=runner.options.model, submit_job=runner.submit)
    runner.join(timeout=30)
    with Session(engine) as session:
        return [session.get_one(GenerationJob, job_id) for job_id in report.jobs]


def test_the_lifecycle_orders_no_copy_for_a_brief_too_long_until_it_changes(
    api: Any, app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Every job for such a segment fails, and each pass ordered another, loading the model."""
    created = _wordy_experiment(api, app, also_last=False)
    jobs = _lifecycle_pass(app)
    assert [(job.status, job.segment_id is not None) for job in jobs] == [
        ("succeeded", True),
        ("failed", True),
    ]
    wordy_id = jobs[1].segment_id
    assert jobs[1].error == (
        "PromptTooLong: segment wordy: the prompt is 5,201 tokens, and at most 4,096 fit"
    )

    caplog.clear()
    assert _lifecycle_pass(app) == []
    assert (
        f"lifecycle: segment wordy of experiment {created['id']} gets no new copy: brief too long "
        "for the model: 5,201 tokens of 4,096; shorten it (the product description, brand voice or "
        "the segment's persona), or configure a model with a longer context"
    ) in caplog.messages
    # Said once: logged every pass, a brief held for a month was 2,900 lines of the same words.
    caplog.clear()
    assert _lifecycle_pass(app) == []
    assert not [m for m in caplog.messages if "gets no new copy" in m]
    edited = api.patch(
        f"/v1/experiments/{created['id']}/segments/wordy",
        json={"description": "Drink tea by the pot."},
    )
    assert edited.status_code == 200, edited.get_json()
    jobs = _lifecycle_pass(app)
    assert [(job.segment_id, job.status) for job in jobs] == [(wordy_id, "succeeded")]


def test_a_model_that_keeps_failing_is_not_ordered_copy_each_pass_but_a_job_by_hand_runs(
    api: Any, app: Any, experiment: dict[str, Any]
) -> None:
    """Before, every pass ordered each segment another job, which loaded the model and failed:
    96 a day per segment at the default interval."""
    broken = ScriptedWriter(GOOD, fail=True)
    app.extensions["copybandit.jobs"].writer_factory = lambda: broken
    failed = _lifecycle_pass(app)
    assert [job.status for job in failed] == ["failed", "failed"]
    tea_id = failed[0].segment_id

    # The next order waits an interval (15 minutes) from this one.
    assert _lifecycle_pass(app) == []

    # The marketer mends the model: a job by hand is not held back, and its copy ends the wait.
    broken.fail = False
    job = _run(api, app, experiment["id"], {"segment": "tea-lovers", "n": 1})
    assert job["status"] == "succeeded"
    assert [(job.segment_id, job.status) for job in _lifecycle_pass(app)] == [(tea_id, "succeeded")]


def test_a_job_by_hand_for_every_segment_that_failed_elsewhere_ends_the_wait_where_it_wrote(
    api: Any, app: Any
) -> None:
    """A job for every segment fails as a whole when one segment fails (here: one held as too
    long for the model), after giving the others their copy: its outcome said nothing of those,
    and a segment it wrote for still waited out its failed orders, its page saying so."""
    from service.copy_backoff import copy_backoff, copy_backoffs
    from service.experiments import segments_of

    created = _wordy_experiment(api, app, also_last=False)
    writer = _BriefTooLongFor(GOOD, WORDY)
    writer.fail = True
    app.extensions["copybandit.jobs"].writer_factory = lambda: writer
    ordered = _lifecycle_pass(app)
    assert [(job.status, job.outcome) for job in ordered] == [
        ("failed", "failed"),
        ("failed", "too_long"),
    ]
    first_id = ordered[0].segment_id
    assert _lifecycle_pass(app) == []

    # Mended: a job by hand for every segment writes "first" its copy and fails on "wordy".
    writer.fail = False
    job = _run(api, app, created["id"], {"n": 1})
    assert (job["status"], list(job["result"]["segments"])) == ("failed", ["first"])

    engine = app.extensions["copybandit.engine"]
    with Session(engine) as session:
        segments = segments_of(session=session, experiment_id=created["id"])
        alone = {s.id: copy_backoff(session, s, interval=INTERVAL) for s in segments}
        assert copy_backoffs(session, segments, interval=INTERVAL) == alone
        assert alone == dict.fromkeys(alone)
    assert [(job.segment_id, job.status) for job in _lifecycle_pass(app)] == [
        (first_id, "succeeded")
    ]


def test_a_job_whose_every_line_the_lint_refused_holds_back_the_next_order(
    app: Any, experiment: dict[str, Any]
) -> None:
    refused = ScriptedWriter(["Guaranteed to cure your mornings, kettle fans!"])
    app.extensions["copybandit.jobs"].writer_factory = lambda: refused
    jobs = _lifecycle_pass(app)
    assert [(job.status, job.message) for job in jobs] == [
        ("succeeded", "done: 0 new variants")
    ] * 2

    assert _lifecycle_pass(app) == []


def _server_on(app: Any, model: str, writer: ScriptedWriter) -> JobRunner:
    """A runner as a server configured with COPYBANDIT_MODEL=`model` has, writing with `writer`."""
    settings = dataclasses.replace(app.extensions["copybandit.settings"], model=model)
    return JobRunner(
        engine=app.extensions["copybandit.engine"], settings=settings, writer_factory=lambda: writer
    )


def test_a_brief_too_long_gets_copy_once_a_model_with_a_longer_context_is_configured(
    api: Any, app: Any
) -> None:
    """The other remedy: the hold was keyed on the brief alone, and a server restarted on a
    model with a longer context still ordered the segment no copy until its brief was edited."""
    _wordy_experiment(api, app, also_last=False)
    short = _server_on(app, "/models/short", _BriefTooLongFor(GOOD, WORDY))
    refused = _lifecycle_pass(app, short)[1]
    assert refused.status == "failed"
    assert refused.result is not None
    assert refused.result["briefs_too_long"]["wordy"]["model"] == "/models/short"
    assert _lifecycle_pass(app, short) == []

    longer = _server_on(app, "/models/longer", ScriptedWriter(GOOD))
    assert [(job.segment_id, job.status) for job in _lifecycle_pass(app, longer)] == [
        (refused.segment_id, "succeeded")
    ]
    regenerate = _audit(api, refused.experiment_id, "regenerate")[0]
    assert regenerate["numbers"]["hold_lifted"] == "model"
    assert regenerate["reason"].endswith("ended: the configured model changed")


def test_a_brief_too_long_is_held_until_its_product_description_is_edited(
    api: Any, app: Any
) -> None:
    """The hold covers the whole brief the prompt is built from, not the persona alone."""
    created = _wordy_experiment(api, app, also_last=False)
    wordy_id = _lifecycle_pass(app)[1].segment_id
    same = api.patch(f"/v1/experiments/{created['id']}", json={"name": created["name"]})
    assert same.status_code == 200
    assert _lifecycle_pass(app) == []

    edited = api.patch(
        f"/v1/experiments/{created['id']}", json={"product": {"description": "A glass kettle."}}
    )
    assert edited.status_code == 200, edited.get_json()
    # The writer still refuses the persona: the pass orders again, and that job fails again.
    assert [(job.segment_id, job.status) for job in _lifecycle_pass(app)] == [(wordy_id, "failed")]
    assert _lifecycle_pass(app) == []


def _audit(api: Any, experiment_id: int, action: str) -> list[dict[str, Any]]:
    response = api.get(f"/v1/experiments/{experiment_id}/audit?action={action}")
    assert response.status_code == 200, response.get_json()
    return response.get_json()["events"]  # type: ignore[no-any-return]


def test_two_jobs_at_once_for_one_held_brief_begin_one_hold(
    api: Any, app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each job read whether the hold had begun as it found the brief too long, before either had
    ended: both found none, and the segment's history said the hold began twice."""
    from service import generation_jobs

    created = _wordy_experiment(api, app, also_last=False)
    engine = app.extensions["copybandit.engine"]
    with Session(engine) as session:
        first, second = (
            create_job(
                session=session, experiment_id=created["id"], segment_key="wordy", n=1, model=""
            ).id
            for _ in range(2)
        )
    writer = _BriefTooLongFor(GOOD, WORDY)
    options = GenerationOptions.from_settings(app.extensions["copybandit.settings"])

    def run(job_id: int | None) -> None:
        run_job(engine=engine, job_id=job_id, writer=lambda: writer, options=options)  # type: ignore[arg-type]

    thread = threading.Thread(target=run, args=(second,))
    second_looked = threading.Event()
    looked = generation_jobs.brief_refused

    def look(*args: Any, **kwargs: Any) -> Any:
        found = looked(*args, **kwargs)
        if threading.current_thread() is thread:
            second_looked.set()
        elif thread.ident is None:
            thread.start()
            # Without the segment's lock the second job looks, finds no hold and begins one too;
            # with it, it waits for the first job's end, and the wait here runs out.
            second_looked.wait(2)
        return found

    monkeypatch.setattr(generation_jobs, "brief_refused", look)
    run(first)
    thread.join(30)

    holds = _audit(api, created["id"], "hold")
    assert [hold["numbers"]["job_id"] for hold in holds] == [first]
    with Session(engine) as session:
        assert [session.get_one(GenerationJob, job_id).status for job_id in (first, second)] == [
            "failed",
            "failed",
        ]


class _LoadsCounted:
    """A writer factory that counts the model loads asked of it."""

    def __init__(self, writer: ScriptedWriter) -> None:
        self.writer = writer
        self.loads = 0

    def __call__(self) -> ScriptedWriter:
        self.loads += 1
        return self.writer


def _queued_then_held(api: Any, app: Any, segment_key: str | None) -> tuple[int, int, Any]:
    """A job for `segment_key` (None: every segment) queued while nothing was held yet, then a
    job for "wordy" that ends and begins its hold: the queued job's id, the hold's job's id, and
    the options to run jobs with."""
    created = _wordy_experiment(api, app, also_last=True)
    engine = app.extensions["copybandit.engine"]
    with Session(engine) as session:
        queued, holding = (
            create_job(
                session=session, experiment_id=created["id"], segment_key=key, n=1, model=""
            ).id
            for key in (segment_key, "wordy")
        )
    options = GenerationOptions.from_settings(app.extensions["copybandit.settings"])
    writer = _BriefTooLongFor(GOOD, WORDY)
    run_job(engine=engine, job_id=holding, writer=lambda: writer, options=options)  # type: ignore[arg-type]
    assert [hold["numbers"]["job_id"] for hold in _audit(api, created["id"], "hold")] == [holding]
    return queued, holding, options  # type: ignore[return-value]


def test_a_job_queued_just_before_its_segment_was_held_ends_at_once_without_the_model(
    api: Any, app: Any
) -> None:
    """create_job refuses a held segment, but a job queued as another ran to find the brief too
    long was let through: it loaded the model, for a brief known to be too long, and failed."""
    queued, holding, options = _queued_then_held(api, app, "wordy")
    engine = app.extensions["copybandit.engine"]
    loads = _LoadsCounted(_BriefTooLongFor(GOOD, WORDY))
    run_job(engine=engine, job_id=queued, writer=loads, options=options)

    assert loads.loads == 0
    with Session(engine) as session:
        job, hold = (session.get_one(GenerationJob, i) for i in (queued, holding))
        assert (job.status, job.outcome) == ("failed", "too_long")
        assert job.error == (
            "PromptTooLong: segment wordy: brief held as too long for the model (5,201 tokens of "
            "4,096), not tried again"
        )
        assert job.message == "failed"
        # The job that ended last still holds the brief: one with no record lifted the hold.
        assert job.result is not None and hold.result is not None
        assert job.result["briefs_too_long"] == hold.result["briefs_too_long"]
    experiment_id = job.experiment_id
    assert [h["numbers"]["job_id"] for h in _audit(api, experiment_id, "hold")] == [holding]
    refused = api.post(
        f"/v1/experiments/{experiment_id}/generate", json={"segment": "wordy", "n": 1}
    )
    assert refused.status_code == 409


def test_a_job_for_every_segment_queued_before_a_hold_skips_the_held_segment(
    api: Any, app: Any
) -> None:
    queued, holding, options = _queued_then_held(api, app, None)
    engine = app.extensions["copybandit.engine"]
    writer = _BriefTooLongFor(GOOD, WORDY)
    sampled: list[str] = []

    def sample(messages: list[dict[str, str]], n: int, seed: int) -> list[Sample]:
        sampled.append(messages[-1]["content"])
        return _BriefTooLongFor.sample(writer, messages, n, seed)

    writer.sample = sample  # type: ignore[method-assign]
    run_job(engine=engine, job_id=queued, writer=lambda: writer, options=options)

    assert sampled and not any(WORDY in prompt for prompt in sampled)
    with Session(engine) as session:
        job, hold = (session.get_one(GenerationJob, i) for i in (queued, holding))
        assert (job.status, job.outcome) == ("failed", "too_long")
        assert job.error == (
            "PromptTooLong: segment wordy: brief held as too long for the model (5,201 tokens of "
            "4,096), not tried again"
        )
        assert job.message == "failed after storing 2 new variants in first, last"
        assert job.result is not None and hold.result is not None
        assert list(job.result["segments"]) == ["first", "last"]
        assert job.result["briefs_too_long"] == hold.result["briefs_too_long"]
    assert [h["numbers"]["job_id"] for h in _audit(api, job.experiment_id, "hold")] == [holding]


def test_a_job_for_every_segment_skips_a_segment_held_by_a_record_naming_no_model(
    app: Any, session: Session, experiment: dict[str, Any]
) -> None:
    """A hold recorded before records named their model holds as the default model's: a job for
    every segment read the model from it to say so, and failed at once (KeyError: 'model'),
    giving no segment its copy."""
    held_as_too_long(session, experiment, "tea-lovers", None)
    job = create_job(
        session=session, experiment_id=experiment["id"], segment_key=None, n=1, model=""
    )
    engine = app.extensions["copybandit.engine"]
    writer = ScriptedWriter(GOOD)

    ran = run_job(engine=engine, job_id=job.id, writer=lambda: writer, options=_options(app))  # type: ignore[arg-type]

    assert (ran.status, ran.outcome) == ("failed", "too_long")
    assert ran.error == (
        "PromptTooLong: segment tea-lovers: brief held as too long for the model (6,453 tokens "
        "of 4,096), not tried again"
    )
    assert ran.result is not None and list(ran.result["segments"]) == ["busy-parents"]


@pytest.mark.parametrize(
    "ended",
    [
        "stopped while the model loads",
        "given up while queued",
        "stopped after storing a segment",
        "cancelled while the model loads",
    ],
)
def test_a_job_for_every_segment_that_ends_unfinished_keeps_the_holds_it_skipped(
    api: Any, app: Any, ended: str
) -> None:
    """A job written off as interrupted before it stored a segment (the server stopped, its worker
    died, nothing ran it) ended with no result: the last job to end covering the held segment, it
    lifted the hold, and the next pass ordered a job that loaded the model and failed again."""
    from datetime import timedelta

    from service.generation_jobs import STOPPED, fail_interrupted_jobs, write_off
    from service.job_cancel import cancel_job
    from service.models import utcnow

    created = _wordy_experiment(api, app, also_last=True)
    (wordy_id,) = [job.segment_id for job in _lifecycle_pass(app) if job.outcome == "too_long"]
    assert [h["segment"] for h in _audit(api, created["id"], "hold")] == ["wordy"]
    engine = app.extensions["copybandit.engine"]
    with Session(engine) as session:
        job_id = create_job(
            session=session, experiment_id=created["id"], segment_key=None, n=1, model=""
        ).id
    writer = _BriefTooLongFor(GOOD, WORDY)

    def end_it() -> None:
        with Session(engine) as session:
            if ended.startswith("cancelled"):
                cancel_job(session=session, job_id=job_id, by="a test")  # type: ignore[arg-type]
            elif ended.startswith("given up"):
                later = utcnow() + timedelta(hours=2)
                assert fail_interrupted_jobs(session=session, now=later) == [job_id]
            else:
                assert write_off(engine=engine, job_ids=[job_id], reason=STOPPED) == [job_id]  # type: ignore[list-item]

    def load() -> ScriptedWriter:
        if ended.endswith("while the model loads"):
            end_it()
        return writer

    def after_first(fraction: float, message: str) -> None:
        if ended == "stopped after storing a segment" and message.startswith("segment last"):
            end_it()

    if ended == "given up while queued":
        end_it()
    run_job(
        engine=engine,
        job_id=job_id,  # type: ignore[arg-type]
        writer=load,
        options=_options(app),
        on_progress=after_first,
    )

    shown = api.get(f"/v1/jobs/{job_id}").get_json()
    assert shown["status"] == ("cancelled" if ended.startswith("cancelled") else "failed")
    stored = list((shown["result"] or {"segments": {}})["segments"])
    assert stored == (["first"] if ended == "stopped after storing a segment" else [])
    # The hold stands: no job by hand, and no order from the next pass, for the held segment.
    refused = api.post(
        f"/v1/experiments/{created['id']}/generate", json={"segment": "wordy", "n": 1}
    )
    assert refused.status_code == 409, refused.get_json()
    assert refused.get_json()["message"] == HELD_WORDY
    assert all(job.segment_id != wordy_id for job in _lifecycle_pass(app))
    assert [h["segment"] for h in _audit(api, created["id"], "hold")] == ["wordy"]


@pytest.mark.parametrize(
    ("status", "error"),
    [
        # The words each way of writing a job off has had since f8a195f (migration 0015 reads
        # them so), each followed by what becomes of its copy.
        (
            "failed",
            "interrupted: the server stopped (the lifecycle orders copy still missing again)",
        ),
        (
            "failed",
            "interrupted: the command running it was stopped (the lifecycle orders copy still "
            "missing again)",
        ),
        (
            "failed",
            "interrupted: no worker finished it within an hour; its process exited or nothing ran "
            "it (the lifecycle orders copy still missing again)",
        ),
        # One that ran to its end, finding every brief short enough, still lifts the hold.
        ("succeeded", None),
    ],
    ids=["server stopped", "command stopped", "given up", "succeeded"],
)
def test_a_job_an_older_server_wrote_off_keeps_the_holds_it_skipped(
    api: Any, app: Any, status: str, error: str | None
) -> None:
    """A server of the release before migration 0015, still serving while the new release rolls
    out, writes its jobs off as it stops (or its pass gives them up) with no outcome: read as a
    job that ran to an end, one with no result lifted the holds, and the next pass ordered a job
    that loaded the model to fail again."""
    from service.models import utcnow

    created = _wordy_experiment(api, app, also_last=False)
    (wordy_id,) = [job.segment_id for job in _lifecycle_pass(app) if job.outcome == "too_long"]
    engine = app.extensions["copybandit.engine"]
    with Session(engine) as session:
        job = create_job(
            session=session, experiment_id=created["id"], segment_key=None, n=1, model=""
        )
        # As the older server writes it: its code knows no outcome column.
        session.execute(
            sa.update(GenerationJob)
            .where(col(GenerationJob.id) == job.id)
            .values(status=status, started_at=utcnow(), finished_at=utcnow(), error=error)
        )
        session.commit()

    asked = api.post(f"/v1/experiments/{created['id']}/generate", json={"segment": "wordy", "n": 1})
    if status == "succeeded":
        assert asked.status_code == 202, asked.get_json()
        return
    assert asked.status_code == 409, asked.get_json()
    assert asked.get_json()["message"] == HELD_WORDY
    assert all(job.segment_id != wordy_id for job in _lifecycle_pass(app))
    assert [h["segment"] for h in _audit(api, created["id"], "hold")] == ["wordy"]


def test_a_job_interrupted_after_finding_a_brief_too_long_begins_no_hold(
    api: Any, app: Any
) -> None:
    """Its result, stored with a later segment's copy, named the brief: the segment was held with
    no hold row saying why. The next job to find it too long begins the hold, and writes its row."""
    from service.generation_jobs import STOPPED, write_off

    created = api.create_experiment(
        name="Wordy, then two",
        segments=[
            {"key": "wordy", "description": WORDY},
            {"key": "first", "description": "Tea drinkers."},
            {"key": "last", "description": "Coffee drinkers."},
        ],
    )
    writer = _BriefTooLongFor(GOOD, WORDY)
    app.extensions["copybandit.jobs"].writer_factory = lambda: writer
    engine = app.extensions["copybandit.engine"]
    with Session(engine) as session:
        job_id = create_job(
            session=session, experiment_id=created["id"], segment_key=None, n=1, model=""
        ).id

    def stop_at_last(fraction: float, message: str) -> None:
        if message.startswith("segment last"):
            assert write_off(engine=engine, job_ids=[job_id], reason=STOPPED) == [job_id]  # type: ignore[list-item]

    run_job(
        engine=engine,
        job_id=job_id,  # type: ignore[arg-type]
        writer=lambda: writer,
        options=_options(app),
        on_progress=stop_at_last,
    )
    stopped = api.get(f"/v1/jobs/{job_id}").get_json()
    assert list(stopped["result"]["briefs_too_long"]) == ["wordy"]
    assert _audit(api, created["id"], "hold") == []

    refused = [job for job in _lifecycle_pass(app) if job.outcome == "too_long"]
    assert [h["numbers"]["job_id"] for h in _audit(api, created["id"], "hold")] == [
        job.id for job in refused
    ]
    assert len(refused) == 1


def test_a_hold_is_one_audit_row_when_it_begins_and_the_order_that_ends_it_says_why(
    api: Any, app: Any
) -> None:
    """The segment's history never said why the lifecycle stopped ordering its copy."""
    created = _wordy_experiment(api, app, also_last=False)
    refused = _lifecycle_pass(app)[1]
    _lifecycle_pass(app)
    # Another job that finds the brief, still held, too long begins no hold.
    assert _run(api, app, created["id"], {"n": 1})["status"] == "failed"

    holds = _audit(api, created["id"], "hold")
    assert [(e["segment"], e["variant_id"]) for e in holds] == [("wordy", None)]
    assert holds[0]["reason"] == (
        "no new copy ordered until the brief or the model changes: brief too long for the model: "
        "5,201 tokens of 4,096; shorten it (the product description, brand voice or the "
        "segment's persona), or configure a model with a longer context"
    )
    assert holds[0]["numbers"] == {"job_id": refused.id, "tokens": 5201, "limit": 4096, "model": ""}

    edited = api.patch(
        f"/v1/experiments/{created['id']}/segments/wordy",
        json={"description": "Drink tea by the pot."},
    )
    assert edited.status_code == 200, edited.get_json()
    (ordered,) = _lifecycle_pass(app)
    regenerate = _audit(api, created["id"], "regenerate")[0]
    assert regenerate["numbers"]["job_id"] == ordered.id
    assert regenerate["numbers"]["hold_lifted"] == "brief"
    assert regenerate["reason"].endswith(
        "; the hold on a brief too long for the model ended: the brief changed"
    )


def _edit_wordy(api: Any, experiment_id: int, description: str) -> None:
    edited = api.patch(
        f"/v1/experiments/{experiment_id}/segments/wordy", json={"description": description}
    )
    assert edited.status_code == 200, edited.get_json()


def _order_without_running(app: Any) -> list[int]:
    """A pass whose orders nothing runs: the jobs it queued."""
    engine = app.extensions["copybandit.engine"]
    return run_lifecycle(engine=engine, model="").jobs


def _hold_trail(api: Any, experiment_id: int) -> list[tuple[str, Any]]:
    """What the segment wordy's audit trail says of its hold, oldest first: each `hold` row's job,
    and each order's note of a hold's end (None for an order with no such note)."""
    events = _audit(api, experiment_id, "hold") + _audit(api, experiment_id, "regenerate")
    return [
        (e["action"], e["numbers"].get("hold_lifted") if e["action"] == "regenerate" else None)
        for e in sorted(events, key=lambda e: e["id"])
        if e["segment"] == "wordy"
    ]


@pytest.mark.parametrize("end", ["interrupted", "cancelled"])
def test_the_end_of_a_hold_is_said_once_though_the_order_that_said_it_never_ran(
    api: Any, app: Any, end: str
) -> None:
    """A job that never ran to its end records nothing of the brief, so the hold's record still
    read as lifted, and each order after one interrupted or cancelled said the hold had just
    ended, again."""
    from service.generation_jobs import STOPPED, write_off
    from service.job_cancel import cancel_job

    created = _wordy_experiment(api, app, also_last=False)
    _lifecycle_pass(app)
    _edit_wordy(api, created["id"], "Drink tea by the pot.")
    engine = app.extensions["copybandit.engine"]
    for _ in range(2):
        (ordered,) = _order_without_running(app)
        if end == "interrupted":
            assert write_off(engine=engine, job_ids=[ordered], reason=STOPPED) == [ordered]
        else:
            with Session(engine) as session:
                cancel_job(session=session, job_id=ordered, by="a test")

    # The first order, the one that ended the hold, and the one after it.
    assert _hold_trail(api, created["id"]) == [
        ("regenerate", None),
        ("hold", None),
        ("regenerate", "brief"),
        ("regenerate", None),
    ]
    regenerates = [e for e in _audit(api, created["id"], "regenerate") if e["segment"] == "wordy"]
    assert [e["reason"].count("the hold on a brief") for e in regenerates] == [0, 1, 0]


def test_a_brief_edited_back_to_its_held_one_while_its_order_waits_is_held_again_in_the_audit(
    api: Any, app: Any
) -> None:
    """The job skipped the segment, held by the record of the brief it was edited back to, and
    wrote no `hold` row: the trail's last word on the hold was the order's "the hold ... ended",
    while no pass ordered copy."""
    created = _wordy_experiment(api, app, also_last=False)
    held_by = _lifecycle_pass(app)[1].id
    _edit_wordy(api, created["id"], "Drink tea by the pot.")
    (ordered,) = _order_without_running(app)
    _edit_wordy(api, created["id"], WORDY)

    engine = app.extensions["copybandit.engine"]
    writer = _BriefTooLongFor(GOOD, WORDY)
    job = run_job(engine=engine, job_id=ordered, writer=lambda: writer, options=_options(app))
    assert (job.status, job.outcome) == ("failed", "too_long")
    assert writer.calls == []  # held: the model is not asked

    holds = [h for h in _audit(api, created["id"], "hold") if h["segment"] == "wordy"]
    assert [h["numbers"]["job_id"] for h in holds] == [ordered, held_by]
    assert _hold_trail(api, created["id"]) == [
        ("regenerate", None),
        ("hold", None),
        ("regenerate", "brief"),
        ("hold", None),
    ]
    # Still held: no order, and no row more.
    assert _order_without_running(app) == []
    assert len(_audit(api, created["id"], "hold")) == 2
    # Its end is said anew by the next order after the next edit.
    _edit_wordy(api, created["id"], "Drink tea by the pot.")
    assert len(_order_without_running(app)) == 1
    assert _hold_trail(api, created["id"])[-1] == ("regenerate", "brief")


def test_a_brief_edited_back_after_the_order_ending_its_hold_never_ran_is_held_again_in_the_audit(
    api: Any, app: Any
) -> None:
    """The order that said the hold ended was interrupted, so no job ran to say the brief edited
    back was held again: the pass held it on the old record, and the trail's last word stayed
    "ended". The next edit's order then said nothing, the end already said."""
    from service.generation_jobs import STOPPED, write_off

    created = _wordy_experiment(api, app, also_last=False)
    held_by = _lifecycle_pass(app)[1].id
    _edit_wordy(api, created["id"], "Drink tea by the pot.")
    (ordered,) = _order_without_running(app)
    engine = app.extensions["copybandit.engine"]
    assert write_off(engine=engine, job_ids=[ordered], reason=STOPPED) == [ordered]
    _edit_wordy(api, created["id"], WORDY)

    assert _order_without_running(app) == []
    assert _hold_trail(api, created["id"])[-2:] == [("regenerate", "brief"), ("hold", None)]
    holds = [h for h in _audit(api, created["id"], "hold") if h["segment"] == "wordy"]
    assert holds[0]["numbers"] == {**holds[1]["numbers"], "job_id": held_by}
    assert holds[0]["reason"] == holds[1]["reason"]
    # Said once: the passes after it, still held, write no row more.
    assert _order_without_running(app) == []
    assert len(_audit(api, created["id"], "hold")) == 2
    _edit_wordy(api, created["id"], "Drink tea by the pot.")
    assert len(_order_without_running(app)) == 1
    assert _hold_trail(api, created["id"])[-1] == ("regenerate", "brief")


HELD_WORDY = (
    "segment 'wordy' gets no new copy: brief too long for the model: 5,201 tokens of 4,096; "
    "shorten it (the product description, brand voice or the segment's persona), or configure a "
    "model with a longer context"
)


def _jobs(app: Any) -> int:
    with Session(app.extensions["copybandit.engine"]) as session:
        return session.exec(sa.select(sa.func.count()).select_from(GenerationJob)).one()[0]


def test_a_job_by_hand_for_a_held_brief_is_refused_until_the_brief_changes(
    api: Any, app: Any
) -> None:
    """It ran, loaded the model and failed as the last job had."""
    created = _wordy_experiment(api, app, also_last=False)
    _lifecycle_pass(app)
    before = _jobs(app)
    generate = f"/v1/experiments/{created['id']}/generate"

    refused = api.post(generate, json={"segment": "wordy", "n": 1})
    assert refused.status_code == 409
    assert refused.get_json() == {
        "error": "brief_too_long",
        "field": "segment",
        "message": HELD_WORDY,
    }
    assert _jobs(app) == before
    # A job for every segment still runs: "first" can get copy.
    assert _run(api, app, created["id"], {"n": 1})["result"]["segments"] == {"first": mock.ANY}

    edited = api.patch(
        f"/v1/experiments/{created['id']}/segments/wordy",
        json={"description": "Drink tea by the pot."},
    )
    assert edited.status_code == 200, edited.get_json()
    assert _run(api, app, created["id"], {"segment": "wordy", "n": 1})["status"] == "succeeded"


def test_a_job_by_hand_for_a_held_brief_runs_on_a_model_with_a_longer_context(
    api: Any, app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = _wordy_experiment(api, app, also_last=False)
    _lifecycle_pass(app, _server_on(app, "/models/short", _BriefTooLongFor(GOOD, WORDY)))
    monkeypatch.setitem(
        app.extensions, "copybandit.jobs", _server_on(app, "/models/short", ScriptedWriter(GOOD))
    )
    generate = f"/v1/experiments/{created['id']}/generate"
    assert api.post(generate, json={"segment": "wordy", "n": 1}).status_code == 409

    monkeypatch.setitem(
        app.extensions, "copybandit.jobs", _server_on(app, "/models/longer", ScriptedWriter(GOOD))
    )
    assert _run(api, app, created["id"], {"segment": "wordy", "n": 1})["status"] == "succeeded"


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            ("one", "two"),
            "no segment gets new copy: each one's brief is too long for the model; shorten them "
            "(the product description, brand voice or each segment's persona), or configure a "
            "model with a longer context",
        ),
        (("one",), HELD_WORDY.replace("'wordy'", "'one'")),
    ],
    ids=["two segments", "one segment"],
)
def test_a_job_by_hand_for_every_segment_is_refused_when_each_brief_is_held(
    api: Any, app: Any, keys: tuple[str, ...], message: str
) -> None:
    """The request names no segment, so the refusal names no field: it named `segment`, which
    the request had not sent."""
    persona = "茶" * 1000
    created = api.create_experiment(
        name="All wordy",
        segments=[{"key": key, "description": persona + key} for key in keys],
    )
    app.extensions["copybandit.jobs"].writer_factory = lambda: _BriefTooLongFor(GOOD, persona)
    _lifecycle_pass(app)
    before = _jobs(app)

    refused = api.post(f"/v1/experiments/{created['id']}/generate", json={"n": 1})
    assert refused.status_code == 409
    assert refused.get_json() == {"error": "brief_too_long", "message": message}
    assert _jobs(app) == before


def test_a_job_failing_many_briefs_names_whole_segments_then_how_many_more(
    api: Any, app: Any
) -> None:
    """Cut at the column's 2,000 characters, 25 or so such segments ended mid-name."""
    persona = "茶" * 50
    keys = [f"wordy-{i:02}" for i in range(30)]
    created = api.create_experiment(
        name="Wordier", segments=[{"key": key, "description": persona} for key in keys]
    )
    app.extensions["copybandit.jobs"].writer_factory = lambda: _BriefTooLongFor(GOOD, persona)
    job = _run(api, app, created["id"], {"n": 1})
    error = job["error"]
    assert job["status"] == "failed" and len(error) <= 2000
    named = error.removeprefix("PromptTooLong: ").split("; ")
    head, tail = named[:-1], named[-1]
    shown = [*head, tail.rsplit(" and ", 1)[0]]
    assert all(
        part == f"segment {key}: the prompt is 5,201 tokens, and at most 4,096 fit"
        for part, key in zip(shown, keys, strict=False)
    )
    assert tail.endswith(f" and {len(keys) - len(shown)} more"), tail
    assert sorted(job["result"]["briefs_too_long"]) == keys


class _ReadsItsJob(ScriptedWriter):
    """Notes what the job's row says while each sampling round runs, as a client polling
    GET /v1/jobs/<id> would see it."""

    def __init__(self, lines: list[str], engine: sa.Engine) -> None:
        super().__init__(lines)
        self.engine = engine
        self.shown: list[str] = []

    def sample(self, messages: list[dict[str, str]], n: int, seed: int) -> list[Sample]:
        with self.engine.connect() as connection:
            self.shown.append(connection.execute(sa.select(GenerationJob.message)).scalar_one())
        return super().sample(messages, n, seed)


def test_a_job_says_which_segment_it_samples_while_the_first_round_runs(api: Any, app: Any) -> None:
    created = api.create_experiment(name="Two segments")
    writer = _ReadsItsJob(GOOD, app.extensions["copybandit.engine"])
    app.extensions["copybandit.jobs"].writer_factory = lambda: writer
    job = _run(api, app, created["id"], {"n": 1})

    assert job["status"] == "succeeded"
    # Before, the first round showed "loading the model (about 40 s ...)", long loaded, and the
    # second segment's first round showed the first segment's last ("round 1/4, 1/1 accepted").
    assert writer.shown == [
        "segment tea-lovers: sampling round 1/4",
        "segment busy-parents: sampling round 1/4",
    ]


def test_a_segment_that_has_its_copy_before_its_last_round_counts_as_done(
    app: Any, experiment: dict[str, Any], writer: ScriptedWriter
) -> None:
    engine = app.extensions["copybandit.engine"]
    with Session(engine, expire_on_commit=False) as session:
        job = create_job(
            session=session, experiment_id=experiment["id"], segment_key=None, n=2, model=""
        )
    reported: list[float] = []

    run_job(
        engine=engine,
        job_id=job.id,  # type: ignore[arg-type]
        writer=lambda: writer,
        options=_options(app),
        on_progress=lambda fraction, message: reported.append(fraction),
    )

    assert len(writer.calls) == 2  # one round of four per segment was enough
    # Before: 0.125 after the first segment, and the command's bar ended the job at 0.625.
    assert reported == [0.0, 0.5, 0.5, 1.0]


class OneLinePerRound(ScriptedWriter):
    """One new line a round, the same three in each segment: a segment of n=3 takes three."""

    def sample(self, messages: list[dict[str, str]], n: int, seed: int) -> list[Sample]:
        line = self.lines[len(self.calls) % 3]
        self.calls.append(seed)
        return [Sample(text=line, finished=True, logprob=-1.0)]


def _job_for(app: Any, experiment_id: int, segment: str | None, n: int) -> GenerationJob:
    with Session(app.extensions["copybandit.engine"], expire_on_commit=False) as session:
        return create_job(
            session=session, experiment_id=experiment_id, segment_key=segment, n=n, model=""
        )


@pytest.mark.parametrize("segment", ["tea-lovers", None])
def test_a_running_job_shows_the_lines_accepted_in_the_segment_it_is_writing(
    api: Any, app: Any, experiment: dict[str, Any], segment: str | None
) -> None:
    """A segment's lines are stored when it ends, so a one-segment job had no lines to show
    (result null, the dashboard's "0 of 3 lines") to its end, while its message said 2/3
    accepted. Its JSON now names the segment it is writing and its lines accepted so far."""
    job = _job_for(app, experiment["id"], segment, n=3)
    seen: list[tuple[str, Any, list[str]]] = []

    def look(fraction: float, message: str) -> None:
        shown = api.get(f"/v1/jobs/{job.id}").get_json()
        stored = sorted((shown["result"] or {}).get("segments", {}))
        seen.append((shown["message"], shown["writing"], stored))

    run_job(
        engine=app.extensions["copybandit.engine"],
        job_id=job.id,  # type: ignore[arg-type]
        writer=lambda: OneLinePerRound(GOOD),
        options=_options(app),
        on_progress=look,
    )

    def rounds(key: str, stored: list[str]) -> list[tuple[str, Any, list[str]]]:
        return [
            (f"segment {key}: sampling round 1/4", {"segment": key, "accepted": 0}, stored),
            *(
                (f"segment {key}: round {k}/4, {k}/3 accepted", {"segment": key, "accepted": k}, [])
                for k in (1, 2, 3)
            ),
        ]

    expected = rounds("tea-lovers", [])
    if segment is None:
        expected += [
            (message, writing, ["tea-lovers"])
            for message, writing, _ in rounds("busy-parents", ["tea-lovers"])
        ]
    assert seen == expected
    done = api.get(f"/v1/jobs/{job.id}").get_json()
    assert done["status"] == "succeeded" and done["writing"] is None
    assert len(done["result"]["segments"]["tea-lovers"]["variant_ids"]) == 3


@pytest.mark.parametrize("end", ["cancelled", "failed", "interrupted"])
def test_a_job_ended_mid_segment_writes_no_segment(
    api: Any, app: Any, experiment: dict[str, Any], end: str
) -> None:
    """The lines it had accepted there are thrown away: its row no longer counts them."""
    from datetime import timedelta

    from service.generation_jobs import fail_interrupted_jobs
    from service.models import utcnow

    engine = app.extensions["copybandit.engine"]
    job = _job_for(app, experiment["id"], "tea-lovers", n=3)

    class _FailsInRoundThree(OneLinePerRound):
        def sample(self, messages: list[dict[str, str]], n: int, seed: int) -> list[Sample]:
            if end == "failed" and len(self.calls) == 2:
                raise RuntimeError("the model fell over")
            return super().sample(messages, n, seed)

    def end_at_two(fraction: float, message: str) -> None:
        if not message.endswith("2/3 accepted"):
            return
        if end == "cancelled":
            assert api.post(f"/v1/jobs/{job.id}/cancel").status_code == 200
        elif end == "interrupted":
            with Session(engine) as session:
                later = utcnow() + timedelta(hours=2)
                assert fail_interrupted_jobs(session=session, now=later) == [job.id]

    run_job(
        engine=engine,
        job_id=job.id,  # type: ignore[arg-type]
        writer=lambda: _FailsInRoundThree(GOOD),
        options=_options(app),
        on_progress=end_at_two,
    )

    shown = api.get(f"/v1/jobs/{job.id}").get_json()
    assert shown["status"] == {"interrupted": "failed"}.get(end, end)
    assert shown["writing"] is None and shown["result"] is None
    with Session(engine) as session:
        row = session.get_one(GenerationJob, job.id)
        assert (row.writing_segment_id, row.writing_accepted) == (None, 0)


def test_a_runner_keeps_nothing_of_the_jobs_it_finished(
    api: Any, app: Any, experiment: dict[str, Any], writer: ScriptedWriter
) -> None:
    runner = app.extensions["copybandit.jobs"]
    with Session(app.extensions["copybandit.engine"]) as session:
        job_ids = [
            create_job(
                session=session,
                experiment_id=experiment["id"],
                segment_key="tea-lovers",
                n=1,
                model="",
            ).id
            for _ in range(3)
        ]
    for job_id in job_ids:
        runner.submit(job_id)
    runner.join(timeout=30)
    gc.collect()

    # Before, the runner kept every finished job and its result: a worker's memory only grew.
    # type() is, not isinstance: isinstance on every object touched torch's deprecated aliases.
    alive = [o for o in gc.get_objects() if type(o) is GenerationJob and o.id in job_ids]
    assert alive == []
    assert {api.get(f"/v1/jobs/{job_id}").get_json()["status"] for job_id in job_ids} == {
        "succeeded"
    }


@pytest.mark.parametrize("database_url", ["postgres"] if PG_URL else [], indirect=True)
def test_a_job_queued_before_a_database_restart_still_runs(
    app_config: dict[str, Any],
    session: Session,
    experiment: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A job waits its turn behind others for minutes. A restart meanwhile ended the pooled
    connections, and the job's first read met one: the job said queued for the hour until a pass
    gave it up, its copy was not ordered again until then, and the worker logged a traceback."""
    served = create_app(
        app_config | {"database_url": named(app_config["database_url"], "jobs_under_test")}
    )
    runner = served.extensions["copybandit.jobs"]
    runner.writer_factory = lambda: ScriptedWriter(GOOD)
    engine = served.extensions["copybandit.engine"]
    try:
        with Session(engine) as pooled:
            job_id = create_job(
                session=pooled,
                experiment_id=experiment["id"],
                segment_key="tea-lovers",
                n=2,
                model="",
            ).id
        end_backends(session, "jobs_under_test")
        session.commit()

        runner.submit(job_id)
        runner.join(timeout=30)

        job = session.get(GenerationJob, job_id, populate_existing=True)
        assert job is not None and job.status == "succeeded", job
        assert not [r for r in caplog.records if r.exc_info]
    finally:
        engine.dispose()


@pytest.mark.parametrize("database_url", ["postgres"] if PG_URL else [], indirect=True)
def test_a_job_holds_no_transaction_open_while_the_model_samples(
    app_config: dict[str, Any], session: Session, experiment: dict[str, Any]
) -> None:
    """The job read the segment's copy and brief, then sampled a round with that transaction
    still open: PostgreSQL's idle_in_transaction_session_timeout, which production servers set,
    ended the connection under a round that ran longer, and the job failed at its first progress
    write; meanwhile the open snapshot held back vacuum."""
    engine = sa.create_engine(named(app_config["database_url"], "job_sampling_under_test"))
    seen: list[str] = []

    class Watching(ScriptedWriter):
        def sample(self, messages: list[dict[str, str]], n: int, seed: int) -> list[Sample]:
            seen.extend(
                session.execute(
                    sa.text(
                        "SELECT state FROM pg_stat_activity"
                        " WHERE application_name = 'job_sampling_under_test'"
                    )
                ).scalars()
            )
            session.commit()  # the next look reads pg_stat_activity afresh
            return super().sample(messages, n, seed)

    job = create_job(
        session=session, experiment_id=experiment["id"], segment_key="tea-lovers", n=2, model=""
    )
    try:
        ran = run_job(
            engine=engine,
            job_id=job.id,  # type: ignore[arg-type]
            writer=lambda: Watching(GOOD),
            options=GenerationOptions.from_settings(load_settings(app_config)),
        )
    finally:
        engine.dispose()

    assert ran.status == "succeeded", ran.error
    assert seen and "idle in transaction" not in seen


@pytest.mark.parametrize("database_url", ["postgres"] if PG_URL else [], indirect=True)
def test_a_job_whose_connection_is_lost_while_the_model_samples_carries_on(
    app_config: dict[str, Any],
    session: Session,
    experiment: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A PostgreSQL restart, or a proxy dropping the connection, while the model sampled a round:
    the progress write after it met the ended connection, and the job failed, because that write
    is also its look at whether it was given up. It is written again on a fresh connection."""
    served = create_app(
        app_config | {"database_url": named(app_config["database_url"], "job_cut_off_under_test")}
    )
    engine = served.extensions["copybandit.engine"]
    ended: list[bool] = []

    class CutOff(ScriptedWriter):
        def sample(self, messages: list[dict[str, str]], n: int, seed: int) -> list[Sample]:
            if not ended:
                ended.extend(end_backends(session, "job_cut_off_under_test"))
                session.commit()
            return super().sample(messages, n, seed)

    job = create_job(
        session=session, experiment_id=experiment["id"], segment_key="tea-lovers", n=2, model=""
    )
    try:
        ran = run_job(
            engine=engine,
            job_id=job.id,  # type: ignore[arg-type]
            writer=lambda: CutOff(GOOD),
            options=GenerationOptions.from_settings(load_settings(app_config)),
        )
    finally:
        engine.dispose()

    assert ended == [True]
    assert (ran.status, ran.error, ran.progress) == ("succeeded", None, 1.0)
    assert len(ran.result["segments"]["tea-lovers"]["variant_ids"]) == 2  # type: ignore[index]
    assert [r.getMessage() for r in caplog.records if "progress not written" in r.getMessage()]
    assert not [r for r in caplog.records if r.exc_info]


def test_a_job_given_up_as_interrupted_before_it_ran_is_not_run(
    api: Any, app: Any, session: Session, experiment: dict[str, Any], writer: ScriptedWriter
) -> None:
    """A job queued behind others for over an hour was failed by a pass, which ordered its copy
    again; when its turn came it ran anyway, stored its copy too, and said it succeeded while its
    error still said interrupted."""
    from datetime import timedelta

    from service.generation_jobs import fail_interrupted_jobs
    from service.metrics import metrics

    engine = app.extensions["copybandit.engine"]
    job = create_job(
        session=session, experiment_id=experiment["id"], segment_key="tea-lovers", n=2, model=""
    )
    now = job.created_at
    session.execute(
        sa.update(GenerationJob)
        .where(col(GenerationJob.id) == job.id)
        .values(created_at=job.created_at - timedelta(hours=2))
    )
    session.commit()
    session.expire_all()
    failed = metrics().generation_jobs.labels("failed")
    before = failed._value.get()
    variants_before = len(_variants(api, experiment["id"], "tea-lovers"))

    assert fail_interrupted_jobs(session=session, now=now) == [job.id]
    # The failures an alert on failed jobs is most for count too.
    assert failed._value.get() == before + 1
    ran = run_job(
        engine=engine,
        job_id=job.id,  # type: ignore[arg-type]
        writer=lambda: writer,
        options=GenerationOptions.from_settings(app.extensions["copybandit.settings"]),
    )

    assert ran.status == "failed" and ran.error is not None and ran.error.startswith("interrupted")
    assert writer.calls == []
    assert len(_variants(api, experiment["id"], "tea-lovers")) == variants_before


def test_a_job_that_waited_its_turn_is_not_given_up_while_it_runs(
    api: Any, app: Any, session: Session, experiment: dict[str, Any], writer: ScriptedWriter
) -> None:
    """Counted from its queueing, a job that had waited most of an hour was failed mid-run, the
    pass ordered its copy again, and the job then delivered its own and flipped to succeeded."""
    from datetime import timedelta

    from service.generation_jobs import fail_interrupted_jobs
    from service.metrics import metrics

    job = create_job(
        session=session, experiment_id=experiment["id"], segment_key="tea-lovers", n=2, model=""
    )
    queued_at = job.created_at
    started = queued_at + timedelta(minutes=59)
    session.execute(
        sa.update(GenerationJob)
        .where(col(GenerationJob.id) == job.id)
        .values(status="running", started_at=started, updated_at=started)
    )
    session.commit()
    # Two hours after it was queued, one after it started: still its worker's.
    assert (
        fail_interrupted_jobs(session=session, now=queued_at + timedelta(hours=1, minutes=58)) == []
    )
    # Given up an hour after its last write, it stays given up when its worker ends after all.
    assert fail_interrupted_jobs(session=session, now=started + timedelta(hours=1, minutes=1)) == [
        job.id
    ]
    succeeded = metrics().generation_jobs.labels("succeeded")
    before = succeeded._value.get()
    session.execute(
        sa.update(GenerationJob).where(col(GenerationJob.id) == job.id).values(status="running")
    )
    session.commit()
    ended = _run_given_up_meanwhile(app, job.id, writer)  # type: ignore[arg-type]
    assert ended.status == "failed" and ended.error is not None
    assert ended.error.startswith("interrupted") and succeeded._value.get() == before


def test_a_running_job_is_given_up_an_hour_after_its_last_progress_not_its_start(
    session: Session, experiment: dict[str, Any]
) -> None:
    """Counted from its start, a job whose model took over an hour was given up while it still
    wrote its progress, and the pass ordered its copy again."""
    from datetime import timedelta

    from service.generation_jobs import fail_interrupted_jobs

    job = create_job(
        session=session, experiment_id=experiment["id"], segment_key="tea-lovers", n=2, model=""
    )
    started = job.created_at
    last_progress = started + timedelta(hours=2)
    session.execute(
        sa.update(GenerationJob)
        .where(col(GenerationJob.id) == job.id)
        .values(status="running", started_at=started, updated_at=last_progress)
    )
    session.commit()

    assert fail_interrupted_jobs(session=session, now=last_progress + timedelta(minutes=59)) == []
    assert fail_interrupted_jobs(session=session, now=last_progress + timedelta(minutes=61)) == [
        job.id
    ]


def test_a_job_that_writes_its_progress_while_a_pass_decides_is_not_given_up(
    app: Any, session: Session, experiment: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import timedelta

    from service import generation_jobs
    from service.generation_jobs import _progress, fail_interrupted_jobs

    job = create_job(
        session=session, experiment_id=experiment["id"], segment_key="tea-lovers", n=2, model=""
    )
    silent_since = job.created_at - timedelta(hours=2)
    session.execute(
        sa.update(GenerationJob)
        .where(col(GenerationJob.id) == job.id)
        .values(status="running", started_at=silent_since, updated_at=silent_since)
    )
    session.commit()
    decide = generation_jobs.interrupted

    def worker_writes_meanwhile(found: GenerationJob, now: Any) -> bool:
        with Session(app.extensions["copybandit.engine"]) as worker:
            running = worker.get(GenerationJob, found.id)
            assert running is not None
            _progress(worker, running, progress=0.5, message="segment tea-lovers: round 2/4")
        return decide(found, now)

    monkeypatch.setattr(generation_jobs, "interrupted", worker_writes_meanwhile)

    assert fail_interrupted_jobs(session=session, now=job.created_at) == []
    session.expire_all()
    assert session.get(GenerationJob, job.id).status == "running"  # type: ignore[union-attr]


def test_a_job_on_order_is_judged_by_its_row_as_it_is_not_as_the_session_first_read_it(
    app: Any, session: Session, experiment: dict[str, Any]
) -> None:
    """A pass's session keeps what it read (expire_on_commit=False): while it still held a job
    read earlier, a later read kept that job's old progress, so a job its worker went on writing
    would look silent for an hour, be left out of the copy on order and its copy ordered twice."""
    from datetime import timedelta

    from service.generation_jobs import _progress, jobs_on_order
    from service.models import Segment

    job = create_job(
        session=session, experiment_id=experiment["id"], segment_key="tea-lovers", n=2, model=""
    )
    first_read = job.created_at
    session.execute(
        sa.update(GenerationJob)
        .where(col(GenerationJob.id) == job.id)
        .values(status="running", updated_at=first_read - timedelta(minutes=59))
    )
    session.commit()
    engine = app.extensions["copybandit.engine"]
    with Session(engine, expire_on_commit=False) as passing:
        tea = passing.get_one(Segment, job.segment_id)
        held = jobs_on_order(session=passing, segments=[tea], now=first_read)[job.segment_id]  # type: ignore[index]
        assert [j.id for j in held] == [job.id]
        with Session(engine) as worker:
            running = worker.get_one(GenerationJob, job.id)
            _progress(worker, running, progress=0.5, message="segment tea-lovers: round 2/4")
        later = first_read + timedelta(minutes=2)
        on_order = jobs_on_order(session=passing, segments=[tea], now=later)[job.segment_id]  # type: ignore[index]
    assert [j.id for j in on_order] == [job.id]


@pytest.mark.parametrize("given_up", ["while the model writes", "after its last progress"])
def test_a_job_given_up_while_it_runs_stops_and_stores_nothing_more(
    api: Any, app: Any, experiment: dict[str, Any], writer: ScriptedWriter, given_up: str
) -> None:
    """A job a pass gave up as interrupted went on: it stored its copy after the pass had ordered
    it again, and its progress wrote over the row's interrupted message."""
    from datetime import timedelta

    from service.generation_jobs import INTERRUPTED, fail_interrupted_jobs, interruption
    from service.models import utcnow

    engine = app.extensions["copybandit.engine"]
    with Session(engine) as session:
        job_id = create_job(
            session=session, experiment_id=experiment["id"], segment_key="tea-lovers", n=2, model=""
        ).id
    before = _variants(api, experiment["id"], "tea-lovers")

    def a_pass_gives_it_up(*_: Any) -> None:
        with Session(engine) as session:
            later = utcnow() + timedelta(hours=2)
            assert fail_interrupted_jobs(session=session, now=later) == [job_id]

    sample = writer.sample

    def give_up_then_sample(*args: Any) -> list[Sample]:
        if given_up == "while the model writes":
            a_pass_gives_it_up()
        return sample(*args)

    writer.sample = give_up_then_sample  # type: ignore[method-assign]
    ended = run_job(
        engine=engine,
        job_id=job_id,  # type: ignore[arg-type]
        writer=lambda: writer,
        options=GenerationOptions.from_settings(app.extensions["copybandit.settings"]),
        on_progress=a_pass_gives_it_up if given_up == "after its last progress" else None,
    )

    said = interruption(INTERRUPTED, by_lifecycle=False)
    assert (ended.status, ended.message, ended.error) == ("failed", said, said)
    assert len(writer.calls) == 1
    assert _variants(api, experiment["id"], "tea-lovers") == before


def _run_given_up_meanwhile(app: Any, job_id: int, writer: ScriptedWriter) -> GenerationJob:
    """Run the job's work as a worker that had started it would, with the job given up as
    interrupted while the model wrote."""
    from service.generation_jobs import INTERRUPTED, _finish, _generate

    engine = app.extensions["copybandit.engine"]
    options = GenerationOptions.from_settings(app.extensions["copybandit.settings"])
    with Session(engine, expire_on_commit=False) as own:
        job = own.get(GenerationJob, job_id)
        assert job is not None
        result: dict[str, Any] = {"segments": {}}
        _generate(own, job, lambda: writer, options, None, result, [])
        own.execute(
            sa.update(GenerationJob)
            .where(col(GenerationJob.id) == job_id)
            .values(status="failed", error=INTERRUPTED)
        )
        own.commit()
        _finish(own, job, status="succeeded", result=result, message="done")
        return job


# A process whose job is stuck in the model load exits: the job thread is a daemon, and the jobs
# it held are failed on the way out. The writer never returns, so a process that waited for its
# job never ended (gunicorn killed such a worker after 30 s, its job left "running" for an hour).
EXIT_WHILE_LOADING = """
import sys, threading
from service import create_app
from service.generation_jobs import create_job
from sqlmodel import Session
app = create_app({"database_url": sys.argv[1], "scheduler": "off", "env": "test"})
loading = threading.Event()
def never_loads():
    loading.set()
    threading.Event().wait()
runner = app.extensions["copybandit.jobs"]
runner.writer_factory = never_loads
with Session(app.extensions["copybandit.engine"]) as session:
    for _ in range(2):
        job = create_job(
            session=session, experiment_id=int(sys.argv[2]), segment_key="tea-lovers", n=1, model=""
        )
        print(job.id)
        runner.submit(job.id)
loading.wait()
"""


def test_a_process_stopping_mid_job_exits_and_fails_the_jobs_it_held(
    api: Any, app: Any, database_url: str, experiment: dict[str, Any]
) -> None:
    from service.generation_jobs import STOPPED, interruption

    held = subprocess.run(
        [sys.executable, "-c", EXIT_WHILE_LOADING, database_url, str(experiment["id"])],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,  # only so that the bug fails the test instead of hanging it
    ).stdout.split()

    jobs = [api.get(f"/v1/jobs/{job_id}").get_json() for job_id in held]
    # The one loading the model and the one waiting behind it, both started by hand.
    said = interruption(STOPPED, by_lifecycle=False)
    assert [(job["status"], job["error"]) for job in jobs] == [("failed", said)] * 2


@pytest.mark.parametrize(
    ("value", "banned"),
    [
        (None, DEFAULT_BANNED_PHRASES),
        ("", DEFAULT_BANNED_PHRASES),
        (" speed , fast,", ("speed", "fast")),
        # A value naming no phrase chose none: it brought back the default list.
        (",", ()),
        (" , ", ()),
    ],
)
def test_banned_phrases_replace_the_default_list(
    value: str | None, banned: tuple[str, ...]
) -> None:
    environ = {} if value is None else {"COPYBANDIT_BANNED_PHRASES": value}
    settings = load_settings(environ=environ).validate()
    assert GenerationOptions.from_settings(settings).lint.banned_phrases == banned


class _Terminal:
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("log_format", "terminal", "wanted"),
    [("text", True, True), ("json", True, False), ("text", False, False)],
)
def test_the_model_shows_progress_bars_only_to_a_terminal_reading_text_logs(
    monkeypatch: pytest.MonkeyPatch, log_format: str, terminal: bool, wanted: bool
) -> None:
    """JSON logs are one object per line: the first start's tqdm bars came between them."""
    if terminal:
        monkeypatch.setattr(sys, "stderr", _Terminal())
    settings = load_settings({"log_format": log_format})
    assert progress_bars_wanted(settings) is wanted


def test_the_model_samples_for_the_configured_longest_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """COPYBANDIT_COPY_MAX_CHARS sizes the token budget: the lint's longest line is not cut."""
    monkeypatch.setattr("generation.model.load_model", lambda config: _NoModel())
    settings = load_settings({"copy_max_chars": 300})
    writer = default_writer(settings)
    assert writer.sampling.max_copy_chars == 300  # type: ignore[attr-defined]


class _NoModel:
    model_id = "none"


# A worker's end as gunicorn's spawn_worker runs it: sys.exit(0), then worker_exit in the finally,
# while the job's writer is inside torch's C++ (a matrix product releases the GIL).
_WORKER_STOPPING_MID_JOB = """
import sys, threading
import torch
from service import create_app
from service.gunicorn import worker_exit

class InsideTorch:
    model_id = "inside-torch"
    def sample(self, messages, n, seed):
        product = torch.randn(1500, 1500)
        started.set()
        while True:
            product = torch.mm(product, product).clamp_(-1, 1)

started = threading.Event()
app = create_app({"database_url": sys.argv[1], "env": "test", "scheduler": "off"})
jobs = app.extensions["copybandit.jobs"]
jobs.writer_factory = InsideTorch
jobs.submit(int(sys.argv[2]))
assert started.wait(timeout=60)
try:
    sys.exit(0)
finally:
    worker_exit(None, None)
"""


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_worker_stopped_mid_job_exits_cleanly_with_the_job_written_off(
    app: Any, session: Session, experiment: dict[str, Any]
) -> None:
    """Stopping serve while a job ran ended the worker with SIGABRT ('terminate called without an
    active exception'): the interpreter finalized under the generation thread inside torch."""
    job = create_job(
        session=session, experiment_id=experiment["id"], segment_key="tea-lovers", n=2, model=""
    )
    url = app.extensions["copybandit.settings"].database_url
    worker = subprocess.run(
        [sys.executable, "-c", _WORKER_STOPPING_MID_JOB, url, str(job.id)],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert worker.returncode == 0, worker.stderr[-2000:]
    assert "terminate called" not in worker.stderr
    session.expire_all()
    stopped = session.get(GenerationJob, job.id)
    assert stopped is not None and stopped.status == "failed"
    assert stopped.error is not None and stopped.error.startswith("interrupted: the server stopped")


def test_a_server_logs_what_each_job_it_ran_stored(
    api: Any, app: Any, experiment: dict[str, Any], writer: ScriptedWriter, caplog: Any
) -> None:
    """Live, the log said '3 generation jobs ordered' and then nothing of them: only a failure
    was logged, so an operator could not tell from it whether the model wrote anything."""
    with caplog.at_level("INFO", logger="service.generation_jobs"):
        job = _run(api, app, experiment["id"], {"n": 2})
    assert (
        f"generation job {job['id']} for experiment {experiment['id']}: done: 4 new variants "
        "(tea-lovers 2, busy-parents 2)"
    ) in caplog.messages


def test_a_jobs_log_line_names_ten_segments_then_how_many_more() -> None:
    from service.generation_jobs import _succeeded

    segments = {f"s{i}": {"variant_ids": [i]} for i in range(12)}
    job = GenerationJob(
        id=7, experiment_id=3, message="done: 12 new variants", result={"segments": segments}
    )
    named = ", ".join(f"s{i} 1" for i in range(10))
    assert _succeeded(job) == (
        f"generation job 7 for experiment 3: done: 12 new variants ({named}, and 2 more segments)"
    )
