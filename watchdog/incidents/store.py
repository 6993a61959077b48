"""The incident store: SQLite in WAL mode, one connection, used from one thread.

Durability: ``synchronous = FULL``. Incident changes are rare (a handful of
commits per incident), so an fsync per commit costs nothing that matters, and
the incident we most need to keep is the one opened just before the host froze
or lost power (a GPU falling off the bus often takes the machine with it). With
WAL, ``NORMAL`` would survive a crash of the daemon but could lose the last
commits on power loss; ``FULL`` keeps them.

This class does no asyncio and no threading of its own: the async facade
(:mod:`watchdog.incidents.service`) calls it from its one worker thread. Times
are Unix seconds (floats) in the database.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from loguru import logger

from watchdog.incidents.model import (
    ActionEntry,
    Incident,
    IncidentFinding,
    RecordingInfo,
    TimelineEntry,
    to_datetime,
    to_timestamp,
)
from watchdog.incidents.schema import MIGRATIONS, Migration, SchemaError, migrate

DB_NAME = "state.db"
MEMORY = ":memory:"
_log = logger.bind(component="incidents")


class StoreError(Exception):
    """The state database cannot be opened or used; the message says why and what to do."""


class IncidentStore:
    """Incidents, their findings and timelines, in ``<state_dir>/state.db``."""

    def __init__(
        self, path: str | Path, migrations: Sequence[Migration] = MIGRATIONS, busy_timeout: float = 5.0
    ) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._conn = self._open(migrations)

    @classmethod
    def in_memory(cls) -> "IncidentStore":
        """A store that forgets everything at exit: the fallback when the state dir is unusable."""
        return cls(MEMORY)

    @property
    def persistent(self) -> bool:
        return str(self.path) != MEMORY

    # --- opening ------------------------------------------------------------------------------

    def _open(self, migrations: Sequence[Migration]) -> sqlite3.Connection:
        if not self.persistent:
            conn = sqlite3.connect(MEMORY, isolation_level=None)
            conn.execute("PRAGMA foreign_keys = ON")
            migrate(conn, migrations)
            return conn
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{self.path.parent}: cannot create the state directory ({exc.strerror})") from None
        try:
            return self._connect(migrations)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot create the state database ({exc.strerror})") from None
        except SchemaError as exc:
            raise StoreError(f"{self.path}: {exc}") from None
        except sqlite3.OperationalError as exc:
            # Locked, read-only, no space: nothing wrong with the file itself, never move it.
            raise StoreError(f"{self.path}: cannot open the state database ({exc})") from None
        except sqlite3.DatabaseError as exc:
            # Not a database / malformed: keep it for forensics, start an empty history.
            aside = self._move_aside()
            _log.error(f"{self.path}: unusable state database ({exc}); moved to {aside}, starting empty")
            try:
                return self._connect(migrations)
            except (sqlite3.Error, SchemaError) as again:
                raise StoreError(f"{self.path}: cannot create a new state database ({again})") from None

    def _connect(self, migrations: Sequence[Migration]) -> sqlite3.Connection:
        if not self.path.exists():
            # Created by us with owner/group access only; SQLite gives -wal/-shm the same mode.
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o640))
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout)
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch to WAL journal mode (got {mode!r})")
            conn.execute("PRAGMA synchronous = FULL")
            before = conn.execute("PRAGMA user_version").fetchone()[0]
            if 0 < before < (migrations[-1].version if migrations else 0):
                self._backup(conn, before)
            migrate(conn, migrations)
        except BaseException:
            conn.close()
            raise
        return conn

    def _backup(self, conn: sqlite3.Connection, version: int) -> None:
        """A copy of the database before migrating it: a bad migration loses nothing."""
        target = self.path.with_name(f"{self.path.name}.v{version}.bak")
        backup = sqlite3.connect(target)
        try:
            conn.backup(backup)
        finally:
            backup.close()
        _log.info(f"{self.path}: backed up schema version {version} to {target} before migrating")

    def _move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(str(self.path) + suffix)
            if source.exists():
                os.replace(source, Path(str(aside) + suffix))
        return aside

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "IncidentStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transaction(self) -> AbstractContextManager[None]:
        """One atomic change: every write inside lands, or none does."""
        return transaction(self._conn)

    # --- writes -------------------------------------------------------------------------------

    def put_incident(self, incident: Incident) -> None:
        """Insert the incident's own row, or update it (state, severity, close time, recording)."""
        recording_until = incident.recording.until if incident.recording else None
        self._conn.execute(
            "INSERT INTO incidents"
            " (id, target, state, severity, title, opened_at, closed_at, recording, recording_until, flaps)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET state = excluded.state, severity = excluded.severity,"
            " closed_at = excluded.closed_at, recording = excluded.recording,"
            " recording_until = excluded.recording_until, flaps = excluded.flaps",
            (
                incident.id,
                incident.target,
                incident.state,
                incident.severity,
                incident.title,
                to_timestamp(incident.opened_at),
                _ts(incident.closed_at),
                incident.recording.file if incident.recording else None,
                _ts(recording_until),
                incident.flaps,
            ),
        )

    def put_finding(self, incident_id: int, finding: IncidentFinding) -> None:
        self._conn.execute(
            "INSERT INTO incident_findings"
            " (incident_id, finding, state, severity, summary, raised_at, changed_at, carried_over)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (incident_id, finding) DO UPDATE SET state = excluded.state,"
            " severity = excluded.severity, summary = excluded.summary, raised_at = excluded.raised_at,"
            " changed_at = excluded.changed_at, carried_over = excluded.carried_over",
            (
                incident_id,
                finding.finding,
                finding.state,
                finding.severity,
                finding.summary,
                to_timestamp(finding.raised_at),
                to_timestamp(finding.changed_at),
                int(finding.carried_over),
            ),
        )

    def add_entry(self, incident_id: int, entry: TimelineEntry) -> None:
        self._conn.execute(
            "INSERT INTO timeline (incident_id, at, kind, finding, severity, summary, evidence)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                incident_id,
                to_timestamp(entry.at),
                entry.kind,
                entry.finding,
                entry.severity,
                entry.summary,
                json.dumps(entry.evidence, default=str, separators=(",", ":")),
            ),
        )

    def set_meta(self, key: str, value: str) -> None:
        self._conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def delete_closed_before(self, before: float) -> list[str]:
        """Forget closed incidents opened before ``before``; returns their recording files."""
        with self.transaction():
            rows = self._conn.execute(
                "SELECT recording FROM incidents WHERE state = 'closed' AND opened_at < ?"
                " AND (recording_until IS NULL OR recording_until < ?)",
                (before, before),
            ).fetchall()
            self._conn.execute(
                "DELETE FROM incidents WHERE state = 'closed' AND opened_at < ?"
                " AND (recording_until IS NULL OR recording_until < ?)",
                (before, before),
            )
        return [row[0] for row in rows if row[0]]

    def add_canary_counts(self, counts: dict[tuple[str, str, float], tuple[int, int]]) -> None:
        """Add canaries (sent, failed) per (target, model, hour start) to the persisted counts."""
        with self.transaction():
            self._conn.executemany(
                "INSERT INTO canary_counts (target, model, hour, sent, failed) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (target, model, hour) DO UPDATE SET sent = sent + excluded.sent,"
                " failed = failed + excluded.failed",
                [(target, model, hour, sent, failed) for (target, model, hour), (sent, failed) in counts.items()],
            )

    def delete_canary_counts_before(self, before: float) -> None:
        self._conn.execute("DELETE FROM canary_counts WHERE hour < ?", (before,))

    # --- reads --------------------------------------------------------------------------------

    def canary_counts(self, since: float | None = None) -> list[tuple[str, str, int, int]]:
        """(target, model, sent, failed) summed over the hours from ``since`` on."""
        rows = self._conn.execute(
            "SELECT target, model, SUM(sent), SUM(failed) FROM canary_counts WHERE hour >= ?"
            " GROUP BY target, model ORDER BY target, model",
            (since if since is not None else float("-inf"),),
        ).fetchall()
        return [(row[0], row[1], int(row[2]), int(row[3])) for row in rows]

    def get_meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def max_id(self) -> int:
        row = self._conn.execute("SELECT MAX(id) FROM incidents").fetchone()
        return int(row[0] or 0)

    def get(self, incident_id: int, timeline: bool = True) -> Incident | None:
        row = self._conn.execute(f"SELECT {_COLUMNS} FROM incidents WHERE id = ?", (incident_id,)).fetchone()
        return None if row is None else self._incident(row, timeline)

    def open_incidents(self) -> list[Incident]:
        rows = self._conn.execute(f"SELECT {_COLUMNS} FROM incidents WHERE state = 'open' ORDER BY id").fetchall()
        return [self._incident(row, timeline=True) for row in rows]

    def tailing(self, now: float) -> list[Incident]:
        """Closed incidents whose recording still takes records at ``now``."""
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM incidents WHERE state = 'closed' AND recording IS NOT NULL"
            " AND recording_until > ? ORDER BY id",
            (now,),
        ).fetchall()
        return [self._incident(row, timeline=False) for row in rows]

    def last_closed(self, target: str, since: float) -> Incident | None:
        """The target's newest incident closed at or after ``since`` (one that may be reopened)."""
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM incidents WHERE target = ? AND state = 'closed' AND closed_at >= ?"
            " ORDER BY closed_at DESC, id DESC LIMIT 1",
            (target, since),
        ).fetchone()
        return None if row is None else self._incident(row, timeline=True)

    def list(self, since: float | None = None, limit: int = 50, timeline: bool = False) -> list[Incident]:
        """Newest first: incidents still open, or opened or closed at or after ``since``."""
        where, args = "", []
        if since is not None:
            where = "WHERE state = 'open' OR opened_at >= ? OR closed_at >= ?"
            args = [since, since]
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM incidents {where} ORDER BY opened_at DESC, id DESC LIMIT ?",
            (*args, max(0, int(limit))),
        ).fetchall()
        return [self._incident(row, timeline) for row in rows]

    def _incident(self, row: Sequence[Any], timeline: bool) -> Incident:
        (incident_id, target, state, severity, title, opened_at, closed_at, recording, until, flaps,
         recovered) = row
        findings = [
            IncidentFinding(
                finding=f[0],
                state=f[1],
                severity=f[2],
                summary=f[3],
                raised_at=to_datetime(f[4]),
                changed_at=to_datetime(f[5]),
                carried_over=bool(f[6]),
            )
            for f in self._conn.execute(
                "SELECT finding, state, severity, summary, raised_at, changed_at, carried_over"
                " FROM incident_findings WHERE incident_id = ? ORDER BY raised_at, finding",
                (incident_id,),
            )
        ]
        entries = []
        if timeline:
            entries = [
                TimelineEntry(
                    at=to_datetime(e[0]),
                    kind=e[1],
                    finding=e[2],
                    severity=e[3],
                    summary=e[4],
                    evidence=_load_json(e[5]),
                )
                for e in self._conn.execute(
                    "SELECT at, kind, finding, severity, summary, evidence FROM timeline"
                    " WHERE incident_id = ? ORDER BY id",
                    (incident_id,),
                )
            ]
        rec = None
        if recording:
            size = _size(self.path.parent / recording) if self.persistent else 0
            rec = RecordingInfo(file=recording, bytes=size, until=None if until is None else to_datetime(until))
        return Incident(
            id=incident_id,
            target=target,
            state=state,
            severity=severity,
            title=title,
            opened_at=to_datetime(opened_at),
            closed_at=None if closed_at is None else to_datetime(closed_at),
            findings=findings,
            timeline=entries,
            recording=rec,
            flaps=int(flaps or 0),
            actions=self.actions_of(incident_id),
            recovered_after_s=recovered,
        )

    def actions_of(self, incident_id: int) -> list[ActionEntry]:
        """The actions taken on an incident (written by watchdog/act/ through its own connection)."""
        return [
            ActionEntry(
                action=a[0], method=a[1], result=a[2] or "running", started=to_datetime(a[3]),
                finished=None if a[4] is None else to_datetime(a[4]), detail=a[5], manual=bool(a[6]),
                finding=a[7], step=a[8],
            )
            for a in self._conn.execute(
                "SELECT action, method, result, started, finished, detail, manual, finding, step"
                " FROM actions WHERE incident_id = ? ORDER BY id",
                (incident_id,),
            )
        ]

    def recovered_after(self, incident_id: int) -> float | None:
        row = self._conn.execute("SELECT recovered_after_s FROM incidents WHERE id = ?", (incident_id,)).fetchone()
        return None if row is None else row[0]


_COLUMNS = ("id, target, state, severity, title, opened_at, closed_at, recording, recording_until, flaps,"
            " recovered_after_s")


def _ts(value: Any) -> float | None:
    return None if value is None else to_timestamp(value)


def _load_json(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {"value": value}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One atomic change on ``conn`` (the state and alert databases share it)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except sqlite3.Error:
        # A COMMIT that fails (busy, I/O error) leaves the transaction open: roll it
        # back, or every later BEGIN fails and the store never recovers.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
