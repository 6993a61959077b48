"""What the actor must not forget across a crash: actions (intent first), pauses, the budget.

It lives in the incident store's database (``state.db``, migration 2 in
``watchdog/incidents/schema.py``) through a connection of its own, used from one
worker thread (the facade in :mod:`watchdog.act.actor`). An action's row is
written **before** it is carried out (result NULL: the intent) and completed
after; a row still without a result when the actor starts belongs to a watchdog
that died mid-action, and is marked ``interrupted``, never carried out again.
Restarts are counted from these rows, so a crash-looping watchdog cannot reset
its restart budget.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watchdog.incidents.schema import migrate
from watchdog.incidents.store import MEMORY

#: What counts against the restart budget: every restart attempted, whatever came of it.
_COUNTED = ("ok", "failed", "timeout", "interrupted")


@dataclass(frozen=True, slots=True)
class ActionRow:
    id: int
    target: str
    incident_id: int | None
    finding: str | None
    step: int | None
    action: str
    method: str
    result: str | None
    started: float
    finished: float | None
    detail: str
    manual: bool


@dataclass(frozen=True, slots=True)
class Pause:
    target: str
    until: float | None  # None: until resumed
    at: float
    reason: str


class ActionStore:
    """Blocking; one connection; call from one thread."""

    def __init__(self, path: str | Path | None, busy_timeout: float = 5.0) -> None:
        self.path = None if path is None else Path(path)
        target = MEMORY if self.path is None else str(self.path)
        self._conn = sqlite3.connect(target, isolation_level=None, timeout=busy_timeout, check_same_thread=False)
        if self.path is not None:
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
        migrate(self._conn)  # a no-op when the incident store already did it

    def close(self) -> None:
        self._conn.close()

    # --- actions ------------------------------------------------------------------------------

    def begin(self, *, target: str, incident_id: int | None, finding: str | None, step: int | None, action: str,
              method: str, started: float, manual: bool = False, detail: str = "") -> int:
        """Write the intent (committed before the action runs); returns its id."""
        cur = self._conn.execute(
            "INSERT INTO actions (target, incident_id, finding, step, action, method, result, started, detail, manual)"
            " VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?, ?)",
            (target, incident_id, finding, step, action, method, started, detail, int(manual)),
        )
        return int(cur.lastrowid or 0)

    def finish(self, action_id: int, *, result: str, finished: float, detail: str,
               evidence: dict[str, Any] | None = None) -> None:
        self._conn.execute(
            "UPDATE actions SET result = ?, finished = ?, detail = ?, evidence = ? WHERE id = ?",
            (result, finished, detail, json.dumps(evidence or {}, default=str), action_id),
        )

    def record(self, **fields: Any) -> int:
        """An action decided and finished at once (skipped, would)."""
        result, finished, detail = fields.pop("result"), fields.pop("finished"), fields.pop("detail", "")
        action_id = self.begin(**fields, detail=detail)
        self.finish(action_id, result=result, finished=finished, detail=detail)
        return action_id

    def unfinished(self) -> list[ActionRow]:
        return self._rows("WHERE result IS NULL ORDER BY id", ())

    def interrupt(self, action_id: int, finished: float, detail: str) -> None:
        self._conn.execute(
            "UPDATE actions SET result = 'interrupted', finished = ?, detail = ? WHERE id = ? AND result IS NULL",
            (finished, detail, action_id),
        )

    def restart_starts(self, target: str, since: float) -> list[float]:
        marks = ",".join("?" for _ in _COUNTED)
        rows = self._conn.execute(
            f"SELECT started FROM actions WHERE target = ? AND action = 'restart' AND started >= ?"
            f" AND (result IS NULL OR result IN ({marks}))",
            (target, since, *_COUNTED),
        ).fetchall()
        return [row[0] for row in rows]

    def for_incident(self, incident_id: int) -> list[ActionRow]:
        return self._rows("WHERE incident_id = ? ORDER BY id", (incident_id,))

    def recent(self, target: str, limit: int = 20) -> list[ActionRow]:
        return self._rows("WHERE target = ? ORDER BY id DESC LIMIT ?", (target, limit))

    def _rows(self, where: str, args: tuple[Any, ...]) -> list[ActionRow]:
        rows = self._conn.execute(
            "SELECT id, target, incident_id, finding, step, action, method, result, started, finished, detail, manual"
            f" FROM actions {where}", args,
        ).fetchall()
        return [ActionRow(*row[:11], manual=bool(row[11])) for row in rows]

    # --- recovery time ------------------------------------------------------------------------

    def set_recovered(self, incident_id: int, seconds: float) -> None:
        self._conn.execute("UPDATE incidents SET recovered_after_s = ? WHERE id = ?", (round(seconds, 1), incident_id))

    # --- pauses and budget resets -------------------------------------------------------------

    def pause(self, target: str, *, at: float, until: float | None, reason: str) -> None:
        self._conn.execute(
            "INSERT INTO target_control (target, paused, paused_until, paused_at, reason) VALUES (?, 1, ?, ?, ?)"
            " ON CONFLICT (target) DO UPDATE SET paused = 1, paused_until = excluded.paused_until,"
            " paused_at = excluded.paused_at, reason = excluded.reason",
            (target, until, at, reason),
        )

    def resume(self, target: str, *, at: float) -> None:
        """Unpause, and start the restart budget afresh (like ``systemctl reset-failed``)."""
        self._conn.execute(
            "INSERT INTO target_control (target, paused, budget_reset_at) VALUES (?, 0, ?)"
            " ON CONFLICT (target) DO UPDATE SET paused = 0, paused_until = NULL, reason = '',"
            " budget_reset_at = excluded.budget_reset_at",
            (target, at),
        )

    def paused(self, now: float) -> dict[str, Pause]:
        rows = self._conn.execute(
            "SELECT target, paused_until, paused_at, reason FROM target_control WHERE paused = 1"
        ).fetchall()
        return {r[0]: Pause(r[0], r[1], r[2] or 0.0, r[3]) for r in rows if r[1] is None or r[1] > now}

    def budget_reset_at(self, target: str) -> float | None:
        row = self._conn.execute("SELECT budget_reset_at FROM target_control WHERE target = ?", (target,)).fetchone()
        return None if row is None else row[0]
