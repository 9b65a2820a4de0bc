"""JSON-lines logging, and that nothing logged carries a raw user id or an API key."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from typing import Any

import pytest

from service.logs import JsonLines


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
