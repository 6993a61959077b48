"""Canaries sent and failed per target, model and hour: the denominators of ``watchdogctl report``.

Incidents say what went wrong; these counts say out of how much work, so a
report can give a hang rate per 100 canaries. Kept apart from the incident
tables (``canary_counts``, schema migration 2), fed with the canary records the
incident manager already sees, written once a minute and at a clean stop.
"""

from __future__ import annotations

from collections.abc import Iterable

from watchdog.trace.records import Canary, Record

HOUR_S = 3600.0
#: How often the counts are written (trace seconds); a clean stop writes what is pending.
COUNTS_FLUSH_S = 60.0
Counts = dict[tuple[str, str, float], tuple[int, int]]


def count_canaries(records: Iterable[Record], wall_start: float) -> Counts:
    """(target, model, hour start in Unix seconds) -> (sent, failed) for the canaries among ``records``."""
    counts: Counts = {}
    for record in records:
        if not isinstance(record, Canary):
            continue
        hour = (wall_start + record.t) // HOUR_S * HOUR_S
        key = (record.target, record.model or "", hour)
        sent, failed = counts.get(key, (0, 0))
        counts[key] = (sent + 1, failed + (0 if record.ok else 1))
    return counts


def merge(into: Counts, more: Counts) -> None:
    for key, (sent, failed) in more.items():
        old_sent, old_failed = into.get(key, (0, 0))
        into[key] = (old_sent + sent, old_failed + failed)
