"""The ledger's tables and their versions, the same on SQLite and PostgreSQL.

A ledger records the schema versions applied to it in `schema_version`. Opening one brings it up to
`VERSION` in one transaction under a lock, so that agents starting together migrate it once and a
failed migration changes nothing; a ledger made by a newer asl-sweep is refused in one line, since
older code could not know what its newer columns mean. A ledger without the table predates versions:
it is the first release's schema, or on SQLite an older file still missing columns.

To change the schema: append a step to `STEPS` (never edit a released one) and raise `VERSION`.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Protocol

from asl_sweep.errors import UserError


class Migratable(Protocol):
    """What a migration needs of a backend (`storage.Backend` has it all)."""

    display: str

    def execute(self, sql: str, params: tuple | list = ()) -> Any: ...

    def begin(self) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def tables(self) -> set[str]: ...

    def columns(self, table: str) -> set[str]: ...

    def lock_schema(self) -> None:
        """Inside a transaction: hold the ledger's migration lock until commit."""


VERSION_TABLE = "schema_version"
VERSION_DDL = f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER PRIMARY KEY, applied_at {{float}} NOT NULL)"

TABLES = """
CREATE TABLE IF NOT EXISTS sweeps (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    config TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'running',
    created_at {float} NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    sweep_id TEXT NOT NULL REFERENCES sweeps(id),
    number INTEGER NOT NULL,
    config TEXT NOT NULL,
    state TEXT NOT NULL,
    should_stop INTEGER NOT NULL DEFAULT 0,
    created_at {float} NOT NULL,
    heartbeat_at {float} NOT NULL,
    ended_at {float},
    summary TEXT NOT NULL DEFAULT '{{}}',
    record_path TEXT,
    wandb_dir TEXT,
    agent TEXT,
    error TEXT,
    attempt INTEGER NOT NULL DEFAULT 1,
    claim TEXT,
    preemptions INTEGER NOT NULL DEFAULT 0,
    record TEXT,
    UNIQUE (sweep_id, number)
);
CREATE INDEX IF NOT EXISTS runs_by_sweep ON runs (sweep_id, state);
CREATE INDEX IF NOT EXISTS runs_by_claim ON runs (claim);
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL REFERENCES runs(id),
    step INTEGER NOT NULL,
    row TEXT NOT NULL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS models (
    run_id TEXT PRIMARY KEY REFERENCES runs(id),
    data {blob} NOT NULL
);
"""

# columns added to `runs` before versions existed; an older (SQLite) ledger gets them in step 1
ADDED_COLUMNS = {"attempt": "INTEGER NOT NULL DEFAULT 1", "claim": "TEXT",
                 "preemptions": "INTEGER NOT NULL DEFAULT 0", "record": "TEXT"}


def statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def base_tables(backend: Migratable) -> None:
    """Version 1: the tables as the first release made them. An earlier ledger gets the columns added
    since (before the indexes name them), and its epochs, once a JSON list on the run, become rows."""
    existing = backend.columns("runs")
    for name, ddl in ADDED_COLUMNS.items():
        if existing and name not in existing:
            backend.execute(f"ALTER TABLE runs ADD COLUMN {name} {ddl}")
    for statement in statements(TABLES):
        backend.execute(statement)
    if "history" in existing:
        for row in backend.execute("SELECT id, history FROM runs").fetchall():
            for step, epoch in enumerate(json.loads(row["history"]), start=1):
                backend.execute("INSERT INTO epochs (run_id, step, row) VALUES (?, ?, ?) "
                                "ON CONFLICT (run_id, step) DO NOTHING", (row["id"], step, json.dumps(epoch)))
        backend.execute("ALTER TABLE runs DROP COLUMN history")


# step n brings a ledger from version n - 1 to version n
STEPS: tuple[Callable[[Migratable], None], ...] = (base_tables,)
VERSION = len(STEPS)


def version_of(backend: Migratable) -> int:
    """The ledger's schema version: 0 for a new ledger or one from before versions."""
    if VERSION_TABLE not in backend.tables():
        return 0
    return backend.execute(f"SELECT COALESCE(MAX(version), 0) AS v FROM {VERSION_TABLE}").fetchone()["v"]


def refuse_newer(backend: Migratable, version: int) -> None:
    if version > VERSION:
        raise UserError(f"ledger {backend.display} has schema version {version}, newer than this asl-sweep "
                        f"knows ({VERSION}): upgrade asl-sweep here (pip install -U asl-sweep) to use it")


def migrate(backend: Migratable) -> int:
    """Bring the ledger to `VERSION`, all steps in one transaction; returns the version it had. An
    up-to-date ledger costs one read and no lock (DDL on every open would queue behind writers)."""
    found = version_of(backend)
    refuse_newer(backend, found)
    if found == VERSION:
        return found
    backend.begin()
    try:
        backend.lock_schema()
        found = version_of(backend)  # another process may have migrated it while this one waited
        refuse_newer(backend, found)
        backend.execute(VERSION_DDL)
        for version in range(found + 1, VERSION + 1):
            STEPS[version - 1](backend)
            backend.execute(f"INSERT INTO {VERSION_TABLE} (version, applied_at) VALUES (?, {{now}})", (version,))
    except BaseException:
        backend.rollback()
        raise
    backend.commit()
    return found
