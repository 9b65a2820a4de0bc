"""API keys: `cb_<id>_<secret>`, stored as id + SHA-256 of the secret, checked in constant time.

The secret is 32 random bytes, so a fast hash is enough: there is nothing to brute-force that a
slow hash would protect. `admin` keys can do everything `serve` keys can.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from flask import g, request
from sqlmodel import Session, select

from service import db
from service.errors import Forbidden, NotFound, Unauthorized
from service.models import ApiKey, Scope, utcnow

_PREFIX = "cb_"


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
    row = session.get(ApiKey, key_id)
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
    row = session.get(ApiKey, key_id) if key_id and secret else None
    # Compare even when the id is unknown, so timing does not reveal which ids exist.
    expected = row.secret_hash if row is not None else _digest("")
    matches = hmac.compare_digest(expected, _digest(secret))
    if row is None or not matches or row.revoked_at is not None:
        return None
    return row


def require_key(scope: Scope) -> None:
    """The request must carry a live key of `scope` (or admin); raises 401/403 otherwise."""
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Unauthorized(
            "send an API key as 'Authorization: Bearer <key>'", field="Authorization"
        )
    key = authenticate(session=db.session(), presented=presented.strip())
    if key is None:
        raise Unauthorized("invalid or revoked API key", field="Authorization")
    if scope is Scope.ADMIN and key.scope != Scope.ADMIN:
        raise Forbidden("this endpoint needs an admin key", field="Authorization")
    g.api_key_id = key.id
