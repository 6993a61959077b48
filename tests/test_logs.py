"""Logging: text and JSON lines, secrets masked, recurring problems logged once."""

from __future__ import annotations

import io
import json

from loguru import logger

from watchdog.logs import LogOnce, set_redactor, setup_logging
from watchdog.redact import Redactor


def test_json_lines_and_secrets_are_masked() -> None:
    out = io.StringIO()
    setup_logging("json", "INFO", stream=out)
    set_redactor(Redactor(["s3cr3t-api-key-value"]))
    try:
        logger.bind(component="probe").warning("server said: invalid key s3cr3t-api-key-value")
    finally:
        set_redactor(None)
        setup_logging("text", "WARNING")
    line = json.loads(out.getvalue().strip().splitlines()[-1])
    assert line["level"] == "WARNING" and line["component"] == "probe"
    assert "s3cr3t-api-key-value" not in out.getvalue()
    assert "invalid key" in line["msg"]


def test_a_recurring_problem_is_logged_once_and_its_end_once() -> None:
    out = io.StringIO()
    setup_logging("text", "INFO", stream=out)
    try:
        once = LogOnce("gpu")
        for _ in range(5):
            once.problem("nvml", "NVML does not answer")
        once.ok("nvml")
        once.ok("nvml")
    finally:
        setup_logging("text", "WARNING")
    text = out.getvalue()
    assert text.count("NVML does not answer") == 2  # the problem, and "recovered: <problem>"
    assert text.count("recovered") == 1
