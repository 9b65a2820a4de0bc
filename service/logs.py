"""Logging set-up: plain lines for a terminal, or one JSON object per line for a log pipeline.

What gets logged is chosen so that no raw user id or API key can appear: user ids are HMAC-hashed
before anything sees them, and keys are only ever compared as digests.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime

FORMATS = ("text", "json")
# As gunicorn writes its own lines beside them under `serve`: BASIC_FORMAT's had no time, so a
# scheduler warning could not be placed among the access lines around it.
TEXT_FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"
TEXT_DATE_FORMAT = "[%Y-%m-%d %H:%M:%S %z]"
# An API key's shape (service.auth): `cb_<16 hex id>_<secret>`. The id alone names the key, as
# `keys list` shows it, and tells the operator which key to revoke; the secret must not be seen.
_API_KEY = re.compile(r"cb_([0-9a-f]{16})_[A-Za-z0-9_-]+")


def hide_api_keys(text: str) -> str:
    """`text` with the secret of each API key in it replaced by ***, its id kept."""
    return _API_KEY.sub(r"cb_\1_***", text)


class HidesApiKeys(logging.Filter):
    """Hides keys in lines that write what a client sent: gunicorn's access lines carry the
    request line and the Referer as sent, so a key put in a query string (`?key=cb_...`, refused:
    keys go as Bearer) was written whole."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            # Arguments that do not fit the format: the handler reports that, as logging does,
            # where raising here made the call that logged fail instead.
            return True
        # Kept formatted, key or not: the handler formatted each access line a second time
        # (5 of its 26 us).
        record.msg, record.args = hide_api_keys(message), None
        return True


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, log_format: str, *, text_format: str = TEXT_FORMAT) -> None:
    """Idempotent: a second app in the same process (tests) does not add handlers."""
    root = logging.getLogger()
    root.setLevel(level)
    if log_format == "json":
        handler = next((h for h in root.handlers if getattr(h, "_copybandit", False)), None)
        if handler is None:
            handler = logging.StreamHandler()
            handler._copybandit = True  # type: ignore[attr-defined]
            for old in list(root.handlers):
                root.removeHandler(old)
            root.addHandler(handler)
        handler.setFormatter(JsonLines())
    else:
        logging.basicConfig(level=level, format=text_format, datefmt=TEXT_DATE_FORMAT)
