"""The local ledger: every local sweep and run, in one SQLite file (WAL, short transactions).

It is the single source of truth for local sweeps, shared by any number of agent processes:
nothing about a run lives only in memory. Finished runs are never rewritten: state changes
are conditional on the run still being active.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import string
import time
import contextlib
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any, Iterator, TypedDict

from asl_sweep.errors import UserError


class RunState(str, Enum):
    """A run's state, one type for every module (as Optuna's TrialState); stored as its value.
    `stopped` is an early-stopped (hyperband) or interrupted run, `crashed` one whose agent died."""

    PENDING = "pending"
    RUNNING = "running"
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"
    CRASHED = "crashed"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def is_active(self) -> bool:
        return self in (RunState.PENDING, RunState.RUNNING)

    @property
    def is_final(self) -> bool:
        return not self.is_active

    @property
    def is_broken(self) -> bool:
        """Ended without a usable result."""
        return self in (RunState.FAILED, RunState.CRASHED)


ACTIVE = tuple(s.value for s in RunState if s.is_active)
TERMINAL = tuple(s.value for s in RunState if s.is_final)


class RunRow(TypedDict):
    """A run as the ledger holds it (`config`, `history`, `summary` decoded from JSON)."""

    id: str
    sweep_id: str
    number: int
    config: dict[str, Any]
    state: RunState
    should_stop: int
    created_at: float
    heartbeat_at: float
    ended_at: float | None
    history: list[dict[str, float]]
    summary: dict[str, Any]
    record_path: str | None
    wandb_dir: str | None
    agent: str | None
    error: str | None


class RunRecord(TypedDict):
    """A finished run's `result.json` (train.py writes it beside the model): all that export, report and
    evaluate need, since an offline run's W&B files are binary."""

    run_id: str
    sweep_id: str | None
    state: RunState
    config: dict[str, Any]
    history: list[dict[str, float]]
    summary: dict[str, Any]
    confusion_matrix: list[list[int]]
    robustness: dict[str, float]  # accuracy under each change of robustness.SUITE (empty for a failed run)
    val_predictions: list[dict[str, Any]]
    paths: dict[str, str | None]


class SweepRow(TypedDict):
    """A sweep as the ledger holds it (`config` decoded); `sweeps()` adds its run count as `runs`."""

    id: str
    name: str
    config: dict[str, Any]
    state: str
    created_at: float

# Sweep states are W&B's, lower case: running, paused, finished, canceled.
# control action (`wandb sweep --pause/--resume/--stop/--cancel`) -> (states it applies to, new state)
CONTROL = {
    "pause": (("running",), "paused"),
    "resume": (("paused",), "running"),
    "stop": (("running", "paused"), "finished"),
    "cancel": (("running", "paused"), "canceled"),
}

SCHEMA = """
CREATE TABLE IF NOT EXISTS sweeps (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    config TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'running',
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    sweep_id TEXT NOT NULL REFERENCES sweeps(id),
    number INTEGER NOT NULL,
    config TEXT NOT NULL,
    state TEXT NOT NULL,
    should_stop INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    ended_at REAL,
    history TEXT NOT NULL DEFAULT '[]',
    summary TEXT NOT NULL DEFAULT '{}',
    record_path TEXT,
    wandb_dir TEXT,
    agent TEXT,
    error TEXT,
    UNIQUE (sweep_id, number)
);
CREATE INDEX IF NOT EXISTS runs_by_sweep ON runs (sweep_id, state);
"""


def default_path() -> Path:
    """`ASL_SWEEP_LEDGER`, else `asl-sweep.db` in the working directory."""
    return Path(os.environ.get("ASL_SWEEP_LEDGER", "asl-sweep.db"))


def is_local_sweep(sweep_id: str) -> bool:
    """True when the local ledger (if there is one) knows this id; never creates a ledger."""
    if not default_path().is_file():
        return False
    with Ledger(create=False) as ledger:
        return ledger.find_sweep(sweep_id) is not None


def unknown_sweep(sweep_id: str) -> UserError:
    """The error for an id that is not local while W&B is offline, so it cannot be a W&B sweep either."""
    return UserError(f"unknown sweep id '{sweep_id}': not a local sweep in {default_path()}, "
                     "and W&B is offline (no API key) so it cannot be a W&B sweep")


def new_id(length: int = 8) -> str:
    """W&B-style short lowercase id."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def run_from_row(row: sqlite3.Row) -> RunRow:
    out = dict(row)
    for key in ("config", "history", "summary"):
        out[key] = json.loads(out[key])
    out["state"] = RunState(out["state"])
    return out  # type: ignore[return-value]


def ledger_error(path: Path, exc: sqlite3.Error) -> UserError:
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


class Ledger(contextlib.AbstractContextManager):
    """Thin typed access to the SQLite file; each method is one transaction. A context manager."""

    def __init__(self, path: str | os.PathLike | None = None, *, create: bool = True) -> None:
        self.path = Path(path) if path else default_path()
        if self.path.is_dir():
            raise UserError(f"ledger {self.path} is a folder, not a file; point ASL_SWEEP_LEDGER at a file")
        if not self.path.parent.is_dir():
            raise UserError(f"ledger {self.path}: folder {self.path.parent} does not exist")
        if not create and not self.path.is_file():
            raise UserError(f"no ledger at {self.path}: no local sweep was created here "
                            "(asl-sweep sweep FILE --local), or set ASL_SWEEP_LEDGER")
        try:
            self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise ledger_error(self.path, exc) from None

    def close(self) -> None:
        self.db.close()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """An IMMEDIATE transaction: writers queue here, so read-decide-write steps are atomic."""
        self._control("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self._control("COMMIT")

    def _control(self, statement: str) -> None:
        """Begin or commit; a database error (locked too long, read-only, disk) is one line naming the file."""
        try:
            self.db.execute(statement)
        except sqlite3.Error as exc:
            raise ledger_error(self.path, exc) from None

    # sweeps
    def create_sweep(self, config: dict[str, Any], name: str) -> str:
        sweep_id = new_id()
        with self.transaction() as db:
            db.execute("INSERT INTO sweeps (id, name, config, created_at) VALUES (?, ?, ?, ?)",
                       (sweep_id, name, json.dumps(config), time.time()))
        return sweep_id

    def find_sweep(self, sweep_id: str) -> SweepRow | None:
        row = self.db.execute("SELECT * FROM sweeps WHERE id = ?", (sweep_id,)).fetchone()
        if row is None:
            return None
        out = dict(row)
        out["config"] = json.loads(out["config"])
        return out

    def sweep(self, sweep_id: str) -> SweepRow:
        found = self.find_sweep(sweep_id)
        if found is None:
            raise UserError(f"unknown sweep id '{sweep_id}' (not in {self.path}; 'asl-sweep sweeps' lists them)")
        return found

    def sweeps(self) -> list[dict[str, Any]]:  # SweepRow plus its run count
        rows = self.db.execute(
            "SELECT s.id, s.name, s.state, s.created_at, s.config, COUNT(r.id) AS runs FROM sweeps s "
            "LEFT JOIN runs r ON r.sweep_id = s.id GROUP BY s.id ORDER BY s.created_at").fetchall()
        return [{**dict(r), "config": json.loads(r["config"])} for r in rows]

    def set_sweep_state(self, sweep_id: str, state: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE sweeps SET state = ? WHERE id = ?", (state, sweep_id))

    def control(self, sweep_id: str, action: str) -> str:
        """Pause, resume, stop or cancel a sweep (W&B's meanings); cancel also asks every active run to
        stop at its next epoch boundary. Returns the new state; a transition that does not apply is an error."""
        allowed, new = CONTROL[action]
        with self.transaction() as db:
            row = db.execute("SELECT state FROM sweeps WHERE id = ?", (sweep_id,)).fetchone()
            if row is None:
                raise UserError(f"unknown sweep id '{sweep_id}' (not in {self.path}; 'asl-sweep sweeps' lists them)")
            if row["state"] not in allowed:
                raise UserError(f"cannot {action} sweep {sweep_id}: it is {row['state']}")
            db.execute("UPDATE sweeps SET state = ? WHERE id = ?", (new, sweep_id))
            if action == "cancel":
                db.execute("UPDATE runs SET should_stop = 1 WHERE sweep_id = ? AND state IN (?, ?)",
                           (sweep_id, *ACTIVE))
        return new

    # runs
    def runs(self, sweep_id: str) -> list[RunRow]:
        rows = self.db.execute("SELECT * FROM runs WHERE sweep_id = ? ORDER BY number", (sweep_id,)).fetchall()
        return [run_from_row(r) for r in rows]

    def run(self, run_id: str) -> RunRow | None:
        row = self.db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return run_from_row(row) if row else None

    def append_epoch(self, run_id: str, row: dict[str, float]) -> None:
        """Add one epoch to an active run's history (a no-op once the run has ended)."""
        with self.transaction() as db:
            found = db.execute("SELECT history FROM runs WHERE id = ? AND state IN (?, ?)",
                               (run_id, *ACTIVE)).fetchone()
            if found:
                history = json.loads(found["history"]) + [row]
                db.execute("UPDATE runs SET history = ?, heartbeat_at = ?, state = 'running' WHERE id = ?",
                           (json.dumps(history), time.time(), run_id))

    def heartbeat(self, run_id: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE runs SET heartbeat_at = ? WHERE id = ? AND state IN (?, ?)",
                       (time.time(), run_id, *ACTIVE))

    def finish_run(self, run_id: str, state: RunState, *, summary: dict[str, Any] | None = None,
                   history: list[dict] | None = None, record_path: str | None = None,
                   wandb_dir: str | None = None, error: str | None = None) -> bool:
        """Move an active run to a terminal state; returns False when it had already ended."""
        assert RunState(state).is_final, state
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE runs SET state = ?, ended_at = ?, summary = COALESCE(?, summary), "
                "history = COALESCE(?, history), record_path = COALESCE(?, record_path), "
                "wandb_dir = COALESCE(?, wandb_dir), error = COALESCE(?, error) "
                "WHERE id = ? AND state IN (?, ?)",
                (RunState(state).value, time.time(), json.dumps(summary) if summary is not None else None,
                 json.dumps(history) if history is not None else None, record_path, wandb_dir, error,
                 run_id, *ACTIVE))
            return cur.rowcount == 1

    def request_stop(self, run_ids: list[str]) -> None:
        if run_ids:
            with self.transaction() as db:
                db.executemany("UPDATE runs SET should_stop = 1 WHERE id = ?", [(r,) for r in run_ids])

    def should_stop(self, run_id: str) -> bool:
        row = self.db.execute("SELECT should_stop FROM runs WHERE id = ?", (run_id,)).fetchone()
        return bool(row and row["should_stop"])
