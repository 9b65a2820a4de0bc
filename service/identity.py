"""Ids the service hands out, and the one-way hash that stands in for a storefront's user id."""

from __future__ import annotations

import hashlib
import hmac
import os
import time


def new_impression_id() -> str:
    """32 hex chars: 48 bits of milliseconds, then 80 random bits.

    Time-first ids keep inserts at the right edge of the primary-key index and make a purge by age a
    range scan; the random tail makes them unguessable.
    """
    millis = time.time_ns() // 1_000_000
    return f"{millis:012x}{os.urandom(10).hex()}"


def hash_user_id(user_id: str, *, key: str) -> str:
    return hmac.new(key.encode(), user_id.encode(), hashlib.sha256).hexdigest()
