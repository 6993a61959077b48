"""``watchdogctl replay``: run the detectors over a recorded trace, with no side effects.

Also checks a replay against an expectation file (``NAME.expect.json``, see
docs/trace-v1.md), which is how the detectors are tested on every trace.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watchdog.config.model import Config
from watchdog.detect.engine import DetectionEngine
from watchdog.detect.factory import make_engine
from watchdog.detect.finding import Finding
from watchdog.trace.io import Trace, TraceProblem, iter_trace, open_text
from watchdog.trace.records import Event, Header, LogLine, Record

_ONSET_SLACK = 5.0


@dataclass
class ReplayResult:
    header: Header
    findings: list[Finding] = field(default_factory=list)
    problems: list[TraceProblem] = field(default_factory=list)
    records: int = 0
    duration: float = 0.0
    context: list[Record] = field(default_factory=list)


def replay_trace(trace: Trace, config: Config | None = None) -> ReplayResult:
    """Replay a trace already in memory."""
    result = ReplayResult(trace.header, problems=list(trace.problems))
    _run(make_engine(config, header=trace.header), trace.records, result)
    return result


def replay_file(path: str | Path, config: Config | None = None, keep_context: bool = False) -> ReplayResult:
    """Stream a trace file through the detectors (memory stays flat for long traces)."""
    with open_text(path) as handle:
        items = iter_trace(handle)
        header: Header | None = None
        pending: list[Any] = []
        for item in items:
            if isinstance(item, Header):
                header = item
                break
            pending.append(item)
        result = ReplayResult(header or Header())
        for item in pending:
            if isinstance(item, TraceProblem):
                result.problems.append(item)
        engine = make_engine(config, header=result.header)
        _run(engine, _records(items, result), result, keep_context)
    return result


def _records(items: Iterable[Any], result: ReplayResult) -> Iterable[Record]:
    for item in items:
        if isinstance(item, TraceProblem):
            result.problems.append(item)
        elif not isinstance(item, Header):
            yield item


def _run(engine: DetectionEngine, records: Iterable[Record], result: ReplayResult, keep_context: bool = False) -> None:
    feed = engine.feed
    findings = result.findings
    count = 0
    for record in records:
        count += 1
        changes = feed(record)
        if changes:
            findings.extend(changes)
        if keep_context and isinstance(record, (Event, LogLine)):
            result.context.append(record)
    result.records = count
    result.duration = engine.now


def findings_as_json_lines(findings: Iterable[Finding]) -> Iterable[str]:
    for finding in findings:
        yield json.dumps(finding.to_json(), ensure_ascii=False)


# --- expectations --------------------------------------------------------------------------------

@dataclass
class ExpectationReport:
    """What a replay got right and wrong against an expectation file."""

    missed: list[str] = field(default_factory=list)
    late_clear: list[str] = field(default_factory=list)
    false_positives: list[str] = field(default_factory=list)
    detected: list[tuple[dict[str, Any], Finding]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missed or self.late_clear or self.false_positives)

    def __str__(self) -> str:
        lines = [f"missed: {m}" for m in self.missed]
        lines += [f"not cleared in time: {m}" for m in self.late_clear]
        lines += [f"false positive: {m}" for m in self.false_positives]
        return "\n".join(lines) or "ok"


def check_expectations(findings: list[Finding], expect: dict[str, Any]) -> ExpectationReport:
    """Judge findings by the rules of docs/trace-v1.md, "Expectation files"."""
    report = ExpectationReport()
    end = float(expect.get("duration") or max((f.t for f in findings), default=0.0))
    raised = [f for f in findings if f.state == "raised"]
    explained: set[int] = set()
    for item in expect.get("expect", []):
        target, kind = item["target"], item["finding"]
        start, raise_by = float(item["onset"]) - _ONSET_SLACK, float(item["raise_by"])
        until = float(item.get("until", end))
        hits = [f for f in raised if f.target == target and f.finding == kind and start <= f.t <= raise_by]
        if not hits:
            report.missed.append(f"{kind} on {target} between {start:g} and {raise_by:g}")
            continue
        first = hits[0]
        report.detected.append((item, first))
        for i, f in enumerate(raised):
            if f.target == target and f.finding == kind and start <= f.t <= until:
                explained.add(i)
        clear_by = item.get("expect_clear_by")
        if clear_by is not None:
            cleared = [f for f in findings if f.target == target and f.finding == kind and f.state == "cleared"
                       and first.t <= f.t <= float(clear_by)]
            if not cleared:
                report.late_clear.append(f"{kind} on {target} raised at {first.t:g}, not cleared by {clear_by}")
    for window in expect.get("tolerate", []):
        for i, f in enumerate(raised):
            if window.get("finding") in ("*", f.finding) and window.get("target", f.target) in ("*", f.target) \
                    and float(window["from"]) <= f.t <= float(window["to"]):
                explained.add(i)
    for i, f in enumerate(raised):
        if i not in explained:
            report.false_positives.append(f"{f.finding} on {f.target} at {f.t:g}: {f.summary}")
    return report
