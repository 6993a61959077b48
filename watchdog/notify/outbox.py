"""The alert outbox: every message is stored before it is sent, and kept until delivered or expired.

SQLite in ``<state_dir>/alerts.db`` (WAL, ``synchronous = FULL``: a message
stored is a message that survives a crash or power loss). One row per message
per sink; ``(sink, key)`` is unique, so the same transition enqueued twice (a
replayed event, a reminder computed again after a restart) is one message.

States: ``pending`` (waiting for ``not_before``), ``sending`` (an attempt is
under way; after a crash it is pending again and resent with the same
idempotency key, so a receiver that dedupes sees it once), ``delivered``,
``failed`` (the receiver refused the message itself), ``expired`` (retried
until ``expires_at`` without success), ``cancelled`` (a held "resolved"
withdrawn because the incident reopened). Like the incident store, this class
does no threading of its own: the notifier calls it from one worker thread.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from watchdog.incidents.store import transaction
from watchdog.notify.alert import Alert

DB_NAME = "alerts.db"
KEEP_DONE_S = 7 * 86400.0
_SCHEMA_VERSION = 1
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS outbox (
        id INTEGER PRIMARY KEY,
        sink TEXT NOT NULL,
        key TEXT NOT NULL,
        incident_id INTEGER,
        event TEXT NOT NULL,
        alert TEXT NOT NULL,
        created_at REAL NOT NULL,
        not_before REAL NOT NULL,
        expires_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL DEFAULT 'pending'
            CHECK (state IN ('pending', 'sending', 'delivered', 'failed', 'expired', 'cancelled')),
        last_error TEXT,
        done_at REAL,
        UNIQUE (sink, key)
    )""",
    "CREATE INDEX IF NOT EXISTS outbox_due ON outbox(sink, state, not_before)",
    "CREATE INDEX IF NOT EXISTS outbox_incident ON outbox(incident_id)",
)
_OPEN = ("pending", "sending")


@dataclass(frozen=True)
class Row:
    id: int
    sink: str
    key: str
    alert: Alert
    not_before: float
    expires_at: float
    attempts: int
    state: str
    last_error: str | None


@dataclass(frozen=True)
class SinkCounts:
    pending: int = 0
    delivered: int = 0
    failed: int = 0
    expired: int = 0
    last_delivered_at: float | None = None


class Outbox:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        memory = str(path) == ":memory:"
        if not memory:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o640))
        self._conn = sqlite3.connect(str(path), isolation_level=None, timeout=5.0)
        if not memory:
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > _SCHEMA_VERSION:
            self._conn.close()
            raise sqlite3.DatabaseError(f"{path}: outbox schema {version} is newer than this watchdog knows")
        with self._tx():
            for statement in _SCHEMA:
                self._conn.execute(statement)
            self._conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            # Attempts a crash interrupted: send again (same idempotency key).
            self._conn.execute("UPDATE outbox SET state = 'pending' WHERE state = 'sending'")

    def close(self) -> None:
        self._conn.close()

    def _tx(self) -> AbstractContextManager[None]:
        return transaction(self._conn)

    # --- writes -------------------------------------------------------------------------------

    def add(self, sink: str, alert: Alert, now: float, not_before: float, expires_at: float) -> bool:
        """Store one message for one sink; False when that sink already has this key (a duplicate)."""
        with self._tx():
            cursor = self._conn.execute(
                "INSERT OR IGNORE INTO outbox (sink, key, incident_id, event, alert, created_at, not_before,"
                " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (sink, alert.id, alert.incident_id, alert.event, alert.model_dump_json(), now, not_before,
                 expires_at),
            )
        return cursor.rowcount > 0

    def has_key(self, sink: str, key: str) -> bool:
        row = self._conn.execute("SELECT 1 FROM outbox WHERE sink = ? AND key = ?", (sink, key)).fetchone()
        return row is not None

    def cancel(self, incident_id: int, event: str) -> int:
        """Withdraw messages of an incident not sent yet (a held "resolved" when the incident reopens)."""
        with self._tx():
            cursor = self._conn.execute(
                "UPDATE outbox SET state = 'cancelled', done_at = created_at"
                " WHERE incident_id = ? AND event = ? AND state IN ('pending', 'sending')",
                (incident_id, event),
            )
        return cursor.rowcount

    def retry_now(self, now: float) -> int:
        """At start: messages that failed before are tried again at once (not held ones never tried)."""
        with self._tx():
            cursor = self._conn.execute(
                "UPDATE outbox SET not_before = ? WHERE state = 'pending' AND attempts > 0 AND not_before > ?",
                (now, now))
        return cursor.rowcount

    def sending(self, row_id: int) -> None:
        with self._tx():
            self._conn.execute("UPDATE outbox SET state = 'sending', attempts = attempts + 1 WHERE id = ?",
                               (row_id,))

    def delivered(self, row_id: int, now: float) -> None:
        with self._tx():
            self._conn.execute("UPDATE outbox SET state = 'delivered', done_at = ?, last_error = NULL WHERE id = ?",
                               (now, row_id))

    def retry(self, row_id: int, error: str, not_before: float) -> None:
        with self._tx():
            self._conn.execute("UPDATE outbox SET state = 'pending', last_error = ?, not_before = ? WHERE id = ?",
                               (error, not_before, row_id))

    def defer(self, row_id: int, not_before: float) -> None:
        with self._tx():
            self._conn.execute("UPDATE outbox SET not_before = ? WHERE id = ?", (not_before, row_id))

    def finish(self, row_id: int, state: str, error: str | None, now: float) -> None:
        """A message given up on: ``failed`` (refused) or ``expired``."""
        with self._tx():
            self._conn.execute("UPDATE outbox SET state = ?, last_error = COALESCE(?, last_error), done_at = ?"
                               " WHERE id = ?", (state, error, now, row_id))

    def prune(self, now: float, keep: float = KEEP_DONE_S) -> int:
        with self._tx():
            cursor = self._conn.execute(
                "DELETE FROM outbox WHERE state NOT IN ('pending', 'sending') AND done_at < ?", (now - keep,))
        return cursor.rowcount

    # --- reads --------------------------------------------------------------------------------

    def due(self, sink: str, now: float) -> Row | None:
        """The oldest message for the sink that may be sent now."""
        row = self._conn.execute(
            f"SELECT {_COLS} FROM outbox WHERE sink = ? AND state = 'pending' AND not_before <= ?"
            " ORDER BY id LIMIT 1", (sink, now)).fetchone()
        return None if row is None else _row(row)

    def next_time(self, sink: str) -> float | None:
        row = self._conn.execute(
            "SELECT MIN(not_before) FROM outbox WHERE sink = ? AND state = 'pending'", (sink,)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def delivered_since(self, sink: str, since: float) -> tuple[int, float | None]:
        """How many messages the sink delivered since ``since``, and the oldest of those times."""
        row = self._conn.execute(
            "SELECT COUNT(*), MIN(done_at) FROM outbox WHERE sink = ? AND state = 'delivered'"
            " AND done_at >= ? AND event != 'test'", (sink, since)).fetchone()
        return int(row[0]), (None if row[1] is None else float(row[1]))

    def get(self, sink: str, key: str) -> Row | None:
        row = self._conn.execute(f"SELECT {_COLS} FROM outbox WHERE sink = ? AND key = ?", (sink, key)).fetchone()
        return None if row is None else _row(row)

    def counts(self) -> dict[str, SinkCounts]:
        out: dict[str, dict[str, float | int | None]] = {}
        for sink, state, count, last in self._conn.execute(
            "SELECT sink, state, COUNT(*), MAX(done_at) FROM outbox GROUP BY sink, state"
        ):
            entry = out.setdefault(sink, {"pending": 0, "delivered": 0, "failed": 0, "expired": 0,
                                          "last_delivered_at": None})
            if state in _OPEN:
                entry["pending"] = int(entry["pending"] or 0) + count
            elif state in ("delivered", "failed", "expired"):
                entry[state] = count
                if state == "delivered":
                    entry["last_delivered_at"] = last
        return {sink: SinkCounts(**values) for sink, values in out.items()}  # type: ignore[arg-type]

    def rows(self, sink: str | None = None) -> list[Row]:
        """Every row (tests and diagnostics)."""
        if sink is None:
            cursor = self._conn.execute(f"SELECT {_COLS} FROM outbox ORDER BY id")
        else:
            cursor = self._conn.execute(f"SELECT {_COLS} FROM outbox WHERE sink = ? ORDER BY id", (sink,))
        return [_row(r) for r in cursor]


_COLS = "id, sink, key, alert, not_before, expires_at, attempts, state, last_error"


def _row(row: tuple) -> Row:
    return Row(id=row[0], sink=row[1], key=row[2], alert=Alert.model_validate_json(row[3]), not_before=row[4],
               expires_at=row[5], attempts=row[6], state=row[7], last_error=row[8])
