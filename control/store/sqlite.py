"""The embedded store: one SQLite file in WAL mode.

``history`` is both the audit log and the version counter: one row per
version, with the full desired state on the rows that changed it (so any
version can be restored without replaying diffs).  ``instances`` holds the
registered instances, ``specs`` the service specs and ``rollouts`` the rollouts
as of the latest version;
a row that does not parse is refused at load, naming its table and key.  The schema evolves through
``PRAGMA user_version`` and the ``MIGRATIONS`` list; a file written by a newer
meshcontrol is refused rather than guessed at.

One connection, used from one thread at a time (the service runs every call
on a single-thread executor); ``check_same_thread`` is off only so that the
thread may differ from the one that opened it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from control.state import DesiredState
from control.store.base import (
    Change,
    HistoryEntry,
    Loaded,
    Store,
    StoreError,
    VersionConflict,
    parse_instance,
    parse_record,
    parse_rollout,
    parse_spec,
)

MIGRATIONS: list[str] = [
    # 1: history (audit + versions + states) and the registered instances
    """
    CREATE TABLE history (
        version INTEGER PRIMARY KEY,
        time REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        summary TEXT NOT NULL,
        state TEXT
    );
    CREATE TABLE instances (
        id TEXT PRIMARY KEY,
        spec TEXT NOT NULL
    );
    """,
    # 2: the service specs (how to run a service and how many), as of the latest version
    """
    CREATE TABLE specs (
        service TEXT PRIMARY KEY,
        spec TEXT NOT NULL
    );
    """,
    # 3: the rollouts (spec and progress), as of the latest version
    """
    CREATE TABLE rollouts (
        service TEXT PRIMARY KEY,
        record TEXT NOT NULL
    );
    """,
]

_ENTRY_COLUMNS = "version, time, actor, action, target, summary, state IS NOT NULL"


def _entry(row: tuple[int, float, str, str, str, str, int]) -> HistoryEntry:
    return HistoryEntry(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]))


class SQLiteStore(Store):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False, timeout=5.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a process crash; only an OS crash may
            # lose the last commits, never corrupt the file.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from None

    def _migrate(self) -> None:
        (current,) = self._db.execute("PRAGMA user_version").fetchone()
        if current > len(MIGRATIONS):
            raise StoreError(
                f"{self.path} has schema version {current}; this meshcontrol knows "
                f"up to {len(MIGRATIONS)}"
            )
        for number in range(current, len(MIGRATIONS)):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {number + 1}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def schema_version(self) -> int:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        return int(version)

    def _version(self) -> int:
        (version,) = self._db.execute("SELECT COALESCE(MAX(version), 0) FROM history").fetchone()
        return int(version)

    def load(self) -> Loaded:
        state = self.state_at(self._version()) or DesiredState()
        rows = self._db.execute("SELECT id, spec FROM instances ORDER BY id").fetchall()
        instances = [parse_instance(f"{self.path} table instances", i, raw) for i, raw in rows]
        rows = self._db.execute("SELECT service, spec FROM specs ORDER BY service").fetchall()
        specs = {name: parse_spec(f"{self.path} table specs", name, raw) for name, raw in rows}
        rows = self._db.execute("SELECT service, record FROM rollouts ORDER BY service").fetchall()
        where = f"{self.path} table rollouts"
        rollouts = {name: parse_rollout(where, name, raw) for name, raw in rows}
        return Loaded(self._version(), state, instances, specs, rollouts)

    def commit(self, expected: int, change: Change, now: float) -> int:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            actual = self._version()
            if actual != expected:
                raise VersionConflict(expected, actual)
            version = expected + 1
            self._db.execute(
                "INSERT INTO history VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    version,
                    now,
                    change.actor,
                    change.action,
                    change.target,
                    change.summary,
                    change.state.to_json() if change.state is not None else None,
                ),
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO instances VALUES (?, ?)",
                [(i.id, i.spec.model_dump_json()) for i in change.put_instances],
            )
            self._db.executemany(
                "DELETE FROM instances WHERE id = ?", [(i,) for i in change.deleted_instances]
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO specs VALUES (?, ?)",
                [(name, spec.model_dump_json()) for name, spec in change.put_specs],
            )
            self._db.executemany(
                "DELETE FROM specs WHERE service = ?", [(n,) for n in change.deleted_specs]
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO rollouts VALUES (?, ?)",
                [(r.spec.service, r.model_dump_json()) for r in change.put_rollouts],
            )
            self._db.executemany(
                "DELETE FROM rollouts WHERE service = ?", [(n,) for n in change.deleted_rollouts]
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return version

    def history(self, limit: int, before: int | None = None) -> list[HistoryEntry]:
        rows = self._db.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM history WHERE version < ? ORDER BY version DESC LIMIT ?",
            (before if before is not None else 2**62, limit),
        ).fetchall()
        return [_entry(row) for row in rows]

    def entry(self, version: int) -> HistoryEntry | None:
        row = self._db.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM history WHERE version = ?", (version,)
        ).fetchone()
        return _entry(row) if row else None

    def state_at(self, version: int) -> DesiredState | None:
        if version < 0 or version > self._version():
            return None
        row = self._db.execute(
            "SELECT version, state FROM history WHERE version <= ? AND state IS NOT NULL "
            "ORDER BY version DESC LIMIT 1",
            (version,),
        ).fetchone()
        if row is None:
            return DesiredState()
        where = f"{self.path} table history: the desired state of version {row[0]}"
        return parse_record(where, lambda: DesiredState.from_json(row[1]))

    def close(self) -> None:
        self._db.close()
