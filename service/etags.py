"""Strong ETags of what a PATCH can change, and the If-Match precondition that names one: of two
clients that read a resource and each change it, the second is refused (412, nothing stored)
instead of replacing the first's change unseen. Each writer checks it where it has read the row
it changes afresh, under the lock (or in the conditional UPDATE) that already orders two writers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from sqlmodel import Session

from service.errors import PreconditionFailed

# The request's If-Match as a test of an ETag (service.api.common.etag_matches); None: no header.
EtagTest = Callable[[str], bool]


def etag_of(state: Any) -> str:
    """A strong ETag of `state` (anything json.dumps writes), quoted as the header writes it: it
    changes exactly when `state` does."""
    digest = hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()
    return f'"{digest[:32]}"'


def require_match(session: Session, etag_matches: EtagTest | None, etag: str, *, what: str) -> None:
    """Raise PreconditionFailed (field If-Match), rolling back, when the request's If-Match does
    not take `etag`, the ETag of `what` ("variant 12") as it is now."""
    if etag_matches is None or etag_matches(etag):
        return
    session.rollback()
    raise PreconditionFailed(
        f"{what} is no longer the one your If-Match names: someone changed it since you read it; "
        "GET it again for its ETag",
        field="If-Match",
    )
