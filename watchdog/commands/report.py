"""``watchdogctl report``: reliability per target and model, from the state directory.

The table people built by hand to compare models: canaries sent and failed,
hangs, restarts, failed unloads, OOMs, truncations, time to detect and to
recover (median, p95), and hangs per 100 canaries. Read-only, straight from
``<state_dir>/state.db`` (SQLite in WAL mode allows it while the daemon runs),
so it works with the daemon stopped too.

Where the numbers come from:

- canaries: the ``canary_counts`` table (schema 2), per hour; a state dir from
  before it has none, and the columns say so (``null`` in JSON, ``-`` in text);
- hangs, failed unloads, OOMs (``oom`` and ``fragmentation``), truncations:
  ``raised`` timeline entries of incidents opened in the period; the model is
  the finding's evidence ``model`` (the detection engine adds the target's
  loaded models when a detector does not name one);
- restarts: timeline entries (of any kind, notes included) whose evidence has
  ``"action": "restart"`` — the field the act package writes when it restarts a
  server (``{"action": "restart", "ok": true, ...}``; ``"ok": false`` is a
  failed attempt and is not counted);
- time to detect: a raised entry's evidence ``detect_s``, else ``stalled_s`` or
  ``stopped_s`` (how long the problem had lasted when it was raised);
- time to recover: from an incident's opening to its closing, closed ones only.
"""

from __future__ import annotations

import json
import math
import sqlite3
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DB_NAME = "state.db"
OOM_FINDINGS = frozenset({"oom", "fragmentation"})
NO_MODEL = "-"


class ReportError(Exception):
    """The state directory cannot be read; the message says why."""


@dataclass
class Row:
    target: str
    model: str
    canaries_sent: int | None = None
    canaries_failed: int | None = None
    hangs: int = 0
    restarts: int = 0
    failed_unloads: int = 0
    ooms: int = 0
    truncations: int = 0
    detect_s: list[float] = field(default_factory=list)
    recover_s: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("detect_s")
        out.pop("recover_s")
        out["time_to_detect_s"] = _stats(self.detect_s)
        out["time_to_recover_s"] = _stats(self.recover_s)
        out["hangs_per_100_canaries"] = (
            round(100.0 * self.hangs / self.canaries_sent, 2) if self.canaries_sent else None
        )
        return out


def _stats(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "median": None, "p95": None}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return {"n": len(values), "median": round(statistics.median(ordered), 1), "p95": round(p95, 1)}


def build_report(state_dir: str | Path, since: float | None) -> list[dict[str, Any]]:
    """One summary per (target, model), sorted; ``since`` is Unix time (None: everything kept)."""
    path = Path(state_dir) / DB_NAME
    if not path.exists():
        raise ReportError(f"{path}: no state database (has the daemon run with this state_dir?)")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise ReportError(f"{path}: cannot open ({exc})") from None
    try:
        return _report(conn, -math.inf if since is None else since)
    except sqlite3.Error as exc:
        raise ReportError(f"{path}: cannot read ({exc})") from None
    finally:
        conn.close()


def _succeeded(evidence: dict[str, Any]) -> bool:
    """An action's record that says it was done: ``result: ok`` (or, older, not ``ok: false``)."""
    if "result" in evidence:
        return evidence["result"] == "ok"
    return evidence.get("ok", True) is not False


def _report(conn: sqlite3.Connection, since: float) -> list[dict[str, Any]]:
    rows: dict[tuple[str, str], Row] = {}

    def row(target: str, model: str) -> Row:
        key = (target, model or NO_MODEL)
        if key not in rows:
            rows[key] = Row(target, key[1])
        return rows[key]

    incidents = conn.execute(
        "SELECT id, target, state, opened_at, closed_at FROM incidents WHERE opened_at >= ? ORDER BY id", (since,)
    ).fetchall()
    entries: dict[int, list[tuple[str, str | None, dict[str, Any]]]] = defaultdict(list)
    for incident_id, kind, finding, evidence in conn.execute(
        "SELECT t.incident_id, t.kind, t.finding, t.evidence FROM timeline t JOIN incidents i"
        " ON i.id = t.incident_id WHERE i.opened_at >= ? ORDER BY t.id", (since,)
    ):
        entries[incident_id].append((kind, finding, _json(evidence)))
    for incident_id, target, state, opened_at, closed_at in incidents:
        timeline = entries.get(incident_id, [])
        model = next((str(e["model"]) for k, _, e in timeline if k == "raised" and e.get("model")), NO_MODEL)
        counted: set[str] = set()  # a finding raised again in one incident (a flap, a daemon restart) is one
        for kind, finding, evidence in timeline:
            this = row(target, str(evidence.get("model") or model))
            if evidence.get("action") == "restart" and _succeeded(evidence):
                this.restarts += 1
            if kind != "raised" or finding in counted:
                continue
            counted.add(str(finding))
            if finding == "hang":
                this.hangs += 1
            elif finding == "failed_unload":
                this.failed_unloads += 1
            elif finding in OOM_FINDINGS:
                this.ooms += 1
            elif finding == "truncation":
                this.truncations += 1
            detect = next((evidence[k] for k in ("detect_s", "stalled_s", "stopped_s")
                           if isinstance(evidence.get(k), (int, float))), None)
            if detect is not None:
                this.detect_s.append(float(detect))
        if state == "closed" and closed_at is not None:
            row(target, model).recover_s.append(max(0.0, float(closed_at) - float(opened_at)))
    if _has_table(conn, "canary_counts"):
        hour = -math.inf if since == -math.inf else math.floor(since / 3600.0) * 3600.0
        for target, model, sent, failed in conn.execute(
            "SELECT target, model, SUM(sent), SUM(failed) FROM canary_counts WHERE hour >= ? GROUP BY target, model",
            (hour,),
        ):
            this = row(target, model)
            this.canaries_sent = (this.canaries_sent or 0) + int(sent)
            this.canaries_failed = (this.canaries_failed or 0) + int(failed)
        for this in rows.values():  # counted, just none sent: zero, not unknown
            if this.canaries_sent is None:
                this.canaries_sent = this.canaries_failed = 0
    return [rows[key].summary() for key in sorted(rows)]


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def _json(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def render_report(report: list[dict[str, Any]], period: str) -> None:
    """The report as a table on the terminal."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Reliability, {period}", title_justify="left")
    for name in ("target", "model", "canaries", "failed", "hangs", "/100", "restarts", "unloads", "OOMs",
                 "trunc.", "detect p50/p95", "recover p50/p95"):
        table.add_column(name, justify="left" if name in ("target", "model") else "right")
    for r in report:
        table.add_row(
            r["target"], r["model"], _n(r["canaries_sent"]), _n(r["canaries_failed"]), str(r["hangs"]),
            _n(r["hangs_per_100_canaries"]), str(r["restarts"]), str(r["failed_unloads"]), str(r["ooms"]),
            str(r["truncations"]), _pair(r["time_to_detect_s"]), _pair(r["time_to_recover_s"]),
        )
    console = Console()
    if not report:
        console.print(f"nothing recorded {period}")
        return
    console.print(table)


def _n(value: Any) -> str:
    return "-" if value is None else str(value)


def _pair(stats: dict[str, Any]) -> str:
    if not stats["n"]:
        return "-"
    return f"{_secs(stats['median'])} / {_secs(stats['p95'])}"


def _secs(value: float) -> str:
    return f"{value:.0f}s" if value < 120 else f"{value / 60:.1f}m"
