"""HTTP mode of the simulator against a server that misbehaves: every request is accounted for."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from click.testing import CliRunner

from bandits.worlds import load_scenario
from service.cli import SCENARIOS, main
from service.sim_http import _Client, drive


@contextmanager
def _serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A server of `handler` on a free loopback port, for the block; its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _Flaky(BaseHTTPRequestHandler):
    """Every 7th decision is a proxy's HTML error page; every conversion is refused (503)."""

    protocol_version = "HTTP/1.1"
    decisions = 0
    lock = threading.Lock()

    def log_message(self, *_: Any) -> None:
        pass

    def _send(self, status: int, body: str, content_type: str = "application/json") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send(403, json.dumps({"error": "forbidden"}))

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        if self.path != "/v1/decide":
            self._send(503, json.dumps({"error": "unavailable"}))
            return
        with self.lock:
            type(self).decisions += 1
            count = type(self).decisions
        if count % 7 == 0:
            self._send(502, "<html>Bad Gateway</html>", "text/html")
            return
        text = "Now $89. Free shipping, free returns!"
        answer = {"impression_id": f"i{count}", "text": text, "variant_id": 1}
        self._send(200, json.dumps({**answer, "segment": body["segment"]}))


@pytest.fixture
def flaky() -> Iterator[str]:
    _Flaky.decisions = 0
    with _serving(_Flaky) as url:
        yield url


def test_answers_that_are_not_json_and_refused_conversions_are_counted_not_lost(
    flaky: str,
) -> None:
    world = load_scenario(SCENARIOS / "default.json")
    run = drive(world, base_url=flaky, key="k", experiment_id=1, impressions=70, clients=2)

    summary = run.summary()
    # Before, the first HTML page ended its client's thread unseen: about half the decisions were
    # never sent, "errors" was empty, and conversions the server refused counted as converted.
    assert summary["requested"] == 70 == _Flaky.decisions
    assert summary["errors"]["decide 502 not JSON"] == 10
    assert summary["decisions"] == 60
    assert summary["conversions_recorded"] == 0
    assert summary["errors"].get("events 503", 0) == summary["conversions"]


class _OneSegment(BaseHTTPRequestHandler):
    """An experiment with live copy only in its first segment, `served`, which every decision is
    answered from, as the service answers a segment it does not have or that has no live copy;
    its GET lists `served` and the segments of `empty` (with no copy). Its GET is 403 unless
    `readable`."""

    protocol_version = "HTTP/1.1"
    readable = True
    served = "tea-lovers"
    empty: ClassVar[tuple[str, ...]] = ()
    # The first this many decisions are answered from the segment asked for.
    honest_for = 0
    decisions = 0
    lock = threading.Lock()

    def log_message(self, *_: Any) -> None:
        pass

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if not self.readable:
            self._send(403, {"error": "forbidden"})
            return
        variant = {"text": "Tea at the right temperature.", "status": "active"}
        segments = [{"key": self.served, "variants": [variant]}]
        segments += [{"key": key, "variants": []} for key in self.empty]
        self._send(200, {"segments": segments})

    def do_POST(self) -> None:
        asked = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        with self.lock:
            type(self).decisions += 1
            served = asked["segment"] if self.decisions <= self.honest_for else self.served
        text = "Tea at the right temperature."
        self._send(200, {"impression_id": "i", "text": text, "variant_id": 1, "segment": served})


@pytest.fixture
def one_segment() -> Iterator[str]:
    _OneSegment.readable, _OneSegment.decisions, _OneSegment.honest_for = True, 0, 0
    _OneSegment.served, _OneSegment.empty = "tea-lovers", ()
    with _serving(_OneSegment) as url:
        yield url


def test_an_experiment_without_the_scenarios_segments_is_refused(one_segment: str) -> None:
    # Before, every decision came from tea-lovers, scored as if it were the scenario's segment.
    world = load_scenario(SCENARIOS / "default.json")
    with pytest.raises(ValueError, match="trail-racers, value-seekers, weekend-hikers"):
        drive(world, base_url=one_segment, key="k", experiment_id=1, impressions=10, clients=1)


def test_an_experiment_without_live_copy_in_a_scenario_segment_is_refused(
    one_segment: str,
) -> None:
    # Before, the run went on, and the server answered every decision for those two segments
    # with weekend-hikers' copy, stored as impressions there.
    _OneSegment.served, _OneSegment.empty = "weekend-hikers", ("trail-racers", "value-seekers")
    world = load_scenario(SCENARIOS / "default.json")
    with pytest.raises(ValueError, match="no live copy in the scenario's segments trail-racers, "):
        drive(world, base_url=one_segment, key="k", experiment_id=1, impressions=40, clients=2)
    assert _OneSegment.decisions == 0


def test_answers_from_another_segment_are_errors_not_scored(one_segment: str) -> None:
    # A serve key's first decision of each segment comes from the segment asked for, the rest
    # from weekend-hikers (its other segments' copy retired meanwhile, say).
    _OneSegment.readable, _OneSegment.honest_for = False, 3
    _OneSegment.served = "weekend-hikers"
    world = load_scenario(SCENARIOS / "default.json")
    run = drive(world, base_url=one_segment, key="k", experiment_id=1, impressions=40, clients=2)

    summary = run.summary()
    assert summary["errors"]["decide other segment"] + summary["decisions"] == 40
    assert 0 < summary["errors"]["decide other segment"] < 39


def test_a_first_decision_answered_from_another_segment_stops_the_run(one_segment: str) -> None:
    # A serve key cannot read the experiment, so only its first answer can tell. Before, all 20
    # decisions were sent, each stored as an impression of the server's tea-lovers segment.
    _OneSegment.readable = False
    world = load_scenario(SCENARIOS / "default.json")
    with pytest.raises(ValueError, match="with copy of 'tea-lovers': experiment 1 lacks that"):
        drive(world, base_url=one_segment, key="k", experiment_id=1, impressions=20, clients=2)
    assert _OneSegment.decisions == 1


def test_a_segment_the_first_decision_did_not_ask_for_is_checked_too(one_segment: str) -> None:
    # The experiment has weekend-hikers alone, which the run's first decision asked for. Before,
    # that one passed the check, and the run went on: every decision for the other two segments
    # was stored as an impression of weekend-hikers.
    _OneSegment.readable, _OneSegment.served = False, "weekend-hikers"
    scenario = json.loads((SCENARIOS / "default.json").read_text())
    for segment in scenario["segments"]:
        segment["share"] = 1_000_000 if segment["key"] == "weekend-hikers" else 1
    world = load_scenario(scenario)
    with pytest.raises(
        ValueError, match="for segment 'trail-racers' with copy of 'weekend-hikers'"
    ):
        drive(world, base_url=one_segment, key="k", experiment_id=1, impressions=40, clients=2)
    # weekend-hikers' first decision, then trail-racers'.
    assert _OneSegment.decisions == 2


class _Refuses(BaseHTTPRequestHandler):
    """Answers every decision 401, as the service answers a key it does not know; its GET of the
    experiment answers `read_status` (401 for such a key, 403 for a serve key)."""

    protocol_version = "HTTP/1.1"
    read_status = 401

    def log_message(self, *_: Any) -> None:
        pass

    def _send(self, status: int, body: Any = None, content_type: str = "application/json") -> None:
        """Answer `body` as JSON, or as it is where it is bytes (a web page); by default the
        service's refusal of a key it does not know."""
        if body is None:
            body = {"error": "unauthorized", "message": "unknown key", "field": None}
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send(self.read_status)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._send(401)


@pytest.fixture
def refuses() -> Iterator[str]:
    _Refuses.read_status = 401
    with _serving(_Refuses) as url:
        yield url


@pytest.mark.parametrize("status", [401, 404])
def test_a_key_or_experiment_the_server_refuses_stops_the_run_before_it_starts(
    refuses: str, status: int
) -> None:
    _Refuses.read_status = status
    # Before, all 2000 decisions were sent and refused, and the run exited 0.
    world = load_scenario(SCENARIOS / "default.json")
    with pytest.raises(ValueError, match=f"GET /v1/experiments/1 answered {status}: unknown key"):
        drive(world, base_url=refuses, key="bad", experiment_id=1, impressions=10, clients=1)


class _NoExperiment(_Refuses):
    """A server without the experiment, to a serve key: its GET answers 403, and each decision
    404, as the service answers them."""

    decisions = 0

    def do_GET(self) -> None:
        self._send(403)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        type(self).decisions += 1
        self._send(
            404, {"error": "not_found", "message": f"no experiment with id {body['experiment']}"}
        )


def test_an_experiment_a_serve_key_cannot_read_is_checked_by_the_first_decision(
    tmp_path: Path,
) -> None:
    _NoExperiment.decisions = 0
    with _serving(_NoExperiment) as url:
        arguments = ["--http", url, "--key", "k", "--experiment", "99", "--impressions", "50"]
        result = CliRunner().invoke(main, ["simulate", *arguments, "--out", str(tmp_path)])

    # Before, the 403 let the run go ahead, and all 50 decisions failed with 404.
    assert result.exit_code == 1, result.output
    assert "POST /v1/decide answered 404: no experiment with id 99" in result.output
    assert _NoExperiment.decisions == 1 and not (tmp_path / "http.json").exists()


class _ServeKey(_Refuses):
    """A serve key's view: its GET of the experiment answers 403, and every decision `answer`
    (the arguments of `_send`), or the server hangs up where that is None."""

    answer: ClassVar[tuple[Any, ...] | None] = (503, {"error": "unavailable"})
    decisions = 0
    lock = threading.Lock()

    def do_GET(self) -> None:
        self._send(403, {"error": "forbidden", "message": "a serve key", "field": None})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.lock:
            type(self).decisions += 1
        if self.answer is None:
            self.close_connection = True
            return
        self._send(*self.answer)


@pytest.fixture
def serve_key() -> Iterator[str]:
    _ServeKey.answer, _ServeKey.decisions = (503, {"error": "unavailable"}), 0
    with _serving(_ServeKey) as url:
        yield url


@pytest.mark.parametrize(
    ("impressions", "says"),
    # "none of 1 decisions succeeded" for a run of one.
    [(6, "0 of 6 decisions succeeded"), (1, "0 of 1 decision succeeded")],
)
def test_a_run_without_one_decision_reports_no_latency_or_regret_and_fails(
    serve_key: str, tmp_path: Any, impressions: int, says: str
) -> None:
    # A serve key cannot read the copy, and a 503 may pass, so the run goes ahead.
    arguments = ["--http", serve_key, "--key", "k", "--experiment", "1"]
    arguments += ["--impressions", str(impressions)]
    result = CliRunner().invoke(main, ["simulate", *arguments, "--out", str(tmp_path)])

    summary = json.loads((tmp_path / "http.json").read_text())
    # Before, p50 and p99 read 0.0 ms and regret 0.0, and the command exited 0.
    assert summary["errors"] == {"decide 503": impressions} and summary["decisions"] == 0
    assert summary["decide_latency_ms"] == {"p50": None, "p99": None}
    assert summary["regret_vs_best_served_copy"] is None
    assert result.exit_code == 1
    assert f"HTTP simulation: {says} (errors above)" in result.output


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (
            (409, {"error": "no_active_variant", "message": "no live copy", "field": "segment"}),
            "answered 409: no live copy",
        ),
        ((400, {"error": "invalid", "message": "bad segment", "field": "segment"}), "400: bad"),
        ((401,), "answered 401: unknown key"),
        ((403, {"error": "forbidden", "message": "not this one", "field": None}), "403: not this"),
        ((404, b"<html>Not Found</html>", "text/html"), "answered 404 with no JSON"),
        (None, "got no HTTP answer: RemoteDisconnected"),
    ],
)
def test_a_first_decision_every_other_would_repeat_stops_the_run(
    serve_key: str, answer: tuple[Any, ...] | None, says: str
) -> None:
    _ServeKey.answer = answer
    world = load_scenario(SCENARIOS / "default.json")
    # Before, only an integer 404 stopped it: all 20 decisions were sent and failed alike.
    with pytest.raises(ValueError, match=f"^POST /v1/decide .*{says}"):
        drive(world, base_url=serve_key, key="k", experiment_id=1, impressions=20, clients=2)
    assert _ServeKey.decisions == 1


@pytest.mark.parametrize(
    "answer",
    [(429, {"error": "rate_limited"}), (503, b"<html>Service Unavailable</html>", "text/html")],
)
def test_a_first_decision_that_may_pass_lets_the_run_go_on(
    serve_key: str, answer: tuple[Any, ...]
) -> None:
    _ServeKey.answer = answer
    world = load_scenario(SCENARIOS / "default.json")
    run = drive(world, base_url=serve_key, key="k", experiment_id=1, impressions=20, clients=2)

    assert _ServeKey.decisions == 20 == sum(run.errors.values())


def test_the_impressions_help_gives_each_modes_default() -> None:
    result = CliRunner().invoke(main, ["simulate", "--help"])

    # Before, "default: the scenario's" for all three; HTTP and full-loop modes have their own.
    text = " ".join(result.output.split())
    assert "HTTP mode: in all (default 2000)" in text
    assert "full-loop mode: per round (default 20000)" in text


def test_an_https_url_is_spoken_to_over_tls() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    received: list[bytes] = []

    def first_bytes() -> None:
        connection, _ = listener.accept()
        with connection:
            received.append(connection.recv(4096))

    thread = threading.Thread(target=first_bytes)
    thread.start()
    status, _ = _Client(f"https://127.0.0.1:{port}", "cb_secret").post("/v1/decide", {})
    thread.join(timeout=10)
    listener.close()

    # It sent "POST /v1/decide ... Authorization: Bearer cb_secret" in plain text.
    assert received[0][:1] == b"\x16"  # a TLS handshake record
    assert b"cb_secret" not in received[0]
    assert not isinstance(status, int)  # no TLS here, so no answer


class _Recording(_Refuses):
    """Keeps every request's path and Authorization header; answers the experiment's GET 403 (as
    a serve key is answered, so the run's first decision checks the experiment) and every
    decision 404."""

    seen: ClassVar[list[tuple[str, str]]] = []

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.seen.append((self.path, self.headers.get("Authorization", "")))
        self._send(403 if self.command == "GET" else 404, {})

    do_GET = do_POST = _answer


@pytest.fixture
def recording() -> Iterator[str]:
    _Recording.seen = []
    with _serving(_Recording) as url:
        yield url


def test_the_key_may_come_from_the_environment_and_the_urls_path_prefixes_every_request(
    recording: str, tmp_path: Path
) -> None:
    arguments = ["--http", f"{recording}/copybandit/", "--experiment", "1", "--impressions", "3"]
    result = CliRunner().invoke(
        main,
        ["simulate", *arguments, "--clients", "1", "--out", str(tmp_path)],
        env={"COPYBANDIT_SIM_KEY": "cb_from_env"},
    )

    assert result.exit_code == 1 and "POST /v1/decide answered 404" in result.output
    # README's way to pass the key was called a misspelling of COPYBANDIT_USER_ID_KEY.
    assert "unknown settings" not in result.output
    # The URL's path was dropped: a server behind /copybandit got /v1/... and answered 404.
    assert {path for path, _ in _Recording.seen} == {
        "/copybandit/v1/experiments/1",
        "/copybandit/v1/decide",
    }
    assert {key for _, key in _Recording.seen} == {"Bearer cb_from_env"}


class _NotTheApi(_Refuses):
    """A web server that is not copybandit (or a proxy at the wrong path): HTML 404 pages."""

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._send(404, b"<html><body>404 Not Found</body></html>", "text/html")

    do_GET = do_POST = _answer


def test_a_url_that_is_not_the_api_stops_the_run_saying_so(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))

    def not_http() -> None:  # an SSH server, say
        connection, _ = listener.accept()
        with connection:
            connection.recv(4096)
            connection.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

    thread = threading.Thread(target=not_http)
    thread.start()
    other_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        with _serving(_NotTheApi) as html_url:
            results = [
                CliRunner().invoke(
                    main,
                    [
                        "simulate",
                        "--http",
                        url,
                        "--key",
                        "k",
                        "--experiment",
                        "1",
                        "--out",
                        str(tmp_path),
                    ],
                )
                for url in (html_url, other_url)
            ]
    finally:
        thread.join(timeout=10)
        listener.close()

    html, other = results
    # Before: "HTTP simulation failed: Expecting value: line 1 column 1 (char 0)".
    assert html.exit_code == 1
    assert (
        "GET /v1/experiments/1 answered 404 with no JSON: is "
        f"{html_url} a copybandit server" in html.output
    )
    # Before: a traceback ending in http.client.BadStatusLine.
    assert other.exit_code == 1 and isinstance(other.exception, SystemExit), other.output
    assert "GET /v1/experiments/1 got no HTTP answer: BadStatusLine" in other.output


class _OtherJson(_Refuses):
    """Another service's JSON where the experiment should be: its GET answers 200 with `body`."""

    body: ClassVar[Any] = None

    def do_GET(self) -> None:
        self._send(200, self.body)


@pytest.mark.parametrize("body", [{"status": "ok"}, [1, 2], {"segments": "all"}])
def test_json_that_is_not_an_experiment_stops_the_run_saying_so(body: Any) -> None:
    _OtherJson.body = body
    world = load_scenario(SCENARIOS / "default.json")
    # Before, a KeyError or TypeError traceback: only OSError and ValueError are reported.
    with _serving(_OtherJson) as url, pytest.raises(ValueError) as caught:
        drive(world, base_url=url, key="k", experiment_id=1, impressions=10, clients=1)

    assert str(caught.value) == (
        "GET /v1/experiments/1 answered 200 with JSON that is not an experiment: "
        f"is {url} a copybandit server (with its path, if one is in front of it)?"
    )


@pytest.mark.parametrize(
    "body", [[1, 2], {"status": "ok"}, {"text": 5}], ids=["list", "other", "text"]
)
def test_a_200_that_is_not_a_decision_is_counted_not_a_traceback(serve_key: str, body: Any) -> None:
    # `body.get("segment")` on a list raised AttributeError: a traceback in the command for the
    # first decision, and a dead client thread for the rest.
    _ServeKey.answer = (200, body)
    world = load_scenario(SCENARIOS / "default.json")
    run = drive(world, base_url=serve_key, key="k", experiment_id=1, impressions=20, clients=2)

    assert _ServeKey.decisions == 20
    assert run.errors == {"decide 200 not a decision": 20}
