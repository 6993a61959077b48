"""Counting the actions the watchdog carried out, from the incident bus.

The act package writes what it did into the incident's timeline with
``Incidents.note()``, evidence ``{"action": "restart" | "unload" | "kill_orphans", "result": ...}``.
This listener counts those notes per target; a dry-run's ``would`` and a ``skipped``
action did nothing, so they do not count, nor does a note without a result (a "started"
line), nor an ``interrupted`` one (an action of the previous run, noted again at start).
Only actions noted in an incident's timeline are seen: a manual action on a target with
no open incident is not counted.
"""

from __future__ import annotations

from collections import Counter

from watchdog.incidents.model import IncidentEvent

NOT_CARRIED_OUT = frozenset({"would", "skipped", "interrupted"})


class ActionCounter:
    """A bus listener (plain function: quick, inline). Counts since the daemon started."""

    def __init__(self) -> None:
        self._counts: dict[str, Counter[str]] = {}

    def __call__(self, event: IncidentEvent) -> None:
        entry = event.change
        if entry.kind != "note":
            return
        action, result = entry.evidence.get("action"), entry.evidence.get("result")
        if not isinstance(action, str) or not isinstance(result, str) or result in NOT_CARRIED_OUT:
            return
        self._counts.setdefault(event.incident.target, Counter())[action] += 1

    def count(self, target: str, action: str) -> int:
        return self._counts.get(target, Counter())[action]

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {target: dict(counts) for target, counts in self._counts.items()}
