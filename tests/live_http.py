"""Talking to a real `copybandit serve` from tests: a free port and one JSON request."""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.request
from typing import Any

# Statuses for requests that got no HTTP answer, so a load client never dies on one.
NO_ANSWER = 0  # reset or cut short: the server may or may not have acted on it
REFUSED = -1  # the connection was refused: nothing was sent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def call(
    base: str,
    path: str,
    key: str | None = None,
    body: Any = None,
    *,
    method: str | None = None,
    timeout: float = 30,
) -> tuple[int, Any]:
    """(status, decoded body); a body that is not JSON comes back as text."""
    request = urllib.request.Request(
        base + path, method=method or ("GET" if body is None else "POST")
    )
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    if body is not None:
        request.add_header("Content-Type", "application/json")
        request.data = json.dumps(body).encode()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            return error.code, json.loads(raw)
        except ValueError:
            return error.code, raw.decode(errors="replace")
    except urllib.error.URLError as error:
        refused = isinstance(error.reason, ConnectionRefusedError)
        return (REFUSED if refused else NO_ANSWER), repr(error)
    except (OSError, http.client.HTTPException, ValueError) as error:
        return NO_ANSWER, repr(error)
