"""The state store's schema and its migrations.

The schema version lives in SQLite's ``user_version``. Each migration runs in
one transaction with the version bump, so a crash mid-migration leaves the
old schema intact. Never edit a released migration: add the next one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Union

Step = Union[str, Callable[[sqlite3.Connection], None]]


class SchemaError(Exception):
    """The database cannot be used by this version of the watchdog."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    steps: tuple[Step, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "incidents, their findings and timelines; daemon metadata",
        (
            """CREATE TABLE incidents (
                id INTEGER PRIMARY KEY,
                target TEXT NOT NULL,
                state TEXT NOT NULL CHECK (state IN ('open', 'closed')),
                severity TEXT NOT NULL,
                title TEXT NOT NULL,
                opened_at REAL NOT NULL,
                closed_at REAL,
                recording TEXT,
                recording_until REAL
            )""",
            # The invariant the manager relies on, enforced by the database too.
            "CREATE UNIQUE INDEX incidents_one_open_per_target ON incidents(target) WHERE state = 'open'",
            "CREATE INDEX incidents_by_opened ON incidents(opened_at)",
            """CREATE TABLE incident_findings (
                incident_id INTEGER NOT NULL REFERENCES incidents(id) ON DELETE CASCADE,
                finding TEXT NOT NULL,
                state TEXT NOT NULL CHECK (state IN ('raised', 'cleared')),
                severity TEXT NOT NULL,
                summary TEXT NOT NULL,
                raised_at REAL NOT NULL,
                changed_at REAL NOT NULL,
                carried_over INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY (incident_id, finding)
            )""",
            """CREATE TABLE timeline (
                id INTEGER PRIMARY KEY,
                incident_id INTEGER NOT NULL REFERENCES incidents(id) ON DELETE CASCADE,
                at REAL NOT NULL,
                kind TEXT NOT NULL CHECK (kind IN ('raised', 'cleared', 'note')),
                finding TEXT,
                severity TEXT,
                summary TEXT NOT NULL,
                evidence TEXT NOT NULL DEFAULT '{}'
            )""",
            "CREATE INDEX timeline_by_incident ON timeline(incident_id, id)",
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        ),
    ),
    Migration(
        2,
        "canaries sent and failed per target, model and hour (for `watchdogctl report`)",
        (
            """CREATE TABLE canary_counts (
                target TEXT NOT NULL,
                model TEXT NOT NULL,
                hour REAL NOT NULL,
                sent INTEGER NOT NULL DEFAULT 0,
                failed INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY (target, model, hour)
            )""",
        ),
    ),
    Migration(
        3,
        "flap count: an incident reopened when its target raises again soon after it closed",
        ("ALTER TABLE incidents ADD COLUMN flaps INTEGER NOT NULL DEFAULT 0",),
    ),
    Migration(
        4,
        "actions (intent written before acting, result after), paused targets, recovery time",
        (
            # No foreign key to incidents: a restart counts against the budget even after its
            # incident is pruned, and manual actions may have no incident at all.
            """CREATE TABLE actions (
                id INTEGER PRIMARY KEY,
                target TEXT NOT NULL,
                incident_id INTEGER,
                finding TEXT,
                step INTEGER,
                action TEXT NOT NULL,
                method TEXT NOT NULL,
                result TEXT CHECK (result IS NULL OR result IN
                    ('ok', 'failed', 'timeout', 'skipped', 'would', 'interrupted')),
                started REAL NOT NULL,
                finished REAL,
                detail TEXT NOT NULL DEFAULT '',
                manual INTEGER NOT NULL DEFAULT 0,
                evidence TEXT NOT NULL DEFAULT '{}'
            )""",
            "CREATE INDEX actions_by_target ON actions(target, started)",
            "CREATE INDEX actions_by_incident ON actions(incident_id, id)",
            """CREATE TABLE target_control (
                target TEXT PRIMARY KEY,
                paused INTEGER NOT NULL DEFAULT 0,
                paused_until REAL,
                paused_at REAL,
                reason TEXT NOT NULL DEFAULT '',
                budget_reset_at REAL
            )""",
            "ALTER TABLE incidents ADD COLUMN recovered_after_s REAL",
        ),
    ),
)

LATEST = MIGRATIONS[-1].version


def current_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> tuple[int, int]:
    """Bring the schema up to the last migration. Returns (version before, version after).

    ``conn`` must be in autocommit mode (``isolation_level=None``): each
    migration opens its own transaction.
    """
    _check_sequence(migrations)
    before = current_version(conn)
    latest = migrations[-1].version if migrations else 0
    if before > latest:
        raise SchemaError(
            f"the state database has schema version {before}, newer than this watchdog knows "
            f"({latest}): it was written by a newer version. Upgrade the watchdog, or move the "
            "state database aside to start with an empty history."
        )
    for migration in migrations:
        if migration.version <= before:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for step in migration.steps:
                if callable(step):
                    step(conn)
                else:
                    conn.execute(step)
            # PRAGMA user_version is part of the transaction: both land, or neither.
            conn.execute(f"PRAGMA user_version = {int(migration.version)}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return before, current_version(conn)


def _check_sequence(migrations: Sequence[Migration]) -> None:
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise SchemaError(f"migrations must be numbered 1, 2, 3...; found {migration.version} at {expected}")
