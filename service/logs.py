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


def on_one_line(text: str) -> str:
    """`text` with its line breaks written as ` | `, each line's own indent dropped.

    PostgreSQL's errors come in several lines (DETAIL, HINT, CONTEXT, a `LINE 1:` with a caret
    under it; a refused connection's advice after a tab), and a text log line quoting one went on
    over several, which grep and journald read as separate records."""
    lines = text.splitlines()
    # A single line is kept as it is, but not one that ends in a break ("CUDA out of memory\n"):
    # its record ended in an empty line of its own.
    if lines == [text]:
        return text
    return " | ".join(stripped for line in lines if (stripped := line.strip()))


class TextLines(logging.Formatter):
    """The text format, each record's line whole: its message on one line (on_one_line).

    A traceback still follows on lines of its own, as Python writes it: it belongs to the line
    above it, its frames are read by people and by the tools that parse Python tracebacks, and
    one folded into a single line would be kilobytes long. The service logs its expected
    failures (an unavailable database) without one; a traceback means a bug. A pipeline that
    needs every record in one line has COPYBANDIT_LOG_FORMAT=json, whose `exception` field
    holds it."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        # format() sets record.message afresh for each handler, so no other handler sees this.
        record.message = on_one_line(record.message)
        return super().formatMessage(record)


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
        handler = logging.StreamHandler()
        handler.setFormatter(TextLines(text_format, TEXT_DATE_FORMAT))
        logging.basicConfig(level=level, handlers=[handler])
