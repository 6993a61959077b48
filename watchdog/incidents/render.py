"""Showing incidents to a person: ``watchdogctl history`` (times are local)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from watchdog.config.durations import format_duration
from watchdog.incidents.model import Incident, TimelineEntry

_SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow"}
_KIND_STYLE = {"raised": "red", "cleared": "green", "note": "cyan"}


def local(moment: datetime, with_date: bool = True) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S")


def render_history(incidents: Sequence[Incident], console: Console | None = None, evidence: bool = False) -> None:
    """Each incident with its timeline, oldest first (so the newest ends next to the prompt)."""
    console = console or Console()
    if not incidents:
        console.print("no incidents")
        return
    for number, incident in enumerate(sorted(incidents, key=lambda i: (i.opened_at, i.id))):
        if number:
            console.print()
        render_incident(incident, console, evidence=evidence)


def render_incident(incident: Incident, console: Console | None = None, evidence: bool = True) -> None:
    console = console or Console()
    console.print(_heading(incident))
    console.print(Text(f"    {incident.title}"))
    if incident.findings:
        parts = []
        for finding in incident.findings:
            state = "raised" if finding.state == "raised" else "cleared"
            carried = ", carried over a restart" if finding.carried_over else ""
            parts.append(f"[{_KIND_STYLE[state]}]{finding.finding}[/] ({state}{carried})")
        console.print("    findings: " + ", ".join(parts))
    same_day = incident.opened_at.astimezone().date()
    for entry in incident.timeline:
        console.print(_entry(entry, with_date=entry.at.astimezone().date() != same_day))
        if evidence and entry.evidence:
            console.print(Text(f"{'':16}{_evidence(entry.evidence)}", style="dim"))
    if incident.actions:
        done = ", ".join(f"{a.action} by {a.method}: {a.result}" for a in incident.actions)
        console.print(f"    actions: {escape(done)}")
    if incident.recovered_after_s is not None:
        console.print(f"    [green]recovered after {incident.recovered_after_s:.1f} s[/green] "
                      "(finding raised → the canary that proved the fix)")
    if incident.recording is not None:
        size = _bytes(incident.recording.bytes)
        console.print(
            f"    [dim]recording: {size}; save it with "
            f"`watchdogctl history --trace {incident.id} -o incident-{incident.id}.trace.jsonl`[/dim]"
        )


def _heading(incident: Incident) -> Text:
    text = Text()
    text.append(f"#{incident.id}", style="bold")
    text.append(f"  {incident.target}  ")
    text.append(incident.state.upper(), style="bold yellow" if incident.is_open else "green")
    text.append("  ")
    text.append(incident.severity, style=_SEVERITY_STYLE.get(incident.severity, ""))
    text.append(f"  {local(incident.opened_at)}")
    if incident.closed_at is not None:
        duration = format_duration(round((incident.closed_at - incident.opened_at).total_seconds()))
        text.append(f" → {local(incident.closed_at)} ({duration})")
    else:
        text.append(" → now")
    return text


def _entry(entry: TimelineEntry, with_date: bool) -> str:
    when = local(entry.at, with_date=with_date)
    style = _KIND_STYLE.get(entry.kind, "")
    finding = entry.finding or ""
    return f"    {when:<10}  [{style}]{entry.kind:<7}[/]  {escape(finding):<13} {escape(entry.summary)}"


def _evidence(evidence: dict) -> str:
    return " ".join(f"{k}={json.dumps(v, separators=(',', ':'), default=str)}" for k, v in evidence.items())


def _bytes(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.1f} MiB"
    if size >= 1024:
        return f"{size / 1024:.0f} KiB"
    return f"{size} B"
