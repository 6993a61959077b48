"""The shape every detector has: see a record, maybe change its verdict."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from watchdog.detect.view import TargetView
from watchdog.trace.records import Record


@dataclass(slots=True)
class Verdict:
    """A detector's conclusion after a record: raise (True) or clear (False), and why."""

    raise_: bool
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)


def raise_(summary: str, **evidence: Any) -> Verdict:
    return Verdict(True, tidy(summary), evidence)


def clear(summary: str, **evidence: Any) -> Verdict:
    return Verdict(False, tidy(summary), evidence)


_EMPTY_PARTS = re.compile(r"(?:;\s*)+(?=;|$)")


def tidy(summary: str) -> str:
    """A summary without the empty parts an absent clause leaves ("; ;", a trailing "; ")."""
    return _EMPTY_PARTS.sub("", summary.strip()).rstrip("; ").strip()


class TargetDetector:
    """One finding kind for one target.

    ``observe`` is called after the view has taken the record. It returns a
    Verdict when the finding should change state (the engine drops verdicts
    that change nothing), else None. ``active`` says whether the finding is
    currently raised, so a detector can look for the way out.
    """

    finding: ClassVar[str]
    #: The record types this detector looks at (the engine routes only these).
    wants: ClassVar[tuple[type, ...]] = (object,)

    def __init__(self, view: TargetView) -> None:
        self.view = view
        self.settings = view.settings
        self.active = False

    def observe(self, record: Record) -> Verdict | None:  # pragma: no cover - abstract
        raise NotImplementedError
