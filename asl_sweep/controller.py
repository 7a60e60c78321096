"""The embedded local controller: W&B's own search (`sweeps.next_run`) and early termination
(`sweeps.stop_runs`) over the runs in the ledger.

There is no controller process: whichever agent needs the next run claims it inside one
transaction holding the sweep's lock (reap stale runs, requeued run first, check `run_cap`, ask the
engine, insert), so agents anywhere never get the same grid point and `run_cap` holds exactly.
Hyperband's stop decisions can only change when some run reaches one of its bands, so they are
computed then, by the agent whose run got there. SIGTERM (what SLURM and Kubernetes send before a
kill) ends the run at its epoch boundary and requeues it: W&B's `mark_preempting`.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
from typing import Any

import numpy as np

from asl_sweep.heartbeat import Heartbeat
from asl_sweep.ledger import Ledger, default_path, ledger_exists
from asl_sweep.ranking import best_value
from asl_sweep.records import HYPERBAND, STOP_REASON, Run, RunRecord, SweepRow
from asl_sweep.state import Outcome, RunState, SweepState
from asl_sweep.sweepfile import engine_config, metric, target

# A local sweep's runs find their sweep here (W&B's agent sets WANDB_SWEEP_ID, which a local id must not use).
LOCAL_SWEEP_ENV = "ASL_SWEEP_SWEEP_ID"
# ... and the attempt the agent claimed, the fencing token its reports carry
RUN_ATTEMPT_ENV = "ASL_SWEEP_RUN_ATTEMPT"
# our RunState -> the engine's RunState value; an early-stopped run is "finished" to W&B as well
ENGINE_STATE = {**{state: state.value for state in RunState}, RunState.STOPPED: RunState.FINISHED.value}
# set by SIGTERM in this process: the run in progress ends at its epoch boundary and is requeued
PREEMPTED = threading.Event()


def watch_sigterm() -> None:
    """Turn SIGTERM into a preemption request (main thread only; elsewhere the default stays)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: PREEMPTED.set())


def engine_runs(runs: list[Run]):
    """Ledger runs in the shapes `sweeps` expects: config as {k: {value}}, history and summary included."""
    from sweeps import SweepRun

    return [
        SweepRun(
            name=r.id,
            state=ENGINE_STATE[r.state],
            config={k: {"value": v} for k, v in r.config.items()},
            history=r.history,
            summary_metrics={k: v for k, v in r.summary.items() if isinstance(v, (int, float))},
            stopped=r.state == RunState.STOPPED,
            should_stop=bool(r.should_stop),
        )
        for r in runs
    ]


def fresh_entropy() -> None:
    """Reseed the global RNGs the engine draws from: each in-process run calls
    `keras.utils.set_random_seed(seed)`, which would otherwise make every suggestion the same."""
    random.seed(os.urandom(16))
    np.random.seed(int.from_bytes(os.urandom(4), "little"))


def target_reached(config: dict[str, Any], runs: list[Run]) -> bool:
    """True once any run has reached `metric.target` (W&B: the sweep then finishes)."""
    goal_value = target(config)
    if goal_value is None:
        return False
    name, goal = metric(config)
    values = [v for r in runs if (v := best_value(r, name, goal)) is not None]
    return any(v >= goal_value if goal == "maximize" else v <= goal_value for v in values)


def next_values(config: dict[str, Any], runs: list[Run]) -> dict[str, Any] | None:
    """The engine's next configuration, or None once the sweep gives no more runs (run_cap reached,
    metric.target reached, or the search has no point left)."""
    import sweeps

    cap = config.get("run_cap")
    if (cap is not None and len(runs) >= cap) or target_reached(config, runs):
        return None
    fresh_entropy()
    suggestion = sweeps.next_run(engine_config(config), engine_runs(runs))
    return None if suggestion is None else {k: v["value"] for k, v in suggestion.config.items()}


def shown_state(sweep: SweepRow, runs: list[Run]) -> SweepState:
    """The sweep's state as every reader shows it: a running sweep with no live run left (a silent run
    counts as crashed) and nothing more to give is finished, which the next claim would record; so a
    sweep whose last run died ends then, without waiting for an agent to come and look."""
    if sweep["state"] != SweepState.RUNNING or any(r.state.is_active for r in runs):
        return sweep["state"]
    return SweepState.FINISHED if next_values(sweep["config"], runs) is None else SweepState.RUNNING


def claim_next(ledger: Ledger, sweep_id: str, agent: str) -> Run | None:
    """The sweep's next run for this agent, the engine's search choosing a new one (`Ledger.claim`); None
    when the sweep gives no run now (its state says why)."""
    return ledger.claim(sweep_id, agent, next_values)


def hyperband_bands(config: dict[str, Any]) -> set[int] | None:
    """The epoch counts at which hyperband's decisions can change (a run reaching a band adds a threshold
    value or meets one; a run's best value only improves), or None to decide after every epoch. `sweeps`
    computes the same bands inside `hyperband_stop_runs` without exposing them, so this repeats its rule."""
    from sweeps.config import fill_validate_early_terminate

    if (config.get("early_terminate") or {}).get("type") != "hyperband":
        return None
    et = fill_validate_early_terminate(dict(config))["early_terminate"]
    eta = et["eta"]
    if "max_iter" in et:
        bands, band = set(), et["max_iter"]
        for _ in range(et["s"]):
            band /= eta
            if band < 1:
                break
            bands.add(int(band))
        return bands
    return {int(et["min_iter"] * eta ** i) for i in range(64)}


def apply_early_termination(ledger: Ledger, sweep_id: str) -> list[str]:
    """Ask `sweeps.stop_runs` which running runs to stop and flag them in the ledger."""
    import sweeps

    config = ledger.sweep(sweep_id)["config"]
    if not config.get("early_terminate"):
        return []
    runs = ledger.runs(sweep_id)
    to_stop = [r.name for r in sweeps.stop_runs(engine_config(config), engine_runs(runs))]
    running = {r.id for r in runs if r.state == RunState.RUNNING and not r.should_stop}
    flagged = [r for r in to_stop if r in running]
    ledger.request_stop(flagged, HYPERBAND)
    return flagged


class LedgerReporter(contextlib.AbstractContextManager):
    """Reports one attempt of a run to the ledger: its epochs, its end, its model; heartbeats from a
    thread; relays stop requests. A write the ledger refuses (the run was reaped as crashed or requeued
    meanwhile) fences this attempt: it stops at its next epoch and its result is not recorded.
    A context manager: leaving it stops the heartbeat, so a run that raised stops looking alive."""

    def __init__(self, ledger: Ledger, sweep_id: str, run: Run, on_epoch=None, *, owns_ledger: bool = False) -> None:
        self.ledger, self.sweep_id, self.run_id, self.attempt = ledger, sweep_id, run.id, run.attempt
        self.on_epoch, self.owns_ledger = on_epoch, owns_ledger
        self.step, self.refused, self.outcome = 0, False, Outcome.FENCED
        self.bands = hyperband_bands(ledger.sweep(sweep_id)["config"])
        self.heartbeat = Heartbeat(lambda: Ledger(ledger.location, patient=True), self.run_id, self.attempt)

    @property
    def fenced(self) -> bool:
        """A write of this attempt was refused: the run is no longer its own."""
        return self.refused or self.heartbeat.fenced.is_set()

    def epoch(self, row: dict[str, float]) -> bool:
        self.step += 1
        if not self.ledger.append_epoch(self.run_id, row, attempt=self.attempt, step=self.step):
            self.refused = True
        if self.fenced:
            return True
        if self.bands is None or self.step in self.bands:
            apply_early_termination(self.ledger, self.sweep_id)
        if self.on_epoch:
            self.on_epoch()
        return PREEMPTED.is_set() or self.ledger.should_stop(self.run_id)

    def finish(self, record: RunRecord) -> None:
        """Record the run's end, or requeue it when SIGTERM stopped it (and the sweep did not)."""
        self.heartbeat.stop()
        if PREEMPTED.is_set() and record["state"] == RunState.STOPPED and not self.ledger.should_stop(self.run_id):
            landed = self.ledger.requeue(self.run_id, self.attempt, "preempted (SIGTERM); requeued")
            self.outcome = Outcome.REQUEUED if landed else Outcome.FENCED
        else:
            model_path = record["paths"].get("model")
            model = open(model_path, "rb").read() if model_path and os.path.isfile(model_path) else None
            landed = self.ledger.finish_run(
                self.run_id, record["state"], attempt=self.attempt, summary=record["summary"], record=record,
                model=model, record_path=record["paths"]["record"], wandb_dir=record["paths"]["run_dir"],
                error=record["summary"].get(STOP_REASON))
            self.outcome = Outcome(record["state"]) if landed else Outcome.FENCED
        self.refused = self.refused or not landed
        self.close()

    def close(self) -> None:
        """Stop the heartbeat, and close the ledger when this reporter opened it."""
        self.heartbeat.stop()
        if self.owns_ledger:
            self.ledger.close()

    def __exit__(self, *exc: object) -> None:
        self.close()


def reporter_from_env() -> LedgerReporter | None:
    """In a run launched for a local sweep (ASL_SWEEP_SWEEP_ID in our ledger), report to the ledger as the
    attempt the agent claimed (ASL_SWEEP_RUN_ATTEMPT); SIGTERM then preempts the run."""
    sweep_id, run_id = os.environ.get(LOCAL_SWEEP_ENV), os.environ.get("WANDB_RUN_ID")
    if not (sweep_id and run_id and ledger_exists()):
        return None
    ledger = Ledger(default_path(), patient=True)
    run = ledger.run(run_id) if ledger.find_sweep(sweep_id) is not None else None
    if run is None:
        ledger.close()
        return None
    run.attempt = int(os.environ.get(RUN_ATTEMPT_ENV) or run.attempt)
    watch_sigterm()
    return LedgerReporter(ledger, sweep_id, run, owns_ledger=True)
