"""The state database: its pragmas, schema versions and migrations, and damaged files."""

from __future__ import annotations

import sqlite3

import pytest

from watchdog.incidents.schema import LATEST, MIGRATIONS, Migration, SchemaError, migrate
from watchdog.incidents.store import IncidentStore, StoreError


def test_a_new_store_is_wal_full_sync_at_the_latest_schema(tmp_path):
    path = tmp_path / "state" / "state.db"
    with IncidentStore(path) as store:
        conn = store._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST
    assert oct(path.stat().st_mode & 0o777) == oct(0o640)


def test_the_database_enforces_one_open_incident_per_target(tmp_path):
    with IncidentStore(tmp_path / "state.db") as store:
        insert = "INSERT INTO incidents (id, target, state, severity, title, opened_at) VALUES (?, ?, ?, ?, ?, ?)"
        store._conn.execute(insert, (1, "ollama", "open", "critical", "t", 1.0))
        store._conn.execute(insert, (2, "ollama", "closed", "critical", "t", 1.0))
        with pytest.raises(sqlite3.IntegrityError):
            store._conn.execute(insert, (3, "ollama", "open", "critical", "t", 2.0))


V2 = Migration(LATEST + 1, "a column for acknowledgements", ("ALTER TABLE incidents ADD COLUMN acknowledged_by TEXT",))


def test_a_migration_keeps_the_data_and_backs_up_the_old_database_first(tmp_path):
    path = tmp_path / "state.db"
    with IncidentStore(path) as store:
        store._conn.execute(
            "INSERT INTO incidents (id, target, state, severity, title, opened_at) VALUES (1, 'x', 'open', 'warning', 't', 1)"
        )
    with IncidentStore(path, migrations=(*MIGRATIONS, V2)) as store:
        assert store._conn.execute("PRAGMA user_version").fetchone()[0] == LATEST + 1
        assert store.get(1).target == "x"
        columns = [row[1] for row in store._conn.execute("PRAGMA table_info(incidents)")]
        assert "acknowledged_by" in columns
    backup = tmp_path / f"state.db.v{LATEST}.bak"
    with sqlite3.connect(backup) as old:
        assert old.execute("PRAGMA user_version").fetchone()[0] == LATEST
        assert old.execute("SELECT target FROM incidents").fetchall() == [("x",)]
    old.close()


def test_a_version_1_database_gains_actions_and_recovery_time(tmp_path):
    """The Act issue's migration on a database written before it: data kept, new columns empty."""
    path = tmp_path / "state.db"
    with IncidentStore(path, migrations=MIGRATIONS[:1]) as store:
        store._conn.execute(
            "INSERT INTO incidents (id, target, state, severity, title, opened_at) VALUES (1, 'x', 'open', 'warning', 't', 1)"
        )
    with IncidentStore(path) as store:
        incident = store.get(1)
        assert incident.target == "x" and incident.actions == [] and incident.recovered_after_s is None
        store._conn.execute(
            "INSERT INTO actions (target, incident_id, action, method, result, started, finished, detail)"
            " VALUES ('x', 1, 'restart', 'docker', 'ok', 10, 12, 'container x restarted')"
        )
        store._conn.execute("UPDATE incidents SET recovered_after_s = 42.5 WHERE id = 1")
        incident = store.get(1)
        assert [(a.action, a.method, a.result) for a in incident.actions] == [("restart", "docker", "ok")]
        assert incident.recovered_after_s == 42.5
        assert incident.to_json()["actions"][0]["detail"] == "container x restarted"


def test_a_failing_migration_leaves_the_old_schema_intact(tmp_path):
    path = tmp_path / "state.db"
    IncidentStore(path).close()
    broken = Migration(LATEST + 1, "half done", ("CREATE TABLE half (x)", "THIS IS NOT SQL"))
    with pytest.raises(StoreError):
        IncidentStore(path, migrations=(*MIGRATIONS, broken))
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'half'").fetchall() == []
    finally:
        conn.close()


def test_a_database_from_a_newer_watchdog_is_refused_with_a_clear_error(tmp_path):
    path = tmp_path / "state.db"
    IncidentStore(path, migrations=(*MIGRATIONS, V2)).close()
    with pytest.raises(StoreError, match=f"schema version {LATEST + 1}, newer than this watchdog knows"):
        IncidentStore(path)


def test_a_damaged_database_is_moved_aside_and_a_new_one_started(tmp_path):
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not an SQLite database, it was overwritten by accident" * 100)
    with IncidentStore(path) as store:
        assert store.max_id() == 0
    aside = list(tmp_path.glob("state.db.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not an SQLite")


def test_a_locked_database_is_reported_not_moved(tmp_path):
    path = tmp_path / "state.db"
    IncidentStore(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode = DELETE")  # only possible without WAL readers; keeps an exclusive lock below
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="cannot open the state database"):
            IncidentStore(path, busy_timeout=0.05)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert not list(tmp_path.glob("state.db.corrupt-*"))


def test_migrations_must_be_numbered_in_order(tmp_path):
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    try:
        with pytest.raises(SchemaError, match="numbered"):
            migrate(conn, (MIGRATIONS[0], Migration(3, "gap", ())))
    finally:
        conn.close()
