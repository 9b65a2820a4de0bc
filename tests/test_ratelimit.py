"""Per-key rate limits on the serving endpoints: 429 with Retry-After, other keys unaffected."""

from __future__ import annotations

from typing import Any

import pytest
from sqlmodel import Session

from service.auth import create_key
from service.models import Scope
from service.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_the_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3.0, clock=clock)
    assert [limiter.take("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("k") == pytest.approx(0.5)  # empty: one token every 0.5 s
    clock.now += 0.5
    assert limiter.take("k") == 0.0
    assert limiter.take("k") > 0
    assert limiter.take("other") == 0.0  # every key has its own bucket
    clock.now += 100
    assert [limiter.take("k") for _ in range(4)][:3] == [0.0, 0.0, 0.0]  # refills to the burst only


def test_waiting_time_is_told_without_spending_a_token() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=2.0, clock=clock)
    assert [limiter.wait("k") for _ in range(5)] == [0.0] * 5
    limiter.take("k")
    limiter.take("k")
    assert limiter.wait("k") == pytest.approx(0.5)
    assert limiter.wait("k") == pytest.approx(0.5)  # asking twice spent nothing
    clock.now += 0.5
    assert limiter.wait("k") == 0.0 and limiter.take("k") == 0.0


def test_rate_zero_turns_it_off() -> None:
    limiter = RateLimiter(rate=0.0, burst=1.0)
    assert all(limiter.take("k") == 0.0 for _ in range(1000))


def test_decide_over_the_limit_is_429_with_retry_after_and_records_nothing(
    app: Any, api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    clock = Clock()
    app.extensions["copybandit.ratelimit"] = RateLimiter(rate=1.0, burst=2.0, clock=clock)
    body = {"experiment": experiment["id"]}
    assert api.post("/v1/decide", json=body, key="serve").status_code == 200
    assert api.post("/v1/decide", json=body, key="serve").status_code == 200
    before = api.get(f"/v1/experiments/{experiment['id']}/report").get_json()
    limited = api.post("/v1/decide", json=body, key="serve")
    assert limited.status_code == 429
    assert limited.get_json()["error"] == "rate_limited"
    assert limited.headers["Retry-After"] == "1"
    after = api.get(f"/v1/experiments/{experiment['id']}/report").get_json()
    assert [s["impressions"] for s in after["segments"]] == [
        s["impressions"] for s in before["segments"]
    ]
    # Another serve key has its own budget; admin endpoints are not limited.
    _, other = create_key(session=session, scope=Scope.SERVE)
    assert api.post("/v1/decide", json=body, key=other).status_code == 200
    clock.now += 1.0
    assert api.post("/v1/decide", json=body, key="serve").status_code == 200


def test_a_bad_key_is_401_not_429(app: Any, api: Any, experiment: dict[str, Any]) -> None:
    app.extensions["copybandit.ratelimit"] = RateLimiter(rate=1.0, burst=1.0, clock=Clock())
    response = api.post("/v1/decide", json={"experiment": experiment["id"]}, key="cb_nope_nope")
    assert response.status_code == 401


@pytest.mark.parametrize("key", ["serve", None], ids=["with-key", "without-key"])
def test_options_reads_the_allowed_methods_without_a_key_or_the_budget(
    app: Any, api: Any, experiment: dict[str, Any], key: str | None
) -> None:
    # An OPTIONS with the key took a token from its budget and answered an empty text/html 200;
    # without a key it was a 401, though it reads only what the OpenAPI document publishes.
    app.extensions["copybandit.ratelimit"] = RateLimiter(rate=1.0, burst=1.0, clock=Clock())
    for _ in range(3):
        response = api.client.options("/v1/decide", headers=api._headers(key))
        assert response.status_code == 204
        assert set(response.headers["Allow"].split(", ")) == {"POST", "OPTIONS"}
        assert response.get_data() == b"" and "Content-Type" not in response.headers
    assert (
        api.post("/v1/decide", json={"experiment": experiment["id"]}, key="serve").status_code
        == 200
    )


def test_many_keys_forget_the_rested_buckets_not_the_one_still_limited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # At the key cap every bucket was dropped: typing enough other emails into the sign-in form
    # gave back the allowance of the one being guessed.
    monkeypatch.setattr(RateLimiter, "MAX_KEYS", 50)
    clock = Clock()
    limiter = RateLimiter(rate=1 / 60, burst=2.0, clock=clock)
    for n in range(49):
        limiter.take(f"other-{n}")
    clock.now += 120.0  # each of those has refilled to the burst
    limiter.take("target")
    limiter.take("target")
    clock.now += 1.0
    assert limiter.take("newcomer") == 0.0
    assert limiter.wait("target") > 0
    for n in range(200):
        limiter.take(f"another-{n}")  # no time passes: none of them rests
    assert len(limiter._buckets) <= 50  # memory stays bounded even so
