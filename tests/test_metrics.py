"""GET /metrics: Prometheus text with decisions, events, responses, latency, lifecycle, jobs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from service.metrics import MULTIPROC_ENV


def _value(text: str, sample: str) -> float:
    match = re.search(rf"^{re.escape(sample)} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_metrics_count_decisions_events_and_responses(
    api: Any, client: Any, experiment: dict[str, Any]
) -> None:
    before = client.get("/metrics").get_data(as_text=True)
    decision = api.decide(experiment["id"])
    event = {"impression_id": decision["impression_id"], "type": "conversion", "event_id": "m1"}
    api.post("/v1/events", json=event, key="serve")
    api.post("/v1/events", json=event, key="serve")
    api.post("/v1/decide", json={"experiment": 0}, key="serve")  # a 400

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    after = response.get_data(as_text=True)

    def delta(sample: str) -> float:
        return _value(after, sample) - _value(before, sample)

    assert delta("copybandit_decisions_total") == 1
    assert delta('copybandit_events_total{outcome="accepted"}') == 1
    assert delta('copybandit_events_total{outcome="duplicate"}') == 1
    assert delta('copybandit_http_responses_total{code="400"}') >= 1
    assert delta('copybandit_request_seconds_count{route="/v1/decide"}') == 2
    for name in ("copybandit_lifecycle_actions", "copybandit_generation_jobs"):
        assert f"# TYPE {name}_total counter" in after


def test_metrics_name_their_content_type_once(client: Any) -> None:
    # Flask appended its own charset to prometheus_client's, which has one: "text/plain;
    # version=1.0.0; charset=utf-8; charset=utf-8". Go's mime.ParseMediaType refuses a parameter
    # named twice, and Prometheus 3 fails a scrape whose Content-Type it cannot parse.
    content_type = client.get("/metrics").headers["Content-Type"]
    assert content_type == CONTENT_TYPE_LATEST
    names = [part.split("=")[0].strip() for part in content_type.split(";")[1:]]
    assert len(names) == len(set(names)), content_type


def test_metrics_need_no_key_and_show_no_copy_or_ids(
    api: Any, client: Any, experiment: dict[str, Any]
) -> None:
    api.decide(experiment["id"], user_id="someone@example.com")
    text = client.get("/metrics").get_data(as_text=True)
    assert "someone@example.com" not in text and "Aurora" not in text


SCRAPE_AS_A_WORKER = """
import sys
from service import create_app
app = create_app({"database_url": sys.argv[1], "scheduler": "off"})
sys.stdout.write(app.test_client().get("/metrics").get_data(as_text=True))
"""


def test_under_serve_every_outcome_is_listed_at_zero_before_it_happens(tmp_path: Path) -> None:
    # In prometheus_client's multiprocess mode (each worker of `copybandit serve`) a labelled
    # metric is listed only once a label has been used: an alert on failed generation jobs or
    # rejected events saw no series at all, not 0. A fresh process, since the mode is chosen
    # when the metrics are made.
    env = {**os.environ, MULTIPROC_ENV: str(tmp_path)}
    scraped = subprocess.run(
        [sys.executable, "-c", SCRAPE_AS_A_WORKER, f"sqlite:///{tmp_path}/unused.db"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    expected = [
        *(
            f'copybandit_events_total{{outcome="{o}"}}'
            for o in ("accepted", "duplicate", "rejected")
        ),
        *(
            f'copybandit_generation_jobs_total{{status="{s}"}}'
            for s in ("succeeded", "failed", "cancelled")
        ),
        *(
            f'copybandit_lifecycle_actions_total{{action="{a}"}}'
            for a in ("pause", "retire", "declare_winner", "regenerate", "discount")
        ),
        "copybandit_decisions_total",
    ]
    for sample in expected:
        assert re.search(rf"^{re.escape(sample)} 0\.0$", scraped, re.MULTILINE), (sample, scraped)


def test_every_action_a_pass_counts_is_listed_up_front() -> None:
    # The list of pre-made labels had left out "discount", which every discounting pass counts.
    from service.lifecycle import AUDIT_ACTIONS
    from service.metrics import LIFECYCLE_ACTIONS

    # A new variant's prior, an edit by a person and a job's hold are not a pass's actions.
    assert set(LIFECYCLE_ACTIONS) == set(AUDIT_ACTIONS) - {"prior", "edit", "hold"}


WORKER_WITHOUT_ITS_METRICS_FOLDER = """
import json, sys
from service import create_app
config, key, experiment = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
client = create_app(config).test_client()
headers = {"Authorization": "Bearer " + key}
decided = client.post("/v1/decide", json={"experiment": experiment}, headers=headers)
event = {"impression_id": (decided.get_json() or {}).get("impression_id"), "type": "conversion",
         "event_id": "folder-gone"}
reported = client.post("/v1/events", json=event, headers=headers)
scraped = client.get("/metrics")
print(json.dumps([[r.status_code, r.get_json(silent=True)] for r in (decided, reported, scraped)]))
"""


def test_a_metrics_folder_that_cannot_be_written_costs_the_counts_not_the_request(
    api: Any, app_config: dict[str, Any], experiment: dict[str, Any], session: Any, tmp_path: Path
) -> None:
    # The folder serve made, removed under it (a tmp cleaner, `rm -rf var`): the decision was
    # committed, then counting it raised, and the storefront got a 500 it would retry, storing a
    # second impression. A fresh process, as the metrics' storage is chosen when they are made.
    from sqlmodel import func, select

    from service.models import Event, Impression

    env = {**os.environ, MULTIPROC_ENV: str(tmp_path / "removed")}
    worker = subprocess.run(
        [
            sys.executable,
            "-c",
            WORKER_WITHOUT_ITS_METRICS_FOLDER,
            json.dumps(app_config),
            api.keys["serve"],
            str(experiment["id"]),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    (decided, decision), (reported, outcome), (scraped, refusal) = json.loads(worker.stdout)

    assert decided == 200, decision
    assert reported == 200 and outcome["accepted"] == 1, outcome
    assert session.exec(select(func.count()).select_from(Impression)).one() == 1
    assert session.exec(select(func.count()).select_from(Event)).one() == 1
    # The scrape says so rather than answer with no counts for this worker.
    assert scraped == 503 and refusal["error"] == "unavailable", refusal
    assert "cannot record its metrics" in refusal["message"]
    # Every count of every request failed; the log says so once.
    warnings = [line for line in worker.stderr.splitlines() if "metrics not recorded" in line]
    assert len(warnings) == 1, worker.stderr
    assert str(tmp_path / "removed") in warnings[0] and "FileNotFoundError" in warnings[0]
    assert "Traceback" not in worker.stderr


WORKER_WHOSE_METRICS_FOLDER_GOES = """
import json, shutil, sys
from service import create_app
config, key, experiment, folder = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), \\
    sys.argv[4]
client = create_app(config).test_client()
headers = {"Authorization": "Bearer " + key}
before = client.post("/v1/decide", json={"experiment": experiment}, headers=headers)
shutil.rmtree(folder)
after = client.post("/v1/decide", json={"experiment": experiment}, headers=headers)
scraped = [client.get("/metrics") for _ in range(2)]
print(json.dumps([[r.status_code, r.get_json(silent=True)] for r in (before, after, *scraped)]))
"""


def test_a_metrics_folder_removed_under_a_worker_that_counted_is_a_503(
    api: Any, app_config: dict[str, Any], experiment: dict[str, Any], tmp_path: Path
) -> None:
    # The usual case: every worker has counted since its first request, so its metrics exist and
    # count on into files no scrape can read. The scrape answered 500 and logged a traceback
    # each time (MultiProcessCollector refuses a folder that is gone), not the 503 and the line a
    # minute of a worker that could not make its metrics.
    folder = tmp_path / "metrics"
    folder.mkdir()
    worker = subprocess.run(
        [
            sys.executable,
            "-c",
            WORKER_WHOSE_METRICS_FOLDER_GOES,
            json.dumps(app_config),
            api.keys["serve"],
            str(experiment["id"]),
            str(folder),
        ],
        env={**os.environ, MULTIPROC_ENV: str(folder)},
        capture_output=True,
        text=True,
        check=True,
    )
    (before, _), (after, _), *scrapes = json.loads(worker.stdout)

    assert (before, after) == (200, 200)
    for scraped, refusal in scrapes:
        assert scraped == 503 and refusal["error"] == "unavailable", refusal
        assert "cannot record its metrics" in refusal["message"]
    warnings = [line for line in worker.stderr.splitlines() if "metrics not recorded" in line]
    assert len(warnings) == 1 and str(folder) in warnings[0], worker.stderr
    assert "Traceback" not in worker.stderr
