"""HTTP mode of the simulator against a server that misbehaves: every request is accounted for."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from bandits.worlds import load_scenario
from service.cli import SCENARIOS
from service.sim_http import drive


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
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


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
    """An experiment with only a tea-lovers segment, which every decision is answered from, as
    the service answers a segment it does not have. Its GET is 403 unless `readable`."""

    protocol_version = "HTTP/1.1"
    readable = True

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
        self._send(200, {"segments": [{"key": "tea-lovers", "variants": [variant]}]})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        text = "Tea at the right temperature."
        self._send(
            200, {"impression_id": "i", "text": text, "variant_id": 1, "segment": "tea-lovers"}
        )


@pytest.fixture
def one_segment() -> Iterator[str]:
    _OneSegment.readable = True
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OneSegment)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_experiment_without_the_scenarios_segments_is_refused(one_segment: str) -> None:
    # Before, every decision came from tea-lovers, scored as if it were the scenario's segment.
    world = load_scenario(SCENARIOS / "default.json")
    with pytest.raises(ValueError, match="trail-racers, value-seekers, weekend-hikers"):
        drive(world, base_url=one_segment, key="k", experiment_id=1, impressions=10, clients=1)


def test_answers_from_another_segment_are_errors_not_scored(one_segment: str) -> None:
    # A serve key cannot read the experiment, so only the answers can tell.
    _OneSegment.readable = False
    world = load_scenario(SCENARIOS / "default.json")
    run = drive(world, base_url=one_segment, key="k", experiment_id=1, impressions=20, clients=2)

    summary = run.summary()
    assert summary["errors"] == {"decide other segment": 20}
    assert (summary["decisions"], summary["conversions"]) == (0, 0)
