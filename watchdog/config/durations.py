"""Human durations ("30s", "5m", "1h30m", "250ms") for the config file.

Operators write durations, not floats of seconds; the config keeps seconds as
floats internally so the rest of the code never parses text.
"""

from __future__ import annotations

import math
import re

#: The longest duration any setting may hold. Longer values are typos ("99999999999d") that
#: would overflow timers and schedulers, so they are refused rather than obeyed.
MAX_DURATION_S = 366 * 86400.0
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(value: object) -> float:
    """Seconds from "30s", "1.5m", "1h30m", "250ms", or a plain number of seconds.

    Raises ValueError with the text to show an operator.
    """
    if isinstance(value, bool):
        raise ValueError(f'expected a duration like "30s", got {value!r}')
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f'expected a duration like "30s", got {value}')
        if value < 0:
            raise ValueError(f'expected a duration like "30s", got a negative number ({value})')
        return _bounded(float(value), value)
    if not isinstance(value, str):
        raise ValueError(f'expected a duration like "30s", got {type(value).__name__}')
    text = value.strip().lower().replace(" ", "")
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(f'expected a duration like "30s", got "{value[:40]}"')
    return _bounded(total, value)


def _bounded(seconds: float, value: object) -> float:
    if not math.isfinite(seconds) or seconds > MAX_DURATION_S:
        shown = value if not isinstance(value, str) else f'"{value[:40]}"'
        raise ValueError(f"expected a duration of at most 366d, got {shown}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest readable form: 90 -> "1m30s", 0.25 -> "250ms"."""
    if seconds < 1 and seconds != 0:
        return f"{round(seconds * 1000)}ms"
    whole = int(round(seconds))
    if abs(seconds - whole) > 1e-9:
        return f"{seconds:g}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"
