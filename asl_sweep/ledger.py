"""The ledger: every local sweep and run, with its epochs, record and model, in SQLite (one machine)
or PostgreSQL (many machines); `storage.py` hides which.

It is the single source of truth for local sweeps, shared by any number of agents anywhere: nothing
about a run lives only in memory or only on the machine that trained it. Finished runs are never
rewritten. Every write to a run names the attempt it belongs to (a fencing token): once a run was
reaped as crashed or requeued, its old agent's writes are refused. Every public method is one
transaction that is retried, after reconnecting, when the connection is lost; the writes are safe to
repeat (client-made ids, one row per epoch).
"""

from __future__ import annotations

import contextlib
import functools
import json
import secrets
import string
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from asl_sweep import heartbeat, retry, storage
from asl_sweep.errors import UserError
from asl_sweep.records import CANCELED, NO_HEARTBEAT, Run, RunRecord, SweepRow
from asl_sweep.state import RunState, SweepState

T = TypeVar("T")
# control action (`wandb sweep --pause/--resume/--stop/--cancel`) -> (states it applies to, new state)
CONTROL = {
    "pause": ((SweepState.RUNNING,), SweepState.PAUSED),
    "resume": ((SweepState.PAUSED,), SweepState.RUNNING),
    "stop": ((SweepState.RUNNING, SweepState.PAUSED), SweepState.FINISHED),
    "cancel": ((SweepState.RUNNING, SweepState.PAUSED), SweepState.CANCELED),
}
# what a claim asks the search for: the sweep's config and runs -> the next run's values, or None for no more
Suggest = Callable[[dict[str, Any], list[Run]], dict[str, Any] | None]


# a running run without a heartbeat for `?` seconds of the database's clock; a heartbeat counts from the
# server's start at the latest, so a database restart does not make every run look dead
SILENT = "{greatest}(heartbeat_at, {started}) < {now} - ?"
# a run's columns as `runs()` reads them: its record is read on its own (`record()`), only when needed;
# `stale`: running but silent, which every reader shows as crashed (the next claim records it)
RUN_COLUMNS = ("id, sweep_id, number, config, state, should_stop, created_at, heartbeat_at, ended_at, summary, "
               "record_path, wandb_dir, agent, error, attempt, claim, preemptions, "
               f"CASE WHEN state = 'running' AND {SILENT} THEN 1 ELSE 0 END AS stale")
OF_ATTEMPT = "(CAST(? AS INTEGER) IS NULL OR attempt = ?)"  # a write fenced by the caller's attempt, when given


def default_path() -> str:
    """Where the ledger is: `ASL_SWEEP_LEDGER` (a file or a postgresql:// URL), else `asl-sweep.db` here."""
    return storage.default_location()


def where(location: str | None = None) -> str:
    """The ledger's location as messages show it: a file as an absolute path, a URL with its secrets masked."""
    location = location or default_path()
    return storage.display(location if storage.is_url(location) else str(Path(location).resolve()))


CHOOSE = "--ledger FILE|URL or ASL_SWEEP_LEDGER chooses another"


def ledger_exists(location: str | None = None) -> bool:
    """A SQLite file that exists, or any PostgreSQL URL (whether it answers is for the caller to find out)."""
    location = location or default_path()
    return storage.is_url(location) or Path(location).is_file()


def is_local_sweep(sweep_id: str) -> bool:
    """True when the ledger (if there is one) knows this id; never creates a SQLite file."""
    if not ledger_exists():
        return False
    with Ledger(create=False) as ledger:
        return ledger.find_sweep(sweep_id) is not None


def unknown_sweep(sweep_id: str, ledger: str | None = None) -> UserError:
    """The one error for an id nobody knows: not in `ledger` (the display form of an open one), or, with
    none given, not in the default ledger while W&B is offline, so it cannot be a W&B sweep either."""
    if ledger is not None:
        return UserError(f"unknown sweep id '{sweep_id}': not in {ledger} ('asl-sweep sweeps' lists them; {CHOOSE})")
    return UserError(f"unknown sweep id '{sweep_id}': not a local sweep in {where()} ({CHOOSE}), "
                     "and W&B is offline (no API key) so it cannot be a W&B sweep")


def new_id(length: int = 8) -> str:
    """W&B-style short lowercase id."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def run_from_row(row: Any, history: list[dict[str, float]] | None = None) -> Run:
    """A run as readers see it, the one place a ledger row becomes a `Run`: a silent running run is shown
    crashed, ended at its last heartbeat."""
    out = dict(row)
    for key in ("config", "summary"):
        out[key] = json.loads(out[key])
    out["state"] = RunState(out["state"])
    if out.pop("stale"):
        out.update(state=RunState.CRASHED, ended_at=out["heartbeat_at"], error=NO_HEARTBEAT)
    return Run(**out, history=history or [])


def sweep_from_row(row: Any) -> SweepRow:
    """A sweep as readers see it (`sweeps()` rows keep their run count)."""
    return {**dict(row), "config": json.loads(row["config"]), "state": SweepState(row["state"])}  # type: ignore[typeddict-item]


def retried(method):
    """A public ledger method: one unit of work, repeated after a reconnect when the connection is lost."""

    @functools.wraps(method)
    def wrapper(self: Ledger, *args: Any, **kwargs: Any) -> Any:
        return self.retrying(lambda: method(self, *args, **kwargs))

    return wrapper


class Ledger(contextlib.AbstractContextManager):
    """Typed access to the ledger; each public method is one transaction. A context manager."""

    def __init__(self, location: str | Path | None = None, *, create: bool = True, patient: bool = False) -> None:
        """`patient`: wait (ASL_SWEEP_LEDGER_RETRY_S) for a database that does not answer yet, as agents and
        their runs do through a database restart; commands people type fail at once instead."""
        self.backend = retry.patiently(lambda: storage.open_backend(str(location or default_path()), create=create),
                                       storage.Unreachable, patient=patient)
        self.location, self.display = self.backend.location, self.backend.display
        self._retrier = retry.Retrier(self.backend, lambda text: storage.scrub(text, self.location),
                                      storage.Unreachable)

    def close(self) -> None:
        self.backend.close()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def execute(self, sql: str, params: tuple | list = ()) -> Any:
        return self.backend.execute(sql, params)

    def retrying(self, work: Callable[[], T]) -> T:
        """Run `work` as one unit: repeated after a reconnect when the connection is lost (`retry.Retrier`)."""
        return self._retrier.run(work)

    def repeating(self) -> bool:
        """Inside a unit of work that runs again after a lost connection: its first run may have landed."""
        return self._retrier.repeating()

    @contextmanager
    def transaction(self) -> Iterator[Ledger]:
        """One atomic block: SQLite queues writers at BEGIN; PostgreSQL writers lock rows as they go."""
        self.backend.begin()
        try:
            yield self
        except BaseException:
            self.backend.rollback()
            raise
        try:
            self.backend.commit()
        except BaseException:  # a COMMIT that failed must not leave the transaction open on this connection
            self.backend.rollback()
            raise

    # sweeps
    def create_sweep(self, config: dict[str, Any], name: str) -> str:
        """A new sweep; its id is made here, before the insert, so a repeated insert is the same sweep."""
        sweep_id = new_id()
        self._insert_sweep(sweep_id, config, name)
        return sweep_id

    @retried
    def _insert_sweep(self, sweep_id: str, config: dict[str, Any], name: str) -> None:
        self.execute("INSERT INTO sweeps (id, name, config, created_at) VALUES (?, ?, ?, {now}) "
                     "ON CONFLICT (id) DO NOTHING", (sweep_id, name, json.dumps(config)))

    @retried
    def find_sweep(self, sweep_id: str) -> SweepRow | None:
        row = self.execute("SELECT * FROM sweeps WHERE id = ?", (sweep_id,)).fetchone()
        if row is None:
            return None
        return sweep_from_row(row)

    def unknown(self, sweep_id: str) -> UserError:
        """The error for an id this ledger does not hold (`unknown_sweep`, naming this ledger)."""
        return unknown_sweep(sweep_id, self.display)

    def sweep(self, sweep_id: str) -> SweepRow:
        found = self.find_sweep(sweep_id)
        if found is None:
            raise self.unknown(sweep_id)
        return found

    @retried
    def sweeps(self) -> list[dict[str, Any]]:  # SweepRow plus its run count
        rows = self.execute(
            "SELECT s.id, s.name, s.state, s.created_at, s.config, COUNT(r.id) AS runs FROM sweeps s "
            "LEFT JOIN runs r ON r.sweep_id = s.id GROUP BY s.id, s.name, s.state, s.created_at, s.config "
            "ORDER BY s.created_at").fetchall()
        return [sweep_from_row(r) for r in rows]

    @retried
    def set_sweep_state(self, sweep_id: str, state: SweepState | str) -> None:
        self.execute("UPDATE sweeps SET state = ? WHERE id = ?", (SweepState(state).value, sweep_id))

    @retried
    def control(self, sweep_id: str, action: str) -> SweepState:
        """Pause, resume, stop or cancel a sweep (W&B's meanings); cancel also asks every active run to
        stop at its next epoch boundary. Returns the new state; a transition that does not apply is an error."""
        allowed, new = CONTROL[action]
        with self.transaction():
            self.backend.lock_sweep(sweep_id)
            row = self.execute("SELECT state FROM sweeps WHERE id = ?", (sweep_id,)).fetchone()
            if row is None:
                raise self.unknown(sweep_id)
            if row["state"] == new and self.repeating():  # it landed before the answer was lost
                return new
            if row["state"] not in allowed:
                raise UserError(f"cannot {action} sweep {sweep_id}: it is {row['state']}")
            self.set_sweep_state(sweep_id, new)
            if action in ("stop", "cancel"):  # requeued runs would wait for a claim that never comes
                self.execute("UPDATE runs SET state = ?, ended_at = {now}, error = ? WHERE sweep_id = ? AND state = ?",
                             (RunState.STOPPED.value, f"sweep {new} before this preempted run was rerun",
                              sweep_id, RunState.PENDING.value))
            if action == "cancel":
                self.execute("UPDATE runs SET should_stop = 1, error = ? WHERE sweep_id = ? AND state = ?",
                             (CANCELED, sweep_id, RunState.RUNNING.value))
        return new

    # runs
    @retried
    def runs(self, sweep_id: str) -> list[Run]:
        rows = self.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE sweep_id = ? ORDER BY number",
                            (heartbeat.timeout(), sweep_id)).fetchall()
        histories: dict[str, list[dict[str, float]]] = {}
        for e in self.execute("SELECT e.run_id, e.row FROM epochs e JOIN runs r ON r.id = e.run_id "
                              "WHERE r.sweep_id = ? ORDER BY e.run_id, e.step", (sweep_id,)):
            histories.setdefault(e["run_id"], []).append(json.loads(e["row"]))
        return [run_from_row(r, histories.get(r["id"])) for r in rows]

    @retried
    def run(self, run_id: str) -> Run | None:
        row = self.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ?", (heartbeat.timeout(), run_id)).fetchone()
        if row is None:
            return None
        epochs = self.execute("SELECT row FROM epochs WHERE run_id = ? ORDER BY step", (run_id,)).fetchall()
        return run_from_row(row, [json.loads(e["row"]) for e in epochs])

    def claim(self, sweep_id: str, agent: str, suggest: Suggest) -> Run | None:
        """One unit of work under the sweep's lock: record silent runs as crashed, then give this agent the
        oldest requeued run, else a new run of `suggest(config, runs)`'s values; None when the sweep gives no
        run now (paused, stopped, canceled; or done, which is recorded as finished once no run is active).
        The claim carries an id made here, so a repeat after a COMMIT whose answer was lost finds the run
        that COMMIT made instead of claiming a second one."""
        claim = new_id(16)

        def attempt() -> Run | None:
            with self.transaction():
                self.backend.lock_sweep(sweep_id)
                landed = self.claimed(claim)  # a repeat after a lost COMMIT: that COMMIT has ended by now
                if landed is not None:
                    return landed
                self.reap_stale(sweep_id, heartbeat.timeout())
                sweep = self.sweep(sweep_id)
                if sweep["state"] != SweepState.RUNNING:
                    return None
                if not self.restart_queued(sweep_id, agent, claim):
                    runs = self.runs(sweep_id)
                    values = suggest(sweep["config"], runs)
                    if values is None:
                        if not any(r.state.is_active for r in runs):
                            self.set_sweep_state(sweep_id, SweepState.FINISHED)
                        return None
                    self.insert_run(sweep_id, len(runs) + 1, values, agent, claim)
            return self.claimed(claim)

        return self.retrying(attempt)

    def claimed(self, claim: str) -> Run | None:
        """The run a claim produced, if its transaction committed (asked again after a lost COMMIT)."""
        row = self.execute("SELECT id FROM runs WHERE claim = ?", (claim,)).fetchone()
        return self.run(row["id"]) if row else None

    def reap_stale(self, sweep_id: str, timeout: float) -> int:
        """Inside a claim: record as crashed the running runs silent for `timeout` seconds (`SILENT`), which
        readers already show as crashed; their agents, if alive after all, are fenced from then on."""
        cur = self.execute(
            f"UPDATE runs SET state = ?, ended_at = {{now}}, error = ? WHERE sweep_id = ? AND state = ? AND {SILENT}",
            (RunState.CRASHED.value, NO_HEARTBEAT, sweep_id, RunState.RUNNING.value, timeout))
        return cur.rowcount

    def insert_run(self, sweep_id: str, number: int, values: dict[str, Any], agent: str, claim: str) -> None:
        """Inside a claim: a new running run with a client-made id."""
        self.execute(
            "INSERT INTO runs (id, sweep_id, number, config, state, created_at, heartbeat_at, agent, claim) "
            "VALUES (?, ?, ?, ?, ?, {now}, {now}, ?, ?)",
            (new_id(), sweep_id, number, json.dumps(values), RunState.RUNNING.value, agent, claim))

    def restart_queued(self, sweep_id: str, agent: str, claim: str) -> bool:
        """Inside a claim: give the oldest requeued (preempted) run to this agent as its next attempt."""
        row = self.execute("SELECT id FROM runs WHERE sweep_id = ? AND state = ? ORDER BY number LIMIT 1",
                           (sweep_id, RunState.PENDING.value)).fetchone()
        if row is None:
            return False
        self.execute("UPDATE runs SET state = ?, attempt = attempt + 1, agent = ?, claim = ?, heartbeat_at = {now}, "
                     "should_stop = 0, error = NULL WHERE id = ?", (RunState.RUNNING.value, agent, claim, row["id"]))
        return True

    @retried
    def append_epoch(self, run_id: str, row: dict[str, float], *, attempt: int | None = None,
                     step: int | None = None) -> bool:
        """Add one epoch (one row, never a rewrite of the history) to the run's attempt and beat its heart.
        False when the run is no longer this attempt's to write (ended, reaped or requeued): fenced."""
        with self.transaction():
            cur = self.execute(f"UPDATE runs SET heartbeat_at = {{now}} WHERE id = ? AND state = ? AND {OF_ATTEMPT}",
                               (run_id, RunState.RUNNING.value, attempt, attempt))
            if cur.rowcount != 1:
                return False
            if step is None:
                step = self.execute("SELECT COALESCE(MAX(step), 0) + 1 AS n FROM epochs WHERE run_id = ?",
                                    (run_id,)).fetchone()["n"]
            self.execute("INSERT INTO epochs (run_id, step, row) VALUES (?, ?, ?) ON CONFLICT (run_id, step) DO NOTHING",
                         (run_id, step, json.dumps(row)))
        return True

    @retried
    def heartbeat(self, run_id: str, attempt: int | None = None) -> bool:
        """False when the run is no longer this attempt's (fenced)."""
        cur = self.execute(f"UPDATE runs SET heartbeat_at = {{now}} WHERE id = ? AND state = ? AND {OF_ATTEMPT}",
                           (run_id, RunState.RUNNING.value, attempt, attempt))
        return cur.rowcount == 1

    @retried
    def finish_run(self, run_id: str, state: RunState | str, *, attempt: int | None = None,
                   summary: dict[str, Any] | None = None, record: RunRecord | None = None,
                   model: bytes | None = None, record_path: str | None = None,
                   wandb_dir: str | None = None, error: str | None = None) -> bool:
        """Move a running run to a final state with its record and model; False when it was no longer this
        attempt's to end (already ended, reaped or requeued: a requeued run waits for its rerun)."""
        state = RunState(state)
        assert state.is_final, state
        with self.transaction():
            cur = self.execute(
                "UPDATE runs SET state = ?, ended_at = {now}, summary = COALESCE(?, summary), "
                "record = COALESCE(?, record), record_path = COALESCE(?, record_path), "
                f"wandb_dir = COALESCE(?, wandb_dir), error = COALESCE(?, error) "
                f"WHERE id = ? AND state = ? AND {OF_ATTEMPT}",
                (state.value, json.dumps(summary) if summary is not None else None,
                 json.dumps(record) if record is not None else None, record_path, wandb_dir, error,
                 run_id, RunState.RUNNING.value, attempt, attempt))
            if cur.rowcount != 1:  # a repeat of a COMMIT whose answer was lost has nothing left to do
                row = self.execute("SELECT state, attempt FROM runs WHERE id = ?", (run_id,)).fetchone()
                return bool(row and row["state"] == state.value and attempt is not None and row["attempt"] == attempt)
            if model is not None:
                self.execute("INSERT INTO models (run_id, data) VALUES (?, ?) ON CONFLICT (run_id) DO UPDATE "
                             "SET data = excluded.data", (run_id, model))
        return True

    @retried
    def requeue(self, run_id: str, attempt: int, reason: str) -> bool:
        """A preempted run goes back to the queue as `pending` (W&B's requeue): the next free agent reruns
        its configuration as the same run, so it counts once against run_cap and shows once."""
        with self.transaction():
            cur = self.execute(
                "UPDATE runs SET state = ?, agent = NULL, claim = NULL, should_stop = 0, error = ?, "
                "preemptions = preemptions + 1 WHERE id = ? AND state = ? AND attempt = ?",
                (RunState.PENDING.value, reason, run_id, RunState.RUNNING.value, attempt))
            if cur.rowcount != 1:
                row = self.execute("SELECT state, attempt FROM runs WHERE id = ?", (run_id,)).fetchone()
                return bool(row and row["state"] == RunState.PENDING.value and row["attempt"] == attempt)
            self.execute("DELETE FROM epochs WHERE run_id = ?", (run_id,))
        return True

    @retried
    def request_stop(self, run_ids: list[str], reason: str) -> None:
        """Ask running runs to stop at their next epoch; `reason` stays with each run as why it stopped."""
        with self.transaction():
            for run_id in run_ids:
                self.execute("UPDATE runs SET should_stop = 1, error = COALESCE(error, ?) WHERE id = ? AND state = ?",
                             (reason, run_id, RunState.RUNNING.value))

    @retried
    def should_stop(self, run_id: str) -> bool:
        row = self.execute("SELECT should_stop FROM runs WHERE id = ?", (run_id,)).fetchone()
        return bool(row and row["should_stop"])

    @retried
    def record(self, run_id: str) -> RunRecord | None:
        row = self.execute("SELECT record FROM runs WHERE id = ?", (run_id,)).fetchone()
        return json.loads(row["record"]) if row and row["record"] else None

    @retried
    def model(self, run_id: str) -> bytes | None:
        row = self.execute("SELECT data FROM models WHERE run_id = ?", (run_id,)).fetchone()
        return bytes(row["data"]) if row else None

    # moving sweeps between ledgers
    @retried
    def dump(self, sweep_id: str) -> dict[str, list[dict[str, Any]]]:
        """Every row of one sweep, as stored (for `copy_sweep`)."""
        self.sweep(sweep_id)
        return {
            "sweeps": [dict(r) for r in self.execute("SELECT * FROM sweeps WHERE id = ?", (sweep_id,))],
            "runs": [dict(r) for r in self.execute("SELECT * FROM runs WHERE sweep_id = ? ORDER BY number", (sweep_id,))],
            "epochs": [dict(r) for r in self.execute("SELECT e.* FROM epochs e JOIN runs r ON r.id = e.run_id "
                                                     "WHERE r.sweep_id = ?", (sweep_id,))],
            "models": [{"run_id": r["run_id"], "data": bytes(r["data"])} for r in self.execute(
                "SELECT m.* FROM models m JOIN runs r ON r.id = m.run_id WHERE r.sweep_id = ?", (sweep_id,))],
        }

    @retried
    def load(self, dump: dict[str, list[dict[str, Any]]]) -> None:
        """Insert a dumped sweep, all or nothing; refused when this ledger already has it."""
        sweep_id = dump["sweeps"][0]["id"]
        with self.transaction():
            if self.execute("SELECT id FROM sweeps WHERE id = ?", (sweep_id,)).fetchone():
                if self.repeating():  # the copy landed before the answer was lost
                    return
                raise UserError(f"ledger {self.display} already has sweep {sweep_id}; nothing copied")
            for table in ("sweeps", "runs", "epochs", "models"):
                for row in dump[table]:
                    names = list(row)
                    self.execute(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                                 [row[k] for k in names])


def copy_sweep(sweep_id: str, source: str, destination: str) -> int:
    """Copy one sweep with its runs, epochs, records and models to another ledger (SQLite <-> PostgreSQL),
    so that a sweep begun on a laptop goes on on a cluster. Refused while any of its runs is running: that
    run's agent would go on writing to the source. Returns the number of runs copied."""
    with Ledger(source, create=False) as src:
        dump = src.dump(sweep_id)
    running = [r["id"] for r in dump["runs"] if r["state"] == RunState.RUNNING.value]
    if running:
        raise UserError(f"sweep {sweep_id} has {len(running)} running run(s) in {storage.display(source)}; "
                        f"pause it (asl-sweep sweep --pause {sweep_id}) and wait for them to end, then copy")
    with Ledger(destination) as dst:
        dst.load(dump)
    return len(dump["runs"])
