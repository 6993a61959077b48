"""What every probe shares: a clock for record times, and where records go.

A probe never decides anything. It observes, stamps the observation with
``clock()`` (seconds since the daemon, or the recording, started) and hands a
trace-v1 record to ``emit``. The same records feed the detectors, the flight
recorder and ``watchdogctl probe``; a probe that fails to observe emits a
record that says so (``state = "error"``, ``error = "..."``) instead of raising.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from watchdog.trace.records import Record

Clock = Callable[[], float]
Emit = Callable[[Record], None]


class MonotonicClock:
    """Seconds since this clock was made, from the monotonic clock.

    ``wall_start`` is the Unix time at zero, written into trace headers so a
    recording can be placed in real time.
    """

    def __init__(self) -> None:
        self._zero = time.monotonic()
        self.wall_start = time.time()

    def __call__(self) -> float:
        return time.monotonic() - self._zero
