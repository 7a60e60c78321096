"""The embedded local controller: W&B's own search (`sweeps.next_run`) and early termination
(`sweeps.stop_runs`) over the runs in the ledger.

There is no controller process: whichever agent needs the next run claims it inside one
IMMEDIATE transaction (reap stale runs, check `run_cap`, ask the engine, insert), so several
agents never get the same grid point and `run_cap` holds exactly. Stop decisions are made as
epochs arrive, by the process that reports the epoch.
"""

from __future__ import annotations

import json
import math
import os
import random
import threading
import time
from typing import Any

import numpy as np

from asl_sweep.ledger import Ledger, default_path, new_id, run_from_row
from asl_sweep.runtime import env_number
from asl_sweep.sweepfile import engine_config, metric, target

# ledger state -> the engine's RunState; an early-stopped run is "finished" to W&B as well
ENGINE_STATE = {"pending": "pending", "running": "running", "finished": "finished", "stopped": "finished",
                "failed": "failed", "crashed": "crashed"}


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
            stopped=r["state"] == "stopped",
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
        "UPDATE runs SET state = 'crashed', ended_at = ?, error = 'no heartbeat (agent died)' "
        "WHERE sweep_id = ? AND state IN ('pending', 'running') AND heartbeat_at < ?",
        (time.time(), sweep_id, time.time() - timeout))
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
        if state != "running":
            return None
        runs = [run_from_row(r) for r in db.execute("SELECT * FROM runs WHERE sweep_id = ? ORDER BY number", (sweep_id,))]
        cap = config.get("run_cap")
        fresh_entropy()
        done = (cap is not None and len(runs) >= cap) or target_reached(config, runs)
        suggestion = None if done else sweeps.next_run(engine_config(config), engine_runs(runs))
        if suggestion is None:
            if not any(r["state"] in ("pending", "running") for r in runs):
                db.execute("UPDATE sweeps SET state = 'finished' WHERE id = ?", (sweep_id,))
            return None
        values = {k: v["value"] for k, v in suggestion.config.items()}
        run_id, now = new_id(), time.time()
        db.execute(
            "INSERT INTO runs (id, sweep_id, number, config, state, created_at, heartbeat_at, agent) "
            "VALUES (?, ?, ?, ?, 'running', ?, ?, ?)",
            (run_id, sweep_id, len(runs) + 1, json.dumps(values), now, now, agent))
    return ledger.run(run_id)


def apply_early_termination(ledger: Ledger, sweep_id: str) -> list[str]:
    """Ask `sweeps.stop_runs` which running runs to stop and flag them in the ledger."""
    import sweeps

    config = ledger.sweep(sweep_id)["config"]
    if not config.get("early_terminate"):
        return []
    runs = ledger.runs(sweep_id)
    to_stop = [r.name for r in sweeps.stop_runs(engine_config(config), engine_runs(runs))]
    running = {r["id"] for r in runs if r["state"] == "running" and not r["should_stop"]}
    flagged = [r for r in to_stop if r in running]
    ledger.request_stop(flagged)
    return flagged


class LedgerReporter:
    """Reports a run's epochs and end to the ledger, heartbeats from a thread, relays stop requests."""

    def __init__(self, ledger: Ledger, sweep_id: str, run_id: str, on_epoch=None) -> None:
        self.ledger, self.sweep_id, self.run_id = ledger, sweep_id, run_id
        self.on_epoch = on_epoch
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

    def finish(self, record: dict[str, Any]) -> None:
        self.close()
        self.ledger.finish_run(
            self.run_id, record["state"], summary=record["summary"], history=record["history"],
            record_path=record["paths"]["record"], wandb_dir=record["paths"]["run_dir"])

    def close(self) -> None:
        self._stop.set()


def reporter_from_env() -> LedgerReporter | None:
    """In a run launched for a local sweep (ASL_SWEEP_SWEEP_ID in our ledger), report to the ledger."""
    from asl_sweep.train import LOCAL_SWEEP_ENV

    sweep_id, run_id = os.environ.get(LOCAL_SWEEP_ENV), os.environ.get("WANDB_RUN_ID")
    path = default_path()
    if not (sweep_id and run_id and path.is_file()):
        return None
    ledger = Ledger(path)
    if ledger.find_sweep(sweep_id) is None or ledger.run(run_id) is None:
        ledger.close()
        return None
    return LedgerReporter(ledger, sweep_id, run_id)


def best_value(run: dict[str, Any], name: str, goal: str) -> float | None:
    """A run's best finite value of the metric over its epochs (what the sweep ranks by), or None."""
    values = [h[name] for h in run["history"]
              if isinstance(h.get(name), (int, float)) and not isinstance(h[name], bool) and math.isfinite(h[name])]
    return (max(values) if goal == "maximize" else min(values)) if values else None


def best_run(ledger: Ledger, sweep_id: str) -> dict[str, Any] | None:
    """The run with the best value of the sweep's metric (its best epoch), by the sweep's goal."""
    name, goal = metric(ledger.sweep(sweep_id)["config"])
    scored = [(v, r) for r in ledger.runs(sweep_id)
              if r["state"] in ("finished", "stopped", "running") and (v := best_value(r, name, goal)) is not None]
    if not scored:
        return None
    pick = max if goal == "maximize" else min
    return pick(scored, key=lambda s: s[0])[1]
