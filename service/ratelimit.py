"""Per-key rate limits for the serving endpoints: a token bucket per API key, per worker process.

A storefront that loops or floods spends its own key's budget and gets 429 with `Retry-After`;
other keys are untouched. Buckets live in the worker's memory, so with N worker processes a key
can reach N times the configured rate overall: set `COPYBANDIT_RATE_LIMIT_PER_SECOND` to the
per-process share you want.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class RateLimiter:
    """Allows `rate` requests per second per key on average, bursts up to `burst`."""

    MAX_KEYS = 10_000

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill time)
        self._lock = threading.Lock()

    def wait(self, key: str) -> float:
        """Seconds until `key` may go ahead (0.0: now), spending nothing."""
        if self.rate <= 0:
            return 0.0
        with self._lock:
            tokens, _ = self._refilled(key)
        return self._wait_for_one(tokens)

    def take(self, key: str) -> float:
        """0.0 if this request may go ahead; otherwise seconds until one would be allowed."""
        if self.rate <= 0:
            return 0.0
        with self._lock:
            tokens, now = self._refilled(key)
            if tokens >= 1.0:
                if len(self._buckets) >= self.MAX_KEYS and key not in self._buckets:
                    self._make_room(now)
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return self._wait_for_one(tokens)

    def _refilled(self, key: str) -> tuple[float, float]:
        """The key's tokens now, and now; the caller holds the lock."""
        now = self._clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate), now

    def _make_room(self, now: float) -> None:
        """Bounds memory when keys are many (the sign-in limits count one per email typed).
        A bucket refilled to the burst is what an unseen key gets, so forgetting it changes no
        answer; only if every bucket is still spending is everything forgotten. Clearing at once
        gave a guesser who typed 10,000 other emails a fresh allowance for the one it was after."""
        for key, (tokens, last) in list(self._buckets.items()):
            if tokens + (now - last) * self.rate >= self.burst:
                del self._buckets[key]
        if len(self._buckets) >= self.MAX_KEYS:
            self._buckets.clear()

    def _wait_for_one(self, tokens: float) -> float:
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate


def retry_after_header(wait: float) -> str:
    return str(max(1, math.ceil(wait)))
