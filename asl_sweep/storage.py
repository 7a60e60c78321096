"""Where the ledger lives: a SQLite file (one machine; the embedded default) or a PostgreSQL database
(many machines), behind one small interface so that the ledger's SQL, the controller and the agents
never know which one they talk to (as Optuna's RDB storage).

A backend runs the ledger's SQL (written once, with `?` parameters and `{now}`/`{started}`/`{greatest}`/
`{float}`/`{blob}` for what differs), gives transactions and a per-sweep claim lock, and says which of its
errors mean "the connection was lost: reconnect and try again" (`is_lost`). Times come from the
database's clock: on a cluster, machines' clocks disagree, the database's is the one every agent shares.
"""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from asl_sweep.errors import UserError, one_line

URL_SCHEMES = ("postgresql://", "postgres://")


class Unreachable(UserError):
    """The database did not answer (down, restarting, unreachable): worth waiting for in an agent."""


def is_url(location: str) -> bool:
    return location.startswith(URL_SCHEMES)


def display(location: str) -> str:
    """The location safe to print: a URL's password is masked."""
    if not is_url(location):
        return location
    parts = urlsplit(location)
    if parts.password is None:
        return location
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class Backend(Protocol):
    location: str  # what ASL_SWEEP_LEDGER holds for it (absolute path or URL)
    display: str  # the location safe to print
    can_reconnect: bool

    def is_lost(self, exc: BaseException) -> bool:
        """True when `exc` means the connection is gone: reconnect and repeat the unit of work."""

    def execute(self, sql: str, params: tuple | list = ()) -> Any:
        """Run one statement of the ledger's SQL; the cursor's rows are mappings."""

    def begin(self) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def lock_sweep(self, sweep_id: str) -> None:
        """Inside a transaction: wait for, then hold, the sweep's claim lock until commit."""

    def reconnect(self) -> None: ...

    def close(self) -> None: ...


SCHEMA = """
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

# columns added to `runs` since the first ledgers; an older SQLite file gets them on open
ADDED_COLUMNS = {"attempt": "INTEGER NOT NULL DEFAULT 1", "claim": "TEXT",
                 "preemptions": "INTEGER NOT NULL DEFAULT 0", "record": "TEXT"}


def sqlite_error(path: Path, exc: sqlite3.Error) -> UserError:
    """One line naming the ledger file, what is wrong with it and what to do."""
    text = str(exc)
    if "not a database" in text:
        why = "is not an asl-sweep ledger (not a SQLite database); point ASL_SWEEP_LEDGER at another file"
    elif "readonly" in text or "read-only" in text:
        why = "is read-only; make it (and its folder) writable, or copy it somewhere writable"
    elif "locked" in text:
        why = "is locked by another process for too long; try again"
    else:
        why = f"cannot be used: {text}"
    return UserError(f"ledger {path} {why}")


class SQLiteBackend:
    """One file in WAL mode; IMMEDIATE transactions queue every writer, so the claim lock is the file's.
    Not for network filesystems (SQLite's own advice): that is what PostgreSQL is for."""

    can_reconnect = False
    dialect = {"now": "((julianday('now') - 2440587.5) * 86400.0)", "started": "0", "greatest": "max",
               "float": "REAL", "blob": "BLOB"}

    def __init__(self, location: str, *, create: bool) -> None:
        self.path = Path(location)
        if self.path.is_dir():
            raise UserError(f"ledger {self.path} is a folder, not a file; point ASL_SWEEP_LEDGER at a file")
        if not self.path.parent.is_dir():
            raise UserError(f"ledger {self.path}: folder {self.path.parent} does not exist")
        if not create and not self.path.is_file():
            raise UserError(f"no ledger at {self.path}: no local sweep was created here "
                            "(asl-sweep sweep FILE --local), or set ASL_SWEEP_LEDGER")
        self.location = str(self.path.resolve())
        self.display = str(self.path)
        try:
            self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self._add_columns()
            self.db.executescript(SCHEMA.format(**self.dialect))
            self._move_histories()
        except sqlite3.Error as exc:
            raise sqlite_error(self.path, exc) from None

    def _add_columns(self) -> None:
        """A ledger written by an earlier version gets the columns added since (before the schema's indexes
        name them)."""
        columns = {row["name"] for row in self.db.execute("PRAGMA table_info(runs)")}
        for name in ADDED_COLUMNS:
            if columns and name not in columns:
                self.db.execute(f"ALTER TABLE runs ADD COLUMN {name} {ADDED_COLUMNS[name]}")

    def _move_histories(self) -> None:
        """Epochs used to live in a JSON list on the run: they become rows, every one kept."""
        import json

        if "history" not in {row["name"] for row in self.db.execute("PRAGMA table_info(runs)")}:
            return
        self.db.execute("BEGIN IMMEDIATE")
        for run_id, history in self.db.execute("SELECT id, history FROM runs").fetchall():
            self.db.executemany("INSERT OR IGNORE INTO epochs (run_id, step, row) VALUES (?, ?, ?)",
                                [(run_id, i + 1, json.dumps(r)) for i, r in enumerate(json.loads(history))])
        self.db.execute("ALTER TABLE runs DROP COLUMN history")
        self.db.execute("COMMIT")

    def execute(self, sql: str, params: tuple | list = ()) -> sqlite3.Cursor:
        try:
            return self.db.execute(sql.format(**self.dialect), params)
        except sqlite3.Error as exc:
            raise sqlite_error(self.path, exc) from None

    def is_lost(self, exc: BaseException) -> bool:
        return False

    def begin(self) -> None:
        self.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.execute("COMMIT")

    def rollback(self) -> None:
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    def lock_sweep(self, sweep_id: str) -> None:
        """Nothing more to do: BEGIN IMMEDIATE already holds the file's write lock."""

    def reconnect(self) -> None:
        raise AssertionError("a SQLite ledger has no connection to lose")

    def close(self) -> None:
        self.db.close()


class PostgresBackend:
    """A PostgreSQL database through psycopg 3, in autocommit mode with explicit READ COMMITTED
    transactions: after waiting for the sweep's row lock, a claim's next statement sees every run that
    the previous claim committed (under REPEATABLE READ its snapshot would predate the wait)."""

    dialect = {"now": "EXTRACT(EPOCH FROM clock_timestamp())::float8",
               "started": "EXTRACT(EPOCH FROM pg_postmaster_start_time())::float8",
               "greatest": "GREATEST", "float": "DOUBLE PRECISION", "blob": "BYTEA"}
    # seconds: a claim holds its lock for milliseconds, so a session idle inside a transaction this long
    # belongs to a machine that vanished; the server aborts it and frees the lock
    IDLE_IN_TRANSACTION_S = 120

    def __init__(self, location: str, *, create: bool) -> None:
        try:
            import psycopg
        except ImportError:
            raise UserError("a PostgreSQL ledger needs psycopg: pip install 'asl-sweep[postgresql]'") from None
        self.psycopg = psycopg
        self.location, self.display = location, display(location)
        self.can_reconnect = True
        self.conn = self._connect()
        try:  # the tables once, by whoever comes first: DDL on every open would queue behind writes
            if self.execute("SELECT to_regclass('runs') AS t").fetchone()["t"] is None:
                self._create_schema()
        except psycopg.Error as exc:
            if self.is_lost(exc):
                raise self._unreachable(exc) from None
            raise

    def _connect(self):
        from psycopg.rows import dict_row

        try:
            return self.psycopg.connect(
                self.location, autocommit=True, row_factory=dict_row, connect_timeout=10,
                application_name="asl-sweep", keepalives_idle=30, keepalives_interval=10, keepalives_count=3,
                options=f"-c idle_in_transaction_session_timeout={self.IDLE_IN_TRANSACTION_S * 1000}")
        except self.psycopg.Error as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: BaseException) -> Unreachable:
        return Unreachable(f"cannot connect to ledger {self.display}: {one_line(exc, 240)}")

    def _create_schema(self) -> None:
        """Tables once, even when many agents start at the same moment (concurrent CREATE TABLE IF NOT
        EXISTS can collide in PostgreSQL's catalog): under a transaction-scoped advisory lock."""
        self.begin()
        try:
            self.execute("SELECT pg_advisory_xact_lock(7426912)")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self.execute(statement)
        except BaseException:
            self.rollback()
            raise
        self.commit()

    def is_lost(self, exc: BaseException) -> bool:
        """Connection errors, and any error after which the connection is closed (the server ends a session
        idle in a transaction too long with an InternalError, for one)."""
        return isinstance(exc, (self.psycopg.OperationalError, self.psycopg.InterfaceError)) or \
            (isinstance(exc, self.psycopg.Error) and self.conn.closed)

    def execute(self, sql: str, params: tuple | list = ()):
        """One statement; an error that is not a lost connection is one line naming the ledger."""
        try:
            return self.conn.execute(sql.format(**self.dialect).replace("?", "%s"), params)
        except self.psycopg.Error as exc:
            if self.is_lost(exc):
                raise
            raise UserError(f"ledger {self.display}: {one_line(exc)}") from None

    def begin(self) -> None:
        self.execute("BEGIN ISOLATION LEVEL READ COMMITTED")

    def commit(self) -> None:
        self.execute("COMMIT")

    def rollback(self) -> None:
        if not self.conn.closed:
            try:
                self.conn.execute("ROLLBACK")
            except self.psycopg.Error:
                pass

    def lock_sweep(self, sweep_id: str) -> None:
        """FOR NO KEY UPDATE: claims queue on it, while inserting runs (a foreign-key check) does not."""
        self.execute("SELECT id FROM sweeps WHERE id = ? FOR NO KEY UPDATE", (sweep_id,))

    def reconnect(self) -> None:
        self.close()
        self.conn = self._connect()

    def close(self) -> None:
        try:
            self.conn.close()
        except self.psycopg.Error:
            pass


def open_backend(location: str, *, create: bool) -> Backend:
    if is_url(location):
        return PostgresBackend(location, create=create)
    if re.match(r"^[a-z][a-z0-9+.-]*://", location):
        raise UserError(f"ledger {location}: only postgresql:// URLs or a file path are ledgers")
    return SQLiteBackend(location, create=create)


def default_location() -> str:
    """`ASL_SWEEP_LEDGER` (a file path or a postgresql:// URL), else `asl-sweep.db` here."""
    return os.environ.get("ASL_SWEEP_LEDGER") or "asl-sweep.db"
