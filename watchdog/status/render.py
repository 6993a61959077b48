"""Showing a status snapshot: rich tables, the exit code, and the one-line summary.

Shared by ``watchdogctl status`` (a snapshot from the daemon), ``watchdogctl
check`` (a snapshot from one round without a daemon) and the daemon's systemd
``STATUS=`` line.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from watchdog.config.durations import format_duration
from watchdog.status.summary import exit_code_for, summary_line  # noqa: F401 - re-exported

if TYPE_CHECKING:
    # Either form of a snapshot: the pydantic models (the daemon, `check`, the demo) or their
    # plain views (`watchdogctl status`, which must not import pydantic: issue 15). Same fields.
    from watchdog.status import model, view

    StatusSnapshot = model.StatusSnapshot | view.StatusSnapshot
    TargetStatus = model.TargetStatus | view.TargetStatus
    GpuStatus = model.GpuStatus | view.GpuStatus
    IncidentRef = model.IncidentRef | view.IncidentRef
    ActiveFinding = model.ActiveFinding | view.ActiveFinding

_STYLE = {"ok": "green", "degraded": "yellow", "critical": "bold red", "unknown": "dim"}


def render_status(snapshot: StatusSnapshot, console: Console | None = None) -> None:
    """Print the daemon line, the targets table, the GPUs table and the active findings."""
    console = console or Console()
    console.print(_daemon_line(snapshot))
    console.print(targets_table(snapshot))
    if snapshot.gpus:
        console.print(gpus_table(snapshot))
    if snapshot.alerts:
        console.print(alerts_table(snapshot))
    findings = [f for t in snapshot.targets for f in t.findings if not f.target.startswith("gpu:")]
    findings += [f for g in snapshot.gpus for f in g.findings]
    if findings:
        console.print(Text("Findings", style="bold"))
        for finding in findings:
            line = Text("  ")
            line.append(f"{finding.target} {finding.finding}", style=_STYLE[_severity_state(finding)])
            line.append(f" (since {_local(finding.since)}): {finding.summary}")
            console.print(line)
    for problem in snapshot.daemon.problems:
        console.print(Text(f"daemon problem: {problem}", style="yellow"))


def _daemon_line(snapshot: StatusSnapshot) -> Text:
    d = snapshot.daemon
    text = Text()
    text.append(snapshot.state.upper(), style=_STYLE[snapshot.state])
    text.append(f"  inference-watchdog {d.version}")
    if d.host:
        text.append(f" on {d.host}")
    if d.uptime_s is not None:
        text.append(f", up {format_duration(round(d.uptime_s))}")
    if d.mode:
        text.append(f", mode {d.mode}")
    if not d.ready:
        text.append(", first round not done yet", style="yellow")
    if d.config_path:
        text.append(f", config {d.config_path}")
    if d.last_reload is not None:
        outcome = "ok" if d.last_reload.ok else f"REFUSED ({d.last_reload.message})"
        text.append(f", last reload {_local(d.last_reload.at)} {outcome}",
                    style=None if d.last_reload.ok else "yellow")
    return text


def targets_table(snapshot: StatusSnapshot) -> Table:
    table = Table(title="Targets", title_justify="left", expand=False)
    for column in ("target", "state", "server", "models", "last canary", "GPUs", "incident"):
        table.add_column(column)
    for target in snapshot.targets:
        table.add_row(
            f"{escape(target.name)}\n[dim]{target.kind}[/dim]",
            Text(target.state, style=_STYLE[target.state]),
            _server_cell(target),
            "\n".join(escape(_model(m.name, m.vram_mib)) for m in target.models) or "-",
            _canary_cell(target),
            "\n".join(_target_gpu(g) for g in target.gpus) or "-",
            _incident_cell(target.incident) + _action_cell(target),
        )
    if not snapshot.targets:
        table.add_row("(none configured)", "", "", "", "", "", "")
    return table


_SINK_STYLE = {"ok": "green", "failing": "red", "idle": "dim"}


def alerts_table(snapshot: StatusSnapshot) -> Table:
    """Each alert sink by name (never its URL): health, outbox depth, last delivery and error."""
    table = Table(title="Alerts", title_justify="left", expand=False)
    for column in ("sink", "kind", "state", "outbox", "delivered", "dropped", "last delivered", "last error"):
        table.add_column(column)
    for sink in snapshot.alerts:
        table.add_row(
            escape(sink.name),
            sink.kind,
            Text(sink.state, style=_SINK_STYLE.get(sink.state, "")),
            Text(str(sink.pending), style="yellow" if sink.pending else ""),
            str(sink.delivered),
            str(sink.dropped),
            _local(sink.last_delivered_at) if sink.last_delivered_at else "-",
            escape(sink.last_error) if sink.last_error and sink.state == "failing" else "-",
        )
    return table


def gpus_table(snapshot: StatusSnapshot) -> Table:
    table = Table(title="GPUs", title_justify="left", expand=False)
    for column in ("GPU", "state", "util", "memory", "temp", "power", "XIDs", "targets", "incident"):
        table.add_column(column)
    for gpu in snapshot.gpus:
        table.add_row(
            f"{gpu.index}" + (f" [dim]{escape(gpu.name)}[/dim]" if gpu.name else ""),
            Text(gpu.state, style=_STYLE[gpu.state]),
            _pct(gpu.util) if not gpu.error else Text(gpu.error, style="red"),
            _memory(gpu.mem_used_mib, gpu.mem_total_mib),
            "-" if gpu.temp_c is None else f"{gpu.temp_c:.0f} °C",
            "-" if gpu.power_w is None else f"{gpu.power_w:.0f} W",
            _xids(gpu),
            escape(", ".join(gpu.targets)) or "-",
            _incident_cell(gpu.incident),
        )
    return table


def _server_cell(target: TargetStatus) -> str:
    server = target.server
    if server is None:
        return "-"
    parts = [server.state]
    if server.running is not None or server.waiting is not None:
        parts.append(f"{server.running if server.running is not None else '?'} running, "
                     f"{server.waiting if server.waiting is not None else '?'} waiting")
    if server.error:
        parts.append(escape(server.error))
    parts.append(f"[dim]{_ago(server.age_s)}[/dim]")
    return "\n".join(parts)


def _canary_cell(target: TargetStatus) -> str:
    canary = target.last_canary
    if canary is None:
        return "-"
    head = "ok" if canary.ok else f"[red]{escape(canary.error or 'failed')}[/red]"
    parts = [head]
    if canary.ttft_s is not None:
        parts.append(f"TTFT {canary.ttft_s:.2f} s")
    if canary.tokens_per_s is not None:
        parts.append(f"{canary.tokens_per_s:.1f} tok/s")
    return " ".join(parts[:1]) + ("\n" + ", ".join(parts[1:]) if parts[1:] else "") + f"\n[dim]{_ago(canary.age_s)}[/dim]"


def _target_gpu(gpu) -> str:  # TargetGpu
    text = f"{gpu.index}: {_pct(gpu.util)} {_memory(gpu.mem_used_mib, gpu.mem_total_mib)}"
    if gpu.target_mem_mib is not None:
        text += f" (holds {_mib(gpu.target_mem_mib)})"
    return text


def _action_cell(target: TargetStatus) -> str:
    """Under the incident: a pause, a spent or low restart budget, an action in progress."""
    action = target.action
    if action is None:
        return ""
    parts = []
    if action.paused:
        until = "until resumed" if action.paused_until is None else f"until {_local(action.paused_until)}"
        parts.append(f"[bold yellow]paused {until}[/bold yellow]")
        if action.paused_reason:
            parts.append(f"[dim]{escape(action.paused_reason)[:80]}[/dim]")
    if action.state not in ("watching",):
        parts.append(f"act: {action.state}")
    if action.restarts_left is not None and action.max_restarts is not None:
        parts.append(f"[dim]{action.restarts_left}/{action.max_restarts} restarts left[/dim]")
    if action.mode and action.mode != "act":
        parts.append(f"[dim]mode {action.mode}[/dim]")
    return ("\n" + "\n".join(parts)) if parts else ""


def _incident_cell(incident: IncidentRef | None) -> str:
    if incident is None:
        return "-"
    style = "bold red" if incident.severity == "critical" else "yellow"
    findings = ", ".join(incident.findings) or "clearing"
    return f"[{style}]#{incident.id}[/{style}] {findings}\n[dim]since {_local(incident.since)}[/dim]"


def _xids(gpu: GpuStatus) -> str:
    if not gpu.xids:
        return "-"
    last = gpu.xids[-1]
    return f"{len(gpu.xids)} (last {last.xid}, {_ago(last.age_s)})"


def _severity_state(finding: ActiveFinding) -> str:
    return "critical" if finding.severity == "critical" else "degraded"


def _model(name: str, vram: float | None) -> str:
    return name if vram is None else f"{name} ({_mib(vram)})"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _mib(value: float) -> str:
    return f"{value / 1024:.1f} GiB" if value >= 1024 else f"{value:.0f} MiB"


def _memory(used: float | None, total: float | None) -> str:
    if used is None:
        return "-"
    return _mib(used) if total is None else f"{_mib(used)}/{_mib(total)}"


def _local(moment: datetime) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _ago(age: float) -> str:
    return f"{format_duration(round(age))} ago" if age >= 1 else "just now"
