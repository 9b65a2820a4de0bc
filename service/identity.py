"""Ids the service hands out, and the one-way hash that stands in for a storefront's user id."""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time

_RANDOM_BITS = 80
_lock = threading.Lock()
_last = 0


def new_impression_id() -> str:
    """32 hex chars: 48 bits of milliseconds, then 80 bits that are random (or, within the same
    millisecond, the previous id's plus a random step), in the manner of UUIDv7.

    Increasing ids keep inserts at the right edge of the primary-key index, make a purge by age a
    range scan and sort a worker's impressions in the order it made them; the random part keeps them
    unguessable.
    """
    global _last
    millis = time.time_ns() // 1_000_000
    with _lock:
        candidate = (millis << _RANDOM_BITS) | int.from_bytes(os.urandom(10), "big")
        if candidate <= _last:
            candidate = _last + 1 + int.from_bytes(os.urandom(6), "big")
        _last = candidate
    return f"{candidate:032x}"


def hash_user_id(user_id: str, *, key: str) -> str:
    return hmac.new(key.encode(), user_id.encode(), hashlib.sha256).hexdigest()
