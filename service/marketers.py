"""Marketer accounts for the dashboard: created from the CLI, signed in with a password, and
their sign-in sessions.

Passwords are hashed with werkzeug's salted scrypt. Sign-in costs one hash whether or not the
email exists, so response time does not tell which addresses have accounts. A session is a random
token in the browser's cookie and its SHA-256 here; signing out, signing in again or changing the
password deletes the row, which ends the session wherever the cookie was copied to. Every sign-in
deletes the expired rows, everyone's, so `copybandit purge` has none to delete.
"""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import Session, col, select
from werkzeug.security import check_password_hash, generate_password_hash

from service.errors import Conflict, InvalidInput, NotFound, quoted
from service.models import Marketer, MarketerSession, utcnow
from service.schemas import any_format_character

MIN_PASSWORD_CHARS = 10
# No control characters: nobody types one into an address, and a NUL is a database error on
# PostgreSQL. No lone surrogates either: they are bytes a command line could not read as UTF-8,
# which no database driver will encode.
_EMAIL = re.compile(
    r"^[^@\s\x00-\x1f\x7f-\x9f\ud800-\udfff]{1,64}@[^@\s\x00-\x1f\x7f-\x9f\ud800-\udfff]{1,189}$"
)


@functools.cache
def decoy_hash() -> str:
    """Checked against when the email is unknown, so both paths spend the same time hashing.

    Made on first use, not at import: it is a full scrypt hash (0.1 s) that every `copybandit`
    command paid at start-up, though only sign-in reads it. create_app makes it, so a server's
    first unknown sign-in does not take longer than the others by the making of it.
    """
    return generate_password_hash(secrets.token_urlsafe(16))


def normalize_email(email: str) -> str:
    email = email.strip().lower()
    if not _EMAIL.match(email):
        raise InvalidInput("email: must look like name@example.com", field="email")
    return email


def check_password(password: str) -> None:
    if any("\ud800" <= char <= "\udfff" for char in password):
        # Bytes the command line could not read as UTF-8 (a terminal in another encoding): the
        # hash cannot be computed, and what was typed could not be typed again at sign-in.
        raise InvalidInput(
            "password: holds bytes that are not UTF-8; check the terminal's encoding",
            field="password",
        )
    if len(password) < MIN_PASSWORD_CHARS:
        raise InvalidInput(
            f"password: must be at least {MIN_PASSWORD_CHARS} characters", field="password"
        )


def _check_no_format_characters(email: str) -> None:
    """Refused for new accounts only, so an account made before still signs in: an invisible
    character (a zero-width joiner, a bidi override) made an address that `users list` and the
    dashboard's "paused by ..." showed as another one."""
    found = any_format_character(email)
    if found is not None:
        raise InvalidInput(
            f"email: must not contain the invisible formatting character U+{ord(found):04X}",
            field="email",
        )


def generate_password() -> str:
    return secrets.token_urlsafe(12)


def create_marketer(*, session: Session, email: str, password: str) -> Marketer:
    email = normalize_email(email)
    _check_no_format_characters(email)
    check_password(password)
    marketer = Marketer(email=email, password_hash=generate_password_hash(password))
    session.add(marketer)
    try:
        session.commit()
    except sa.exc.IntegrityError:
        session.rollback()
        raise Conflict(
            f"a marketer with email {quoted(email)} already exists", field="email"
        ) from None
    return marketer


def set_password(*, session: Session, email: str, password: str) -> Marketer:
    check_password(password)
    marketer = session.exec(
        select(Marketer).where(Marketer.email == normalize_email(email))
    ).first()
    if marketer is None:
        raise NotFound(f"no marketer with email {quoted(email)}", field="email")
    marketer.password_hash = generate_password_hash(password)
    session.add(marketer)
    # Whoever knew the old password may be signed in somewhere; those sessions end here.
    session.execute(
        sa.delete(MarketerSession).where(col(MarketerSession.marketer_id) == marketer.id)
    )
    session.commit()
    return marketer


def remove_marketer(*, session: Session, email: str) -> Marketer:
    """Delete a marketer's account and every session it has, in one commit.

    Nothing else references the row: what the dashboard records about a marketer's changes (a
    variant's status reason, "paused by mia@example.com") holds their address as text, so it
    still says who it was after the account is gone.
    """
    marketer = session.exec(
        # Locked: a sign-in that adds a session row now waits for this commit, rather than
        # ending the delete in a foreign-key error.
        select(Marketer).where(Marketer.email == normalize_email(email)).with_for_update()
    ).first()
    if marketer is None:
        raise NotFound(f"no marketer with email {quoted(email)}", field="email")
    session.execute(
        sa.delete(MarketerSession).where(col(MarketerSession.marketer_id) == marketer.id)
    )
    session.delete(marketer)
    session.commit()
    return marketer


def list_marketers(*, session: Session) -> list[Marketer]:
    return list(session.exec(select(Marketer).order_by(col(Marketer.id))))


def sign_in(*, session: Session, email: str, password: str) -> Marketer | None:
    """The marketer these credentials belong to, or None; never says which part was wrong."""
    email = email.strip().lower()
    # Accounts are made through normalize_email, so an address it refuses has none: no lookup.
    marketer = (
        session.exec(select(Marketer).where(Marketer.email == email)).first()
        if _EMAIL.match(email)
        else None
    )
    hashed = marketer.password_hash if marketer is not None else decoy_hash()
    if not check_password_hash(hashed, password) or marketer is None:
        return None
    marketer.last_sign_in_at = utcnow()
    session.add(marketer)
    try:
        session.commit()
    except StaleDataError:
        # `users remove` took the account while its password was checked: there is none to sign
        # in to, and the update that matched no row was a 500.
        session.rollback()
        return None
    return marketer


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(
    *, session: Session, marketer: Marketer, lifetime: timedelta, replacing: str | None = None
) -> str | None:
    """Start a sign-in session; return the token for the cookie (stored here only as a hash), or
    None when the account was removed since its password was checked.

    `replacing` is the token of the session this browser held before, which ends in the same
    commit: a copy of the cookie from before signing in again stays signed out.
    """
    now = utcnow()
    # Expired sessions are swept here, on the one path that adds rows.
    session.execute(sa.delete(MarketerSession).where(col(MarketerSession.expires_at) < now))
    if replacing is not None:
        session.execute(
            sa.delete(MarketerSession).where(col(MarketerSession.id) == _digest(replacing))
        )
    token = secrets.token_urlsafe(32)
    session.add(
        MarketerSession(
            id=_digest(token),
            marketer_id=marketer.id,  # type: ignore[arg-type]
            expires_at=now + lifetime,
        )
    )
    try:
        session.commit()
    except sa.exc.IntegrityError:
        # `users remove` committed between the password check and this row: its foreign key
        # names no account any more, and the sign-in was a 500.
        session.rollback()
        return None
    return token


def session_owner(*, session: Session, token: str) -> Marketer | None:
    """The marketer whose live session `token` is, or None."""
    row = session.get(MarketerSession, _digest(token))
    if row is None or row.expires_at <= utcnow():
        return None
    return session.get(Marketer, row.marketer_id)


def close_session(*, session: Session, token: str) -> None:
    session.execute(sa.delete(MarketerSession).where(col(MarketerSession.id) == _digest(token)))
    session.commit()
