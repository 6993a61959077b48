"""Logging: the one place that configures loguru.

Readable lines on a terminal; JSON lines for journald (``--log-format json``,
or ``auto`` when stderr is not a terminal but the journal). :class:`LogOnce`
keeps a recurring problem (a missing GPU driver, a server that answers
garbage) to one line when it starts and one when it ends.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from datetime import timezone
from typing import Any, Literal, TextIO

from loguru import logger

LogFormat = Literal["auto", "text", "json"]
_TEXT_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{extra[component]}</cyan> {message}"
)


def resolve_format(fmt: LogFormat, stream: TextIO | None = None) -> Literal["text", "json"]:
    if fmt != "auto":
        return fmt
    stream = stream or sys.stderr
    if os.environ.get("JOURNAL_STREAM") and not _isatty(stream):
        return "json"
    return "text"


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _Redact:
    """Masks secrets in every log message (server error bodies and log lines may quote them)."""

    def __init__(self) -> None:
        self.redactor: Any = None

    def __call__(self, record: Any) -> None:
        if self.redactor is not None:
            record["message"] = self.redactor.text(record["message"])


_redact = _Redact()


def set_redactor(redactor: Any) -> None:
    """Mask these secrets in everything logged from now on (the daemon sets it, and on reload)."""
    _redact.redactor = redactor


def setup_logging(fmt: LogFormat = "auto", level: str = "INFO", stream: TextIO | None = None) -> None:
    """(Re)configure logging for the whole process."""
    stream = stream or sys.stderr
    logger.remove()
    logger.configure(extra={"component": "watchdog"}, patcher=_redact)
    if resolve_format(fmt, stream) == "json":
        logger.add(_JsonSink(stream), level=level, format="{message}", backtrace=False, diagnose=False)
    else:
        logger.add(stream, level=level, format=_TEXT_FORMAT, colorize=_isatty(stream),
                   backtrace=False, diagnose=False)
    intercept_stdlib_logging()


_DIGITS = re.compile(r"\d+")


class InterceptHandler(logging.Handler):
    """Hands the standard library's log records (APScheduler, httpx, aiohttp...) to loguru,
    so they get our format, our sinks and secret masking instead of raw stderr lines.

    A library message that repeats, numbers and times aside, (APScheduler's "skipped: maximum number of
    running instances reached" every interval while a probe of a hung server waits out its
    deadline) is written once per ``repeat_after`` seconds, with how often it came meanwhile.
    """

    def __init__(self, repeat_after: float = 600.0) -> None:
        super().__init__()
        self.repeat_after = repeat_after
        self._seen: dict[str, tuple[float, int]] = {}  # message -> (when written, repeats since)
        self._seen_lock = threading.Lock()

    def _repeats(self, message: str) -> int | None:
        """None if this message was written recently (drop it); else how often it was dropped."""
        now = time.monotonic()
        message = _DIGITS.sub("#", message)  # "next run at: 12:00:01", counts: the same message
        with self._seen_lock:
            written = self._seen.get(message)
            if written is not None and now - written[0] < self.repeat_after:
                self._seen[message] = (written[0], written[1] + 1)
                return None
            if len(self._seen) > 1000:  # bounded: forget the oldest
                for key in sorted(self._seen, key=lambda k: self._seen[k][0])[:500]:
                    del self._seen[key]
            self._seen[message] = (now, 0)
            return written[1] if written is not None else 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        repeats = self._repeats(message) if record.exc_info is None else 0
        if repeats is None:
            return
        if repeats:
            message += f" (and {repeats} more time(s) in the last {self.repeat_after:.0f} s, not logged)"
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        frame, depth = logging.currentframe(), 2
        while frame is not None and frame.f_code.co_filename == logging.__file__:
            frame, depth = frame.f_back, depth + 1
        logger.bind(component=record.name).opt(depth=depth, exception=record.exc_info).log(level, message)


def intercept_stdlib_logging(level: int = logging.WARNING) -> None:
    """Route the stdlib root logger into loguru (idempotent: one handler, however often called).
    Warnings and up only, as Python's own last-resort handler showed them before."""
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, InterceptHandler)] + [InterceptHandler()]
    root.setLevel(level)


class _JsonSink:
    """One JSON object per line: what journald and log shippers want."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def __call__(self, message: Any) -> None:
        record = message.record
        data: dict[str, Any] = {
            "ts": record["time"].astimezone(timezone.utc).isoformat(timespec="milliseconds"),
            "level": record["level"].name,
            "msg": record["message"],
        }
        for key, value in record["extra"].items():
            data[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record["exception"] is not None:
            data["exception"] = f"{record['exception'].type.__name__}: {record['exception'].value}"
        line = json.dumps(data, ensure_ascii=False, default=str)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


class LogOnce:
    """Log a recurring condition once when it appears and once when it clears.

    Probes call ``problem(key, ...)`` on every failed attempt and ``ok(key)`` on
    every success; only the transitions reach the log.
    """

    def __init__(self, component: str) -> None:
        self._log = logger.bind(component=component)
        self._active: dict[str, str] = {}
        self._lock = threading.Lock()

    def problem(self, key: str, message: str, level: str = "WARNING") -> bool:
        """Returns True when this call logged (the condition is new or changed)."""
        with self._lock:
            if self._active.get(key) == message:
                return False
            self._active[key] = message
        self._log.log(level, message)
        return True

    def ok(self, key: str, message: str | None = None) -> None:
        with self._lock:
            was = self._active.pop(key, None)
        if was is not None:
            self._log.info(message or f"recovered: {was}")

    def active(self, key: str) -> bool:
        with self._lock:
            return key in self._active
