"""API keys: `cb_<id>_<secret>`, stored as id + SHA-256 of the secret, checked in constant time.

The secret is 32 random bytes, so a fast hash is enough: there is nothing to brute-force that a
slow hash would protect. `admin` keys can do everything `serve` keys can.

Each worker remembers keys it has checked for `COPYBANDIT_KEY_CACHE_SECONDS` (5 s by default), so
a decision does not pay a database read to authenticate; the price is that a revoked key keeps
working for up to that long in workers that saw it just before.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from flask import current_app, g, request
from sqlmodel import Session, select

from service import db
from service.errors import Forbidden, NotFound, Unauthorized
from service.models import ApiKey, Scope, utcnow

_PREFIX = "cb_"
_KEY_ID = re.compile(r"[0-9a-f]{16}")  # secrets.token_hex(8)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(*, session: Session, scope: Scope, label: str = "") -> tuple[ApiKey, str]:
    """Store a new key; return it with the plaintext, which is shown once and never stored."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    row = ApiKey(id=key_id, secret_hash=_digest(secret), scope=scope.value, label=label)
    session.add(row)
    session.commit()
    return row, f"{_PREFIX}{key_id}_{secret}"


def revoke_key(*, session: Session, key_id: str) -> ApiKey:
    # As in authenticate: only an id shaped like ours reaches the database (one holding bytes
    # that are not UTF-8 could not even be sent to it).
    row = session.get(ApiKey, key_id) if _KEY_ID.fullmatch(key_id) else None
    if row is None:
        raise NotFound(f"no API key with id {key_id!r}", field="key_id")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.add(row)
        session.commit()
    return row


def list_keys(*, session: Session) -> list[ApiKey]:
    return list(session.exec(select(ApiKey).order_by(ApiKey.created_at)))  # type: ignore[arg-type]


def authenticate(*, session: Session, presented: str) -> ApiKey | None:
    """The live key matching `presented`, or None. Never says which half was wrong."""
    if not presented.startswith(_PREFIX):
        return None
    key_id, _, secret = presented[len(_PREFIX) :].partition("_")
    # Only an id shaped like ours reaches the database (a NUL in it made PostgreSQL raise).
    row = session.get(ApiKey, key_id) if _KEY_ID.fullmatch(key_id) and secret else None
    # Compare even when the id is unknown, so timing does not reveal which ids exist.
    expected = row.secret_hash if row is not None else _digest("")
    matches = hmac.compare_digest(expected, _digest(secret))
    if row is None or not matches or row.revoked_at is not None:
        return None
    return row


@dataclass(frozen=True)
class _Checked:
    key_id: str
    scope: str
    until: float


class KeyCache:
    """Keys this worker authenticated recently, by the SHA-256 of the presented string."""

    MAX_ENTRIES = 10_000

    def __init__(self, ttl_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl_seconds
        self._clock = clock
        self._entries: dict[str, _Checked] = {}
        self._lock = threading.Lock()

    def authenticate(self, presented: str) -> tuple[str, str] | None:
        """(key id, scope) for a live key, or None; reads the database at most once per TTL."""
        digest = _digest(presented)
        now = self._clock()
        hit = self._entries.get(digest)
        if hit is not None and hit.until > now:
            return hit.key_id, hit.scope
        key = authenticate(session=db.session(), presented=presented)
        if key is None:
            return None  # failures are never cached: a new key works at once
        if self._ttl > 0:
            with self._lock:
                if len(self._entries) >= self.MAX_ENTRIES:
                    self._entries.clear()
                self._entries[digest] = _Checked(key.id, key.scope, now + self._ttl)
        return key.id, key.scope


def require_key(scope: Scope) -> None:
    """The request must carry a live key of `scope` (or admin); raises 401/403 otherwise."""
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Unauthorized(
            "send an API key as 'Authorization: Bearer <key>'", field="Authorization"
        )
    cache: KeyCache = current_app.extensions["copybandit.keys"]
    checked = cache.authenticate(presented.strip())
    if checked is None:
        raise Unauthorized("invalid or revoked API key", field="Authorization")
    key_id, key_scope = checked
    if scope is Scope.ADMIN and key_scope != Scope.ADMIN:
        raise Forbidden("this endpoint needs an admin key", field="Authorization")
    g.api_key_id = key_id
