"""Parsing what people type for ``--since``: a duration ("24h", "30m") or a time (ISO 8601)."""

from __future__ import annotations

from datetime import datetime

from watchdog.config.durations import parse_duration


def parse_since(text: str, now: float) -> float:
    """Unix time from "24h" (that long before ``now``) or "2024-05-01T12:00" / "...Z" / "...+02:00".

    A time without a zone is local time (the daemon and ``watchdogctl`` share a host).
    Raises ValueError with a message for the operator.
    """
    text = text.strip()
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f'expected a duration like "24h" or a time like "2024-05-01T12:00:00Z", got {text!r}'
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return moment.timestamp()
