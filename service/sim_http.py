"""HTTP mode of the simulator: drive a running server as storefronts would.

N client threads call POST /v1/decide for an experiment, score the copy they are served with the
scenario's hidden response model (so whatever copy the server holds, generated copy included, has
a true rate), and report conversions to POST /v1/events. Measures throughput and errors as well as
outcomes. The server under test is untouched beyond what a storefront could do.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from bandits.worlds import Segment, World


@dataclass
class HttpRun:
    requested: int = 0
    decisions: int = 0
    conversions: int = 0
    # Conversions the server answered 200 for; the others are in `errors`.
    conversions_recorded: int = 0
    expected_conversions: float = 0.0
    best_expected: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        # With no decision made, regret and latency are null: 0.0 read as a perfect, instant run.
        return {
            "requested": self.requested,
            "decisions": self.decisions,
            "conversions": self.conversions,
            "conversions_recorded": self.conversions_recorded,
            "conversion_rate": self.conversions / self.decisions if self.decisions else None,
            "regret_vs_best_served_copy": round(self.best_expected - self.expected_conversions, 2)
            if self.decisions
            else None,
            "decisions_per_second": round(self.decisions / self.seconds, 1)
            if self.seconds
            else None,
            "decide_latency_ms": {"p50": self._latency_ms(50), "p99": self._latency_ms(99)},
            "errors": dict(self.errors),
        }

    def _latency_ms(self, percentile: int) -> float | None:
        if not self.latencies_ms:
            return None
        return round(float(np.percentile(self.latencies_ms, percentile)), 2)


def _connection(base_url: str) -> http.client.HTTPConnection:
    """A connection as the URL's scheme says: an https server got the key in plain HTTP."""
    parts = urlsplit(base_url)
    host = parts.hostname or "127.0.0.1"
    if parts.scheme == "https":
        return http.client.HTTPSConnection(host, parts.port or 443, timeout=30)
    return http.client.HTTPConnection(host, parts.port or 80, timeout=30)


class _Client:
    def __init__(self, base_url: str, key: str) -> None:
        self.connection = _connection(base_url)
        # A server behind a path (https://shop.example/copybandit) answers under it.
        self.prefix = urlsplit(base_url).path.rstrip("/")
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def post(self, path: str, body: dict[str, Any]) -> tuple[int | str, Any]:
        """(status, JSON body); a request that got no usable answer is (what went wrong, None),
        and the connection is opened afresh for the next one."""
        try:
            self.connection.request("POST", self.prefix + path, json.dumps(body), self.headers)
            response = self.connection.getresponse()
            status, raw = response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.connection.close()
            return type(exc).__name__, None
        try:
            return status, json.loads(raw or b"null")
        except ValueError:  # a proxy's HTML error page, say
            return f"{status} not JSON", None


def _best_rates(
    base_url: str, key: str, experiment_id: int, segments: list[Any]
) -> tuple[dict[str, float], bool]:
    """The true rate of the best live copy per segment: the server's copy if the key may read it
    (admin), else the scenario's lines; and whether it could read it. Refuses an experiment that
    lacks a scenario segment or live copy in one, and a key or experiment the server does not
    know."""
    texts = {s.key: list(s.variants) for s in segments}
    client = _Client(base_url, key)
    path = f"/v1/experiments/{experiment_id}"
    what = f"GET {path}"
    try:
        client.connection.request(
            "GET", client.prefix + path, headers={"Authorization": f"Bearer {key}"}
        )
        response = client.connection.getresponse()
        status, raw = response.status, response.read()
    except http.client.HTTPException as exc:  # something else listens there (OSError: nothing)
        raise ValueError(f"{what} got no HTTP answer: {type(exc).__name__}: {exc}") from None
    finally:
        client.connection.close()

    def not_the_api(answer: str) -> ValueError:
        return ValueError(
            f"{what} answered {status} with {answer}: is {base_url} a copybandit server "
            "(with its path, if one is in front of it)?"
        )

    try:
        body = json.loads(raw or b"null")
    except ValueError:  # a web server's or proxy's HTML page: the URL is not copybandit's API
        raise not_the_api("no JSON") from None
    # Every decision would fail the same way. A 403 is a serve key, which may not read the
    # experiment: `drive` checks it with the run's first decision of each segment.
    if status in (401, 404):
        problem = body.get("message") if isinstance(body, dict) else None
        raise ValueError(f"{what} answered {status}: {problem or body}")
    if status == 200:
        # Another service's JSON ({"status": "ok"}, a list) ended in a KeyError or TypeError.
        if not isinstance(body, dict) or not isinstance(body.get("segments"), list):
            raise not_the_api("JSON that is not an experiment")
        # The server answers an unknown segment with its first one, whose copy the scenario
        # would then score with another segment's response model.
        missing = sorted(texts.keys() - {segment["key"] for segment in body["segments"]})
        if missing:
            raise ValueError(
                f"experiment {experiment_id} lacks the scenario's segments {', '.join(missing)}"
                " (the server would serve its first segment's copy for them)"
            )
        live = {
            segment["key"]: [v["text"] for v in segment["variants"] if v["status"] == "active"]
            for segment in body["segments"]
            if segment["key"] in texts
        }
        # As good as missing: the server serves such a segment its first one's copy too (or,
        # when that has none either, answers 409). The run went on, and stored each decision
        # for it as an impression of the first segment.
        no_copy = sorted(key for key, lines in live.items() if not lines)
        if no_copy:
            raise ValueError(
                f"experiment {experiment_id} has no live copy in the scenario's segments "
                f"{', '.join(no_copy)} (the server would serve its first segment's copy for them)"
            )
        texts.update(live)
    rates = {s.key: max(s.response.rate(t) for t in texts[s.key]) for s in segments}
    return rates, status == 200


def _lasting_failure(status: int | str, body: Any) -> str | None:
    """What went wrong with a decision that every other would repeat, or None: an answer but 200
    other than 429 and 5xx (an overloaded or restarting server), which the run counts and goes on.
    An experiment the server lacks (404), a segment without live copy (409), a refused key, a
    proxy's page or no connection failed every decision of the run the same way."""
    if status == 200:
        return None
    if isinstance(status, str):  # "404 not JSON", or what went wrong ("ConnectionRefusedError")
        code = status.split(" ", 1)[0]
        if not code.isdigit():
            return f"got no HTTP answer: {status}"
        if int(code) == 429 or int(code) >= 500:
            return None
        return f"answered {code} with no JSON"
    if status == 429 or status >= 500:
        return None
    problem = body.get("message") if isinstance(body, dict) else None
    return f"answered {status}: {problem or body}"


def _other_segment(body: Any, asked: str, experiment_id: int) -> str | None:
    """What a decision answered from another segment than the one `asked` for says, or None.
    Every decision for that segment would be answered so: the run went on, and stored each
    one as an impression of the experiment's first segment, which an admin key's check of the
    experiment refuses before the run."""
    served = body.get("segment") if isinstance(body, dict) else None
    if served is None or served == asked:
        return None
    return (
        f"answered for segment {asked!r} with copy of {served!r}: experiment {experiment_id} "
        "lacks that segment or has no live copy in it, and the server serves its first "
        "segment's copy there"
    )


def drive(
    world: World,
    *,
    base_url: str,
    key: str,
    experiment_id: int,
    impressions: int,
    clients: int = 4,
    seed: int = 0,
) -> HttpRun:
    """Send `impressions` decisions from `clients` threads; segments drawn by the world's shares."""
    segments = [s for s in world.segments if s.response is not None]
    if not segments:
        raise ValueError("HTTP mode needs a scenario with response models (text -> rate)")
    shares = np.array([s.share for s in segments]) / sum(s.share for s in segments)
    best_rate, checked = _best_rates(base_url, key, experiment_id, segments)
    run = HttpRun(requested=impressions)
    lock = threading.Lock()
    rngs = [np.random.default_rng([seed, i]) for i in range(clients)]
    connections = [_Client(base_url, key) for _ in range(clients)]

    def decision(index: int, segment: Segment | None = None) -> tuple[int | str, Any]:
        """One decision of client `index` for `segment` (None: drawn by the world's shares),
        scored and counted; the server's answer to it."""
        rng, connection = rngs[index], connections[index]
        if segment is None:
            segment = segments[int(rng.choice(len(segments), p=shares))]
        started = time.perf_counter()
        status, body = connection.post(
            "/v1/decide", {"experiment": experiment_id, "segment": segment.key}
        )
        elapsed = (time.perf_counter() - started) * 1000
        if status != 200:
            with lock:
                run.errors[f"decide {status}"] += 1
            return status, body
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            # Not a decision (another server's JSON): counted, not a traceback in a client thread.
            with lock:
                run.errors["decide 200 not a decision"] += 1
            return status, body
        if body.get("segment") != segment.key:
            # Copy of another segment: the scenario has no true rate for it here.
            with lock:
                run.errors["decide other segment"] += 1
            return status, body
        rate = segment.response.rate(body["text"])  # type: ignore[union-attr]
        best = best_rate[segment.key]
        converted = bool(rng.random() < rate)
        recorded = False
        if converted:
            event_status, _ = connection.post(
                "/v1/events", {"impression_id": body["impression_id"], "type": "conversion"}
            )
            recorded = event_status == 200
            if not recorded:
                with lock:
                    run.errors[f"events {event_status}"] += 1
        with lock:
            run.decisions += 1
            run.conversions += converted
            run.conversions_recorded += recorded
            run.expected_conversions += rate
            run.best_expected += max(best, rate)
            run.latencies_ms.append(elapsed)
        return status, body

    started = time.perf_counter()
    # A serve key may not read the experiment (403). The run's first decision for each of the
    # scenario's segments, made before the clients start, checks what the read would have: no
    # impression beyond the run's own is recorded, as a probe decision would have been. One
    # decision for the first segment drawn checked that one alone, so whether the run stopped
    # for a segment the experiment lacks hung on which segment the seed drew first.
    probes = [] if checked else segments[:impressions]
    for segment in probes:
        status, body = decision(0, segment)
        problem = _lasting_failure(status, body) or _other_segment(body, segment.key, experiment_id)
        if problem:
            raise ValueError(f"POST /v1/decide {problem}")
    left = impressions - len(probes)
    per_client = [left // clients + (i < left % clients) for i in range(clients)]

    def client(index: int) -> None:
        for _ in range(per_client[index]):
            decision(index)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run.seconds = time.perf_counter() - started
    return run
