"""JSON-lines logging, and that nothing logged carries a raw user id or an API key."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from gunicorn.config import Config

from service.gunicorn import Logger
from service.logs import JsonLines, TextLines


def test_json_lines_carry_time_level_logger_message_and_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("service.x").makeRecord(
            "service.x", logging.ERROR, __file__, 1, "failed for %s", ("slot 7",), exc_info=True
        )
        record.exc_info = sys.exc_info()
    entry = json.loads(JsonLines().format(record))
    assert entry["level"] == "error" and entry["logger"] == "service.x"
    assert entry["message"] == "failed for slot 7"
    assert "ValueError: boom" in entry["exception"] and entry["time"].endswith("+00:00")


def test_text_lines_carry_the_time_and_process_as_gunicorns_do() -> None:
    # In a process of its own: basicConfig does nothing where pytest's handlers are set up.
    logged = subprocess.run(
        [
            sys.executable,
            "-c",
            "import logging; from service import logs; logs.configure('INFO', 'text');"
            " logging.getLogger('service.x').warning('slot %s skipped', 7)",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    # It was "WARNING:service.x:slot 7 skipped", with no time beside gunicorn's stamped lines.
    stamp = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[\d+\]"
    assert re.fullmatch(rf"{stamp} \[WARNING\] service\.x: slot 7 skipped\n", logged), logged


def test_a_text_line_quoting_a_postgresql_error_stays_one_line() -> None:
    """psycopg's messages run over several lines (DETAIL, HINT, a refused connection's advice
    after a tab), and the text log's record did too: grep and journald cut it into pieces."""
    logged = subprocess.run(
        [
            sys.executable,
            "-c",
            "import logging; from service import logs; logs.configure('INFO', 'text')\n"
            "log = logging.getLogger('service.db')\n"
            "log.warning('database unavailable: %s', 'connection failed: port 1 failed: "
            "Connection refused\\n\\tIs the server running on that host?')\n"
            "try:\n"
            "    raise ValueError('boom')\n"
            "except ValueError:\n"
            "    log.exception('failed: %s', 'duplicate key\\nDETAIL:  Key (id)=(1) exists.\\n')",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    lines = logged.splitlines()
    assert lines[0].endswith(
        "[WARNING] service.db: database unavailable: connection failed: port 1 failed: "
        "Connection refused | Is the server running on that host?"
    ), logged
    assert lines[1].endswith(
        "[ERROR] service.db: failed: duplicate key | DETAIL:  Key (id)=(1) exists."
    )
    # A traceback follows its record's line, as Python writes it.
    assert lines[2] == "Traceback (most recent call last):" and lines[-1] == "ValueError: boom"


@pytest.mark.parametrize("quoted", ["CUDA out of memory\n", "CUDA out of memory\r\n"])
def test_a_text_line_quoting_one_line_that_ends_in_a_break_leaves_no_empty_line(
    quoted: str,
) -> None:
    """Not only several lines: one ending in a break left its record an empty line of its own."""
    record = logging.LogRecord(
        "service.jobs", logging.WARNING, "", 0, "failed: %s", (quoted,), None
    )

    assert (
        TextLines("%(levelname)s %(message)s").format(record)
        == "WARNING failed: CUDA out of memory"
    )


def test_requests_never_log_the_user_id_or_the_key(
    api: Any, experiment: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    user_id = "customer-8c1f-very-identifiable@example.com"
    decision = api.decide(experiment["id"], user_id=user_id)
    api.post(
        "/v1/events",
        json={"impression_id": decision["impression_id"], "type": "conversion"},
        key="serve",
    )
    api.post("/v1/decide", json={"experiment": 999999, "user_id": user_id}, key="serve")
    logged = "\n".join(r.getMessage() + str(r.exc_info or "") for r in caplog.records)
    assert user_id not in logged
    for key in api.keys.values():
        assert key not in logged and key.split("_")[-1] not in logged


def test_the_access_log_does_not_carry_a_key_sent_as_basic_auth() -> None:
    """gunicorn logs a Basic Authorization header's user name; `curl -u "$KEY:"` is refused
    (keys go as Bearer), and its key was written whole into the access log."""
    key = "cb_0123456789abcdef_" + "s3cret" * 7
    cfg = Config()
    cfg.set("accesslog", "-")
    logger = Logger(cfg)
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger.access_log.handlers = [handler]
    basic = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    environ = {
        "REMOTE_ADDR": "192.0.2.1",
        "REQUEST_METHOD": "GET",
        "RAW_URI": "/v1/experiments",
        "PATH_INFO": "/v1/experiments",
        "QUERY_STRING": "",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_AUTHORIZATION": basic,
    }
    response = SimpleNamespace(status="401 UNAUTHORIZED", sent=110, headers=[])
    request = SimpleNamespace(headers=[("AUTHORIZATION", basic)])

    logger.access(response, request, environ, timedelta(milliseconds=1))

    assert len(lines) == 1 and '"GET /v1/experiments HTTP/1.1" 401' in lines[0]
    assert key not in lines[0] and key.split("_")[-1] not in lines[0]


def test_gunicorns_lines_hide_a_key_sent_in_the_address() -> None:
    """A key put in a query string or a path (refused: keys go as Bearer) was written whole into
    the access line's request line and Referer, and into the request's DEBUG line."""
    key = "cb_0123456789abcdef_" + "s3cr-t_" * 6
    cfg = Config()
    cfg.set("accesslog", "-")
    cfg.set("loglevel", "debug")
    logger = Logger(cfg)
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger.access_log.handlers = logger.error_log.handlers = [handler]
    environ = {
        "REMOTE_ADDR": "192.0.2.1",
        "REQUEST_METHOD": "GET",
        "RAW_URI": f"/v1/experiments?key={key}",
        "PATH_INFO": "/v1/experiments",
        "QUERY_STRING": f"key={key}",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_REFERER": f"https://shop.example/?key={key}",
    }
    response = SimpleNamespace(status="400 BAD REQUEST", sent=110, headers=[])

    logger.access(response, SimpleNamespace(headers=[]), environ, timedelta(milliseconds=1))
    logger.debug("%s %s", "GET", f"/v1/{key}")

    assert len(lines) == 2
    assert '"GET /v1/experiments?key=cb_0123456789abcdef_*** HTTP/1.1" 400' in lines[0]
    assert lines[1] == "GET /v1/cb_0123456789abcdef_***"
    assert all(key.split("_", 2)[-1] not in line for line in lines)


def test_a_gunicorn_line_whose_arguments_do_not_fit_fails_only_as_a_logging_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Formatting the line to look for a key raised out of the call that logged it: logging
    itself reports such a line on stderr and goes on."""
    logger = Logger(Config())
    logger.error_log.handlers = [logging.StreamHandler(io.StringIO())]

    logger.error_log.error("%d workers", "two")

    assert "--- Logging error ---" in capsys.readouterr().err


def test_the_readme_names_every_field_of_a_json_line() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `COPYBANDIT_LOG_FORMAT`"))
    listed = re.search(r"one JSON object per line \(([^)]*)\)", row)
    assert listed is not None
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "service.x", logging.ERROR, __file__, 1, "m", None, sys.exc_info()
        )
    # "process" was written on every line and left out of the list.
    assert set(listed.group(1).split(", ")) == set(json.loads(JsonLines().format(record)))
