"""A finding: a detector's conclusion that something is wrong (raised) or no longer is (cleared)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

FindingKind = Literal[
    "hang", "down", "failed_unload", "memory_growth", "fragmentation", "oom", "degraded", "gpu_fault", "truncation"
]
FindingState = Literal["raised", "cleared"]

#: How bad each finding is: "critical" needs someone (or an action) now,
#: "warning" needs a look. Used by status exit codes and alert routing.
SEVERITY: dict[str, str] = {
    "hang": "critical",
    "down": "critical",
    "failed_unload": "critical",
    "oom": "critical",
    "fragmentation": "critical",
    "gpu_fault": "critical",
    "memory_growth": "warning",
    "degraded": "warning",
    "truncation": "warning",
}


@dataclass(frozen=True, slots=True)
class Finding:
    """One change of a finding, exactly as ``replay`` prints it.

    ``target`` is a server name, or ``gpu:N`` for a GPU fault. ``evidence``
    carries the numbers behind the summary for incidents and alerts.
    """

    t: float
    target: str
    finding: str
    state: FindingState
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def severity(self) -> str:
        return SEVERITY.get(self.finding, "warning")

    def to_json(self) -> dict[str, Any]:
        """The replay line: t, target, finding, state, summary (in that order)."""
        return {
            "t": round(self.t, 3),
            "target": self.target,
            "finding": self.finding,
            "state": self.state,
            "summary": self.summary,
        }
