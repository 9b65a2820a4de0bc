"""The real thing: `copybandit init` then `copybandit serve` (gunicorn, 2 workers) over HTTP."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.live_http import call, free_port

BIN = Path(sys.executable).parent


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    env = {**os.environ, "COPYBANDIT_DATABASE_URL": f"sqlite:///{tmp_path}/serve.db"}
    init = subprocess.run(
        [BIN / "copybandit", "init", "--no-demo-history"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    key = re.search(r"cb_[0-9a-f]{16}_[A-Za-z0-9_-]+", init.stdout)
    assert key, init.stdout
    port = free_port()
    process = subprocess.Popen(
        [BIN / "copybandit", "serve", "--port", str(port), "--workers", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if call(base, "/healthz")[0] == 200:
                break
            assert process.poll() is None, process.stdout.read()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "server did not come up in 30 s"
            time.sleep(0.1)
        yield base, key.group(0)
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_decide_convert_report_over_http(server: tuple[str, str]) -> None:
    base, key = server
    experiments = call(base, "/v1/experiments", key)[1]["experiments"]
    demo = experiments[0]["id"]

    decisions = [
        call(base, "/v1/decide", key, {"experiment": demo, "segment": "trail-racers"})
        for _ in range(20)
    ]
    assert all(status == 200 for status, _ in decisions)
    assert {body["segment"] for _, body in decisions} == {"trail-racers"}

    events = [
        {"impression_id": body["impression_id"], "type": "conversion", "event_id": f"e{i}"}
        for i, (_, body) in enumerate(decisions[:5])
    ]
    status, outcome = call(base, "/v1/events", key, {"events": events})
    assert (status, outcome["accepted"], outcome["duplicate"]) == (200, 5, 0)
    assert call(base, "/v1/events", key, {"events": events})[1]["duplicate"] == 5

    report = call(base, f"/v1/experiments/{demo}/report", key)[1]
    racers = next(s for s in report["segments"] if s["key"] == "trail-racers")
    assert (racers["impressions"], racers["conversions"]) == (20, 5)
    assert racers["leader"]["variant_id"] in {v["variant_id"] for v in racers["variants"]}

    # Each scrape reaches one of the two workers; each reports the sum over both.
    for _ in range(4):
        with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
            scraped = response.read().decode()
        assert "\ncopybandit_decisions_total 20.0\n" in scraped
        assert 'copybandit_events_total{outcome="accepted"} 5.0' in scraped
        assert 'copybandit_events_total{outcome="duplicate"} 5.0' in scraped


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes its side."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_clients_that_keep_their_sockets_open_after_the_answer_hold_no_worker(
    server: tuple[str, str],
) -> None:
    base = server[0]
    port = int(base.rsplit(":", 1)[1])
    started = time.monotonic()
    kept_open = []
    # Twice as many as there are workers: gunicorn's own close read from each of them for 2 s
    # before its worker took the next connection, so these alone took 4 s.
    for _ in range(4):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: test\r\n\r\n")
        assert _answer(sock).startswith(b"HTTP/1.1 200 ")
        kept_open.append(sock)
    assert call(base, "/livez")[0] == 200
    assert time.monotonic() - started < 1.5
    for sock in kept_open:
        sock.close()


_UNPARSABLE = [
    (f"GET /v1/experiments?q={'x' * 5000} HTTP/1.1\r\nHost: t\r\n", 414, "uri_too_long", "url"),
    (
        f"GET /livez HTTP/1.1\r\nHost: t\r\nX-Big: {'x' * 20_000}\r\n",
        431,
        "request_header_fields_too_large",
        "headers",
    ),
    ("GET /livez HTTP/1.1\r\nHost: t\r\nBad Name: 1\r\n", 400, "bad_request", None),
]


def test_a_request_gunicorn_cannot_parse_is_refused_in_json(server: tuple[str, str]) -> None:
    port = int(server[0].rsplit(":", 1)[1])
    for request_head, status, error, field in _UNPARSABLE:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request_head.encode() + b"\r\n")
            head, _, body = _answer(sock).partition(b"\r\n\r\n")
        # gunicorn answered these with its own text/html page.
        assert head.startswith(f"HTTP/1.1 {status} ".encode()), head
        assert b"\r\nContent-Type: application/json\r\n" in head, head
        refusal = json.loads(body)
        assert (refusal["error"], refusal.get("field")) == (error, field)
        assert refusal["message"]


def test_a_body_the_client_stops_sending_partway_is_refused_naming_it(
    server: tuple[str, str],
) -> None:
    # gunicorn handed the app what came before the client closed its side as the whole body: a
    # whole JSON value short of its Content-Length made an experiment (201); cut mid-chunk, it
    # was werkzeug's generic 400, naming nothing.
    base, key = server
    port = int(base.rsplit(":", 1)[1])
    whole = json.dumps(
        {
            "name": "Cut short",
            "product": {"name": "Kettle", "description": "Glass."},
            "segments": [{"key": "tea", "description": "Tea people."}],
        }
    ).encode()
    for framing, sent, short_of in (
        (
            f"Content-Length: {len(whole) + 50}",
            whole,
            f"short of its Content-Length ({len(whole) + 50} bytes)",
        ),
        (
            "Transfer-Encoding: chunked",
            f"{len(whole):x}\r\n".encode() + whole[:20],
            "before its last chunk",
        ),
    ):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            head = (
                f"POST /v1/experiments HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n"
                f"Content-Type: application/json\r\n{framing}\r\n\r\n"
            )
            sock.sendall(head.encode() + sent)
            sock.shutdown(socket.SHUT_WR)
            answer_head, _, body = _answer(sock).partition(b"\r\n\r\n")
        assert answer_head.startswith(b"HTTP/1.1 400 "), answer_head
        assert json.loads(body) == {
            "error": "bad_request",
            "field": "body",
            "message": f"the body ended {short_of}: the client stopped sending it partway",
        }
    names = [e["name"] for e in call(base, "/v1/experiments", key)[1]["experiments"]]
    assert "Cut short" not in names


# A worker that takes its time between the fork and installing its own signal handlers, as one
# does on a loaded machine: the stop below comes inside that window every time.
_SLOW_WORKER_START = """
import sys, time
from service.gunicorn import run
run({
    "bind": sys.argv[1],
    "workers": 1,
    "worker_class": "service.gunicorn.SyncWorker",
    "control_socket_disable": True,
    "graceful_timeout": 120,
    "post_fork": lambda _server, _worker: time.sleep(2),
})
"""


def test_a_server_stopped_while_a_worker_starts_stops_at_once(tmp_path: Path) -> None:
    env = {**os.environ, "COPYBANDIT_DATABASE_URL": f"sqlite:///{tmp_path}/serve.db"}
    subprocess.run([BIN / "copybandit", "init", "--no-demo-history"], env=env, check=True)
    process = subprocess.Popen(
        [sys.executable, "-c", _SLOW_WORKER_START, f"127.0.0.1:{free_port()}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for line in process.stdout:  # type: ignore[union-attr]
            if "Booting worker" in line:
                break
        process.send_signal(signal.SIGTERM)
        # The worker lost the signal, and the master waited out its 120 s graceful timeout.
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        process.wait()


def test_flask_cli_finds_the_app_factory(tmp_path: Path) -> None:
    env = {**os.environ, "COPYBANDIT_DATABASE_URL": f"sqlite:///{tmp_path}/flask.db"}
    routes = subprocess.run(
        [BIN / "flask", "--app", "service", "routes"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "/v1/decide" in routes and "/v1/experiments/<path_id:experiment_id>/report" in routes


def test_http_simulation_drives_the_server_as_storefronts_would(
    server: tuple[str, str], tmp_path: Path
) -> None:
    base, key = server
    out = tmp_path / "sim"
    subprocess.run(
        [
            BIN / "copybandit",
            "simulate",
            "--http",
            base,
            "--key",
            key,
            "--experiment",
            "1",
            "--impressions",
            "300",
            "--clients",
            "4",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    run = json.loads((out / "http.json").read_text())
    assert (run["requested"], run["decisions"], run["errors"]) == (300, 300, {})
    assert run["conversions_recorded"] == run["conversions"]
    assert run["decisions_per_second"] > 0 and run["decide_latency_ms"]["p99"] > 0
    report = call(base, "/v1/experiments/1/report", key)[1]
    assert sum(s["impressions"] for s in report["segments"]) == 300
    assert sum(s["conversions"] for s in report["segments"]) == run["conversions"]
    assert run["regret_vs_best_served_copy"] >= 0


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid`: for gunicorn's master, its workers."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
        if parent == pid:
            children.append(int(stat.parent.name))
    return children


@pytest.mark.parametrize("level", ["INFO", "ERROR"])
def test_json_logs_hold_gunicorns_own_lines_at_the_configured_level(
    tmp_path: Path, sqlite_template: Path, level: str
) -> None:
    # gunicorn's lines (starting, booting and losing workers, access lines) were plain text
    # among the JSON ones, and logged at INFO whatever COPYBANDIT_LOG_LEVEL said.
    env = {
        **os.environ,
        "COPYBANDIT_DATABASE_URL": f"sqlite:///{tmp_path}/serve.db",
        "COPYBANDIT_LOG_FORMAT": "json",
        "COPYBANDIT_LOG_LEVEL": level,
    }
    shutil.copy(sqlite_template, tmp_path / "serve.db")
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [BIN / "copybandit", "serve", "--port", str(port), "--workers", "2", "--access-log"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while call(base, "/healthz")[0] != 200:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "server did not come up in 30 s"
            time.sleep(0.1)
        # The worker that answered writes its access line just after the answer; killed before
        # that, it writes none.
        while level == "INFO" and "gunicorn.access" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        victim = _children(process.pid)[0]
        os.kill(victim, signal.SIGKILL)
        while f"Worker (pid:{victim}) was sent SIGKILL!" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        process.terminate()
        # A worker forked just before the signal may miss it: gunicorn then waits out its
        # graceful timeout (30 s) before it kills that worker and exits.
        process.wait(timeout=45)

    entries = []
    for line in log.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    assert {e["level"] for e in entries} <= {
        name.lower()
        for name in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
        if logging.getLevelName(name) >= logging.getLevelName(level)
    }
    loggers = {e["logger"] for e in entries}
    if level == "INFO":
        assert {"gunicorn.error", "gunicorn.access"} <= loggers
        messages = "\n".join(e["message"] for e in entries)
        assert "Starting gunicorn" in messages and "Booting worker" in messages
    else:
        assert loggers == {"gunicorn.error"}
