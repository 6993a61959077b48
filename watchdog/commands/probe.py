"""``watchdogctl probe``: one round of every probe against the configured targets, never acting.

The output is a table for people or, with ``--json``, JSON lines that are a
valid trace-v1 file (the header, then the records with their trace field
names), so a probe's output can be kept and replayed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from watchdog.config.model import Config
from watchdog.daemon.builder import make_suite
from watchdog.probes.base import MonotonicClock
from watchdog.probes.round import run_round
from watchdog.trace.io import dumps_record
from watchdog.trace.records import (
    Canary,
    GpuSample,
    Header,
    LogLine,
    ProcessSample,
    Record,
    ServerPoll,
)


@dataclass
class ProbeReport:
    """What one round saw."""

    header: Header
    records: list[Record]
    canary_skipped: dict[str, str] = field(default_factory=dict)
    gpu_status: str = ""
    gpu_timings: dict[str, dict[str, float | int]] = field(default_factory=dict)
    log_sources: dict[str, str] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def of(self, kind: type, target: str | None = None) -> list[Any]:
        return [r for r in self.records if isinstance(r, kind) and (target is None or getattr(r, "target", None)
                                                                        == target)]


async def probe_once(
    config: Config,
    targets: Sequence[str] | None = None,
    *,
    canary: bool = True,
    logs: bool = True,
    log_lines: int = 500,
    suite_options: dict[str, Any] | None = None,
) -> ProbeReport:
    """Run every probe once for ``targets`` (None: all enabled) and collect the records."""
    clock = MonotonicClock()
    records: list[Record] = []
    started = time.monotonic()
    suite = make_suite(config, clock, records.append, targets=targets, **(suite_options or {}))
    try:
        notes = await run_round(suite, canary=canary, logs=logs, log_lines=log_lines)
        header = suite.header(clock.wall_start)
        return ProbeReport(
            header=header,
            records=sorted(records, key=lambda r: r.t or 0.0),
            canary_skipped=notes.canary_skipped,
            gpu_status=suite.gpu.status if suite.gpu is not None else "disabled (gpu_backend = none)",
            gpu_timings=suite.gpu.timings() if suite.gpu is not None else {},
            log_sources={n: p.logs.source.description for n, p in suite.targets.items() if p.logs is not None},
            elapsed_s=time.monotonic() - started,
        )
    finally:
        await suite.aclose()


# --- output -----------------------------------------------------------------------------------

def json_lines(report: ProbeReport) -> list[str]:
    """The header and every record, one JSON object per line (a trace-v1 file)."""
    return [dumps_record(report.header)] + [dumps_record(r) for r in report.records]


def render(report: ProbeReport, console: Console) -> None:
    """Tables for people: targets, GPUs, and the log lines that matter; details as notes below."""
    notes: list[str] = []
    table = Table(title="Targets", title_justify="left")
    for column in ("target", "kind", "state", "models", "run/wait", "tokens", "canary", "process"):
        table.add_column(column, overflow="fold")
    kinds = {t.name: t.kind for t in report.header.targets}
    for target in report.header.targets:
        name = target.name
        poll = _last(report.of(ServerPoll, name))
        canary = _last(report.of(Canary, name))
        proc = _last(report.of(ProcessSample, name))
        if poll is not None and poll.error:
            notes.append(f"{name}: server {poll.state}: {poll.error}")
        skipped = report.canary_skipped.get(name)
        if canary is None and skipped:
            notes.append(f"{name}: canary skipped: {skipped}")
        elif canary is not None and not canary.ok and canary.extra.get("detail"):
            notes.append(f"{name}: canary {canary.error}: {canary.extra['detail']}")
        table.add_row(
            name,
            kinds.get(name, ""),
            _state(poll),
            _models(poll),
            _run_wait(poll),
            _num(poll.gen_tokens_total) if poll else "-",
            _canary(canary, skipped),
            _process(proc),
        )
    console.print(table)

    gpus = report.of(GpuSample)
    if gpus:
        gpu_table = Table(title=f"GPUs ({report.gpu_status})", title_justify="left")
        for column in ("gpu", "name", "util", "memory", "temp", "power", "processes"):
            gpu_table.add_column(column, overflow="fold")
        names = {g.index: g for g in report.header.gpus}
        for sample in gpus:
            device = names.get(sample.index)
            total = device.mem_total_mib if device else None
            gpu_table.add_row(
                str(sample.index),
                device.name if device else "",
                f"[red]{sample.error}[/red]" if sample.error else _pct(sample.util),
                "-" if sample.mem_used_mib is None else f"{sample.mem_used_mib} / {total or '?'} MiB",
                "-" if sample.temp_c is None else f"{sample.temp_c:.0f} °C",
                "-" if sample.power_w is None else f"{sample.power_w:.0f} W",
                "\n".join(
                    f"{p.pid} {p.target or '(no target)'} {p.mem_mib if p.mem_mib is not None else '?'} MiB"
                    for p in sample.procs
                ) or "-",
            )
        console.print(gpu_table)
    else:
        console.print(f"GPUs: {report.gpu_status}")

    lines = report.of(LogLine)
    if lines:
        log_table = Table(title="Log lines that matter", title_justify="left")
        log_table.add_column("target")
        log_table.add_column("pattern")
        log_table.add_column("line", overflow="fold")
        for line in lines:
            log_table.add_row(line.target, str(line.extra.get("pattern", "")), line.line)
        console.print(log_table)
    for note in notes:
        console.print(f"  {note}", highlight=False, markup=False)
    console.print(f"[dim]one round in {report.elapsed_s:.2f}s; nothing was changed on any server[/dim]")


def _last(items: list[Any]) -> Any:
    return items[-1] if items else None


def _state(poll: ServerPoll | None) -> str:
    if poll is None:
        return "-"
    colour = {"ready": "green", "loading": "yellow"}.get(poll.state, "red")
    return f"[{colour}]{poll.state}[/{colour}]"


def _models(poll: ServerPoll | None) -> str:
    if poll is None or not poll.models:
        return "-"
    parts = []
    for model in poll.models:
        bits = [model.name]
        if model.vram_mib is not None:
            bits.append(f"{model.vram_mib} MiB")
        if model.extra.get("keep_alive") == "forever":
            bits.append("kept forever")
        elif model.expires_in_s is not None:
            bits.append(f"expires in {model.expires_in_s:.0f}s")
        parts.append(" ".join(bits[:1]) + (f" ({', '.join(bits[1:])})" if len(bits) > 1 else ""))
    return "\n".join(parts)


def _run_wait(poll: ServerPoll | None) -> str:
    if poll is None or (poll.running is None and poll.waiting is None):
        return "-"
    return f"{_num(poll.running)}/{_num(poll.waiting)}"


def _canary(canary: Canary | None, skipped: str | None) -> str:
    if canary is None:
        return "[dim]skipped[/dim]" if skipped else "-"
    if canary.ok:
        rate = f", {canary.tokens_per_s:.1f} tok/s" if canary.tokens_per_s else ""
        ttft = f"TTFT {canary.ttft_s:.3f}s" if canary.ttft_s is not None else "no tokens"
        return f"[green]ok[/green] {ttft}, {canary.tokens} tok{rate}"
    phase = canary.extra.get("phase")
    return f"[red]{canary.error}[/red]" + (f" ({phase})" if phase else "")


def _process(proc: ProcessSample | None) -> str:
    if proc is None:
        return "-"
    bits = [f"pid {proc.pid}" if proc.pid else "no pid", proc.status]
    if proc.rss_mib is not None:
        bits.append(f"{proc.rss_mib:.0f} MiB RSS")
    if proc.cpu_percent is not None:
        bits.append(f"{proc.cpu_percent:.0f}% CPU")
    return ", ".join(bits)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if isinstance(value, float) else str(value)
