"""``replay --explain``: a readable timeline of what the detectors concluded, and why."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from watchdog.commands.replay import ReplayResult
from watchdog.detect.view import secs
from watchdog.trace.records import Event, LogLine


def explain(result: ReplayResult, name: str, console: Console) -> None:
    header = result.header
    targets = ", ".join(
        f"{t.name} ({t.kind}{', GPU ' + ','.join(map(str, t.gpus)) if t.gpus else ''})" for t in header.targets
    ) or "none named"
    gpus = ", ".join(
        f"{g.index}: {g.name or 'GPU'}" + (f" ({g.mem_total_mib / 1024:.0f} GiB)" if g.mem_total_mib else "")
        for g in header.gpus
    ) or "none named"
    console.print(f"[bold]{name}[/bold]: host {header.host or '?'}, {secs(result.duration)}, "
                  f"{result.records} records")
    console.print(f"  targets: {targets}")
    console.print(f"  GPUs: {gpus}")
    for problem in result.problems:
        console.print(f"  [yellow]trace problem[/yellow] {problem}")
    console.print()

    rows: list[tuple[float, int, str, str, str, str]] = []
    for record in result.context:
        if isinstance(record, Event):
            rows.append((record.t, 1, record.target, "event", record.event, record.model or ""))
        elif isinstance(record, LogLine):
            rows.append((record.t, 1, record.target, "log", "", record.line.strip()[:120]))
    for finding in result.findings:
        state = "[bold red]RAISED[/bold red]" if finding.state == "raised" else "[green]cleared[/green]"
        rows.append((finding.t, 0, finding.target, state, finding.finding, finding.summary))
    rows.sort(key=lambda r: (r[0], r[1]))
    timeline = Table(title="timeline", show_lines=False, expand=False)
    for column in ("t (s)", "target", "what", "finding", "why"):
        timeline.add_column(column, overflow="fold")
    for t, _, target, what, finding, why in rows:
        timeline.add_row(f"{t:.1f}", target, what, finding, why)
    if rows:
        console.print(timeline)
    else:
        console.print("nothing was raised: every target looked healthy throughout.")

    summary = Table(title="findings")
    for column in ("finding", "target", "raised at", "cleared at", "lasted"):
        summary.add_column(column)
    open_: dict[tuple[str, str], float] = {}
    for finding in result.findings:
        key = (finding.target, finding.finding)
        if finding.state == "raised":
            open_[key] = finding.t
        elif key in open_:
            start = open_.pop(key)
            summary.add_row(finding.finding, finding.target, f"{start:.1f}", f"{finding.t:.1f}",
                            secs(finding.t - start))
    for (target, kind), start in open_.items():
        summary.add_row(kind, target, f"{start:.1f}", "still raised", secs(result.duration - start))
    if result.findings:
        console.print(summary)
