"""Where test data lives: the shared traces beside the checkout, and our own."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OWN_TRACES = ROOT / "tests" / "traces"


def shared_traces_dir() -> Path | None:
    """../shared/traces beside the checkout (or $IW_SHARED_TRACES), None if absent.

    CI may run without it; tests/traces/shared holds a copy taken from it.
    """
    for candidate in (os.environ.get("IW_SHARED_TRACES"), ROOT.parent / "shared" / "traces"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def all_trace_files() -> list[Path]:
    """Every *.trace.jsonl we know, one per name: the live shared folder wins over our copy."""
    found: dict[str, Path] = {}
    for path in sorted(OWN_TRACES.rglob("*.trace.jsonl")):
        found[path.name] = path
    shared = shared_traces_dir()
    if shared is not None:
        for path in sorted(shared.glob("*.trace.jsonl")):
            found[path.name] = path
    return sorted(found.values(), key=lambda p: p.name)
