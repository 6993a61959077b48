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


async def test_apschedulers_own_warnings_go_through_our_logging_once_and_masked() -> None:
    """APScheduler logs through the standard library; its "skipped" warning used to reach stderr raw,
    once per interval for as long as a probe of a hung server waited out its deadline."""
    import asyncio
    import time

    from apscheduler.events import EVENT_JOB_MAX_INSTANCES
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    out = io.StringIO()
    setup_logging("json", "INFO", stream=out)
    setup_logging("json", "INFO", stream=out)  # configured twice (a reload): still one line per message
    set_redactor(Redactor(["s3cr3t-job-name"]))
    scheduler = AsyncIOScheduler(job_defaults={"max_instances": 1, "coalesce": True})
    release = asyncio.Event()

    async def busy() -> None:
        await release.wait()

    skipped = []
    scheduler.add_listener(skipped.append, EVENT_JOB_MAX_INSTANCES)
    scheduler.add_job(busy, "interval", seconds=0.2, id="job", name="poll s3cr3t-job-name")
    scheduler.start()
    try:
        deadline = time.monotonic() + 30
        while len(skipped) < 3:  # the job stays stuck for several intervals, as a hung server's poll does
            assert time.monotonic() < deadline, f"only {len(skipped)} skipped run(s): {out.getvalue()!r}"
            await asyncio.sleep(0.05)
    finally:
        release.set()
        scheduler.shutdown(wait=False)
        set_redactor(None)
        setup_logging("text", "WARNING")
    lines = [json.loads(line) for line in out.getvalue().splitlines() if "maximum number" in line]
    first = lines[0]
    assert first["level"] == "WARNING" and first["component"].startswith("apscheduler")
    assert "s3cr3t-job-name" not in out.getvalue()
    assert len(lines) == 1  # written once, however often the job was skipped meanwhile
