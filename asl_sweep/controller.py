"""The embedded local controller: W&B's own search (`sweeps.next_run`) and early termination
(`sweeps.stop_runs`) over the runs in the ledger.

There is no controller process: whichever agent needs the next run claims it inside one
IMMEDIATE transaction (reap stale runs, check `run_cap`, ask the engine, insert), so several
agents never get the same grid point and `run_cap` holds exactly. Stop decisions are made as
epochs arrive, by the process that reports the epoch.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
import time
from typing import Any

import numpy as np

from asl_sweep.ledger import ACTIVE, Ledger, RunRecord, RunState, default_path, new_id, run_from_row
from asl_sweep.results import best_value
from asl_sweep.runtime import env_number
from asl_sweep.sweepfile import engine_config, metric, target

# A local sweep's runs find their sweep here (W&B's agent sets WANDB_SWEEP_ID, which a local id must not use).
LOCAL_SWEEP_ENV = "ASL_SWEEP_SWEEP_ID"
# our RunState -> the engine's RunState value; an early-stopped run is "finished" to W&B as well
ENGINE_STATE = {**{state: state.value for state in RunState}, RunState.STOPPED: RunState.FINISHED.value}


def heartbeat_interval() -> float:
    return env_number("ASL_SWEEP_HEARTBEAT_S", 5.0, minimum=0.01)


def heartbeat_timeout() -> float:
    """Seconds without a heartbeat after which a running run is declared crashed."""
    return env_number("ASL_SWEEP_HEARTBEAT_TIMEOUT_S", 60.0, minimum=0.01)


def engine_runs(runs: list[dict[str, Any]]):
    """Ledger runs in the shapes `sweeps` expects: config as {k: {value}}, history and summary included."""
    from sweeps import SweepRun

    return [
        SweepRun(
            name=r["id"],
            state=ENGINE_STATE[r["state"]],
            config={k: {"value": v} for k, v in r["config"].items()},
            history=r["history"],
            summary_metrics={k: v for k, v in r["summary"].items() if isinstance(v, (int, float))},
            stopped=r["state"] == RunState.STOPPED,
            should_stop=bool(r["should_stop"]),
        )
        for r in runs
    ]


def fresh_entropy() -> None:
    """Reseed the global RNGs the engine draws from: each in-process run calls
    `keras.utils.set_random_seed(seed)`, which would otherwise make every suggestion the same."""
    random.seed(os.urandom(16))
    np.random.seed(int.from_bytes(os.urandom(4), "little"))


def reap_stale(db, sweep_id: str, timeout: float) -> int:
    """Inside a transaction: mark running runs with no heartbeat for `timeout` seconds as crashed."""
    cur = db.execute(
        "UPDATE runs SET state = ?, ended_at = ?, error = 'no heartbeat (agent died)' "
        "WHERE sweep_id = ? AND state IN (?, ?) AND heartbeat_at < ?",
        (RunState.CRASHED.value, time.time(), sweep_id, *ACTIVE, time.time() - timeout))
    return cur.rowcount


def target_reached(config: dict[str, Any], runs: list[dict[str, Any]]) -> bool:
    """True once any run has reached `metric.target` (W&B: the sweep then finishes)."""
    goal_value = target(config)
    if goal_value is None:
        return False
    name, goal = metric(config)
    values = [v for r in runs if (v := best_value(r, name, goal)) is not None]
    return any(v >= goal_value if goal == "maximize" else v <= goal_value for v in values)


def claim_next(ledger: Ledger, sweep_id: str, agent: str) -> dict[str, Any] | None:
    """Atomically pick the next configuration and record it as a running run; None when the sweep gives
    no run now (done, capped, target reached, paused, stopped or canceled: the sweep's state says which)."""
    import sweeps

    sweep = ledger.sweep(sweep_id)
    config = sweep["config"]
    with ledger.transaction() as db:
        reap_stale(db, sweep_id, heartbeat_timeout())
        state = db.execute("SELECT state FROM sweeps WHERE id = ?", (sweep_id,)).fetchone()["state"]
        if state != "running":  # a paused, finished or canceled sweep gives no run
            return None
        runs = [run_from_row(r) for r in db.execute("SELECT * FROM runs WHERE sweep_id = ? ORDER BY number", (sweep_id,))]
        cap = config.get("run_cap")
        fresh_entropy()
        done = (cap is not None and len(runs) >= cap) or target_reached(config, runs)
        suggestion = None if done else sweeps.next_run(engine_config(config), engine_runs(runs))
        if suggestion is None:
            if not any(r["state"].is_active for r in runs):
                db.execute("UPDATE sweeps SET state = 'finished' WHERE id = ?", (sweep_id,))
            return None
        values = {k: v["value"] for k, v in suggestion.config.items()}
        run_id, now = new_id(), time.time()
        db.execute(
            "INSERT INTO runs (id, sweep_id, number, config, state, created_at, heartbeat_at, agent) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (run_id, sweep_id, len(runs) + 1, json.dumps(values), RunState.RUNNING.value, now, now, agent))
    return ledger.run(run_id)


def apply_early_termination(ledger: Ledger, sweep_id: str) -> list[str]:
    """Ask `sweeps.stop_runs` which running runs to stop and flag them in the ledger."""
    import sweeps

    config = ledger.sweep(sweep_id)["config"]
    if not config.get("early_terminate"):
        return []
    runs = ledger.runs(sweep_id)
    to_stop = [r.name for r in sweeps.stop_runs(engine_config(config), engine_runs(runs))]
    running = {r["id"] for r in runs if r["state"] == RunState.RUNNING and not r["should_stop"]}
    flagged = [r for r in to_stop if r in running]
    ledger.request_stop(flagged)
    return flagged


class LedgerReporter(contextlib.AbstractContextManager):
    """Reports a run's epochs and end to the ledger, heartbeats from a thread, relays stop requests.
    A context manager: leaving it stops the heartbeat, so a run that raised stops looking alive."""

    def __init__(self, ledger: Ledger, sweep_id: str, run_id: str, on_epoch=None, *, owns_ledger: bool = False) -> None:
        self.ledger, self.sweep_id, self.run_id = ledger, sweep_id, run_id
        self.on_epoch, self.owns_ledger = on_epoch, owns_ledger
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        own = Ledger(self.ledger.path)
        try:
            while not self._stop.wait(heartbeat_interval()):
                own.heartbeat(self.run_id)
        finally:
            own.close()

    def epoch(self, row: dict[str, float]) -> bool:
        self.ledger.append_epoch(self.run_id, row)
        apply_early_termination(self.ledger, self.sweep_id)
        if self.on_epoch:
            self.on_epoch()
        return self.ledger.should_stop(self.run_id)

    def finish(self, record: RunRecord) -> None:
        self._stop.set()
        self.ledger.finish_run(
            self.run_id, record["state"], summary=record["summary"], history=record["history"],
            record_path=record["paths"]["record"], wandb_dir=record["paths"]["run_dir"])
        self.close()

    def close(self) -> None:
        """Stop the heartbeat, and close the ledger when this reporter opened it."""
        self._stop.set()
        if self.owns_ledger:
            self.ledger.close()

    def __exit__(self, *exc: object) -> None:
        self.close()


def reporter_from_env() -> LedgerReporter | None:
    """In a run launched for a local sweep (ASL_SWEEP_SWEEP_ID in our ledger), report to the ledger."""
    sweep_id, run_id = os.environ.get(LOCAL_SWEEP_ENV), os.environ.get("WANDB_RUN_ID")
    path = default_path()
    if not (sweep_id and run_id and path.is_file()):
        return None
    ledger = Ledger(path)
    if ledger.find_sweep(sweep_id) is None or ledger.run(run_id) is None:
        ledger.close()
        return None
    return LedgerReporter(ledger, sweep_id, run_id, owns_ledger=True)
