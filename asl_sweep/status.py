"""Plain-text views of the ledger for the terminal: sweeps list, one sweep's runs, one run, the best run.
They only read: a ledger that does not exist is reported, never created; a run whose agent went silent
is shown crashed, and its sweep finished when nothing is left to run (`controller.shown_state`).
Every run that did not finish shows why (its `error`: the first line of a failure, or the reason it
stopped), so a newcomer never has to open the ledger to learn what went wrong."""

from __future__ import annotations

import time
from typing import Any

from asl_sweep.controller import shown_state
from asl_sweep.errors import UserError
from asl_sweep.ledger import CHOOSE, Ledger, ledger_exists, where
from asl_sweep.ranking import best_run, best_value
from asl_sweep.records import ERROR_LOG, Run, SweepRow
from asl_sweep.results import swept_params
from asl_sweep.state import RunState, SweepState
from asl_sweep.sweepfile import metric

REASON_WIDTH = 70


def fmt(value: Any) -> str:
    """A parameter value as a person reads it: floats to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def params_text(run: Run, names: list[str], sep: str = " ") -> str:
    return sep.join(f"{k}={fmt(run.config[k])}" for k in names if k in run.config)


def reason(run: Run) -> str:
    """Why a run did not finish (empty for a finished or running one)."""
    if run.state in (RunState.FINISHED, RunState.RUNNING):
        return ""
    return run.error or {RunState.STOPPED: "stopped", RunState.PENDING: "requeued"}.get(run.state, "no reason recorded")


def all_failed(runs: list[Run]) -> bool:
    return bool(runs) and all(r.state.is_broken for r in runs)


def state_text(sweep: SweepRow, runs: list[Run]) -> str:
    """The sweep's state, and what it means for a newcomer: no run yet, or every run failed."""
    state = shown_state(sweep, runs)
    if not runs and state == SweepState.RUNNING:
        return f"running, no run yet: start one with asl-sweep agent {sweep['id']}"
    if all_failed(runs) and not any(r.state.is_active for r in runs):
        return f"{state}: all {len(runs)} runs failed"
    return state


def failure_line(sweep_id: str, runs: list[Run]) -> str:
    """`all N runs failed` with the first run's reason and where to read the rest."""
    first = runs[0]
    return (f"sweep {sweep_id}: all {len(runs)} runs failed; run #{first.number}: {reason(first)} "
            f"(details: asl-sweep status {sweep_id} --run {first.number})")


def sweeps_table() -> str:
    if not ledger_exists():
        return (f"no local sweeps: no ledger at {where()} ({CHOOSE}; "
                "asl-sweep sweep FILE --local creates one here)")
    with Ledger(create=False) as ledger:
        rows = ledger.sweeps()
        if not rows:
            return f"no local sweeps in {ledger.display} ({CHOOSE})"
        lines = [f"{'id':10} {'name':14} {'method':7} {'state':9} {'runs':>4}  created"]
        notes = []
        for s in rows:
            created = time.strftime("%Y-%m-%d %H:%M", time.localtime(s["created_at"]))
            runs = ledger.runs(s["id"])
            state = shown_state(s, runs) if s["state"] == SweepState.RUNNING else s["state"]
            if all_failed(runs) and state != SweepState.RUNNING:
                state = "failed"
                notes.append("  " + failure_line(s["id"], runs))
            lines.append(f"{s['id']:10} {s['name'][:14]:14} {s['config']['method']:7} {state:9} {s['runs']:>4}  {created}")
        return "\n".join(lines + notes)


def status_table(sweep_id: str) -> str:
    """One line per run: state, epochs, best metric, the swept parameters (rounded) and why it did not finish."""
    with Ledger(create=False) as ledger:
        sweep = ledger.sweep(sweep_id)
        runs = ledger.runs(sweep_id)
        name, goal = metric(sweep["config"])
        swept = swept_params(sweep["config"])
        lines = [f"sweep {sweep_id} ({sweep['config']['method']}, {state_text(sweep, runs)}), metric {name} ({goal})",
                 f"{'#':>3} {'run':9} {'state':9} {'epochs':>6} {name:>14}  {'swept parameters':40} reason"]
        for r in runs:
            best = best_value(r, name, goal)
            shown = f"{best:.4f}" if best is not None else "-"
            why = reason(r)
            why = why if len(why) <= REASON_WIDTH else why[:REASON_WIDTH - 1] + "…"
            requeued = f"  (preempted {r.preemptions}x, requeued)" if r.preemptions else ""
            lines.append(f"{r.number:>3} {r.id:9} {r.state:9} {len(r.history):>6} {shown:>14}  "
                         f"{params_text(r, swept):40} {why}{requeued}".rstrip())
        if any(reason(r) for r in runs):
            lines.append(f"(a run's whole error and output: asl-sweep status {sweep_id} --run N)")
        lines.append(best_summary(sweep_id, ledger))
        return "\n".join(lines)


def run_detail(sweep_id: str, number: int) -> str:
    """Everything the ledger knows about one run: its state and reason, config, the whole error and the
    tail of its output or traceback (kept for a failed run), and where its files are."""
    with Ledger(create=False) as ledger:
        ledger.sweep(sweep_id)
        runs = ledger.runs(sweep_id)
        run = next((r for r in runs if r.number == number), None)
        if run is None:
            raise UserError(f"sweep {sweep_id} has no run #{number} (it has {len(runs)}: asl-sweep status {sweep_id})")
        name, goal = metric(ledger.sweep(sweep_id)["config"])
    best = best_value(run, name, goal)
    lines = [f"run #{run.number} {run.id} of sweep {sweep_id}: {run.state}"
             + (f" ({reason(run)})" if reason(run) else ""),
             f"  agent: {run.agent or '-'}, attempt {run.attempt}, {len(run.history)} epochs, "
             f"best {name} {'-' if best is None else f'{best:.4f}'}",
             f"  config: {params_text(run, list(run.config), ', ')}",
             f"  files: {files_text(run)}"]
    log = run.summary.get(ERROR_LOG)
    if log:
        lines += ["  output (last lines):", *("    " + line for line in log.splitlines())]
    return "\n".join(lines)


def files_text(run: Run) -> str:
    """Where a run's files are; for a run that ended without any, why."""
    if run.wandb_dir:
        return run.wandb_dir
    if run.state == RunState.RUNNING:
        return f"(still running on {run.agent or 'an agent'})"
    return f"none: the run {run.state} before saving any"


def best_summary(sweep_id: str, ledger: Ledger | None = None) -> str:
    """One paragraph: the best run, its value and where its files are; or why there is none."""
    if ledger is None:
        with Ledger(create=False) as own:
            return best_summary(sweep_id, own)
    sweep = ledger.sweep(sweep_id)
    name, goal = metric(sweep["config"])
    runs = ledger.runs(sweep_id)
    best = best_run(runs, name, goal)
    if best is None:
        if not runs:
            return f"sweep {sweep_id}: no run yet; start one with asl-sweep agent {sweep_id}"
        if all_failed(runs):
            return failure_line(sweep_id, runs)
        return f"sweep {sweep_id}: no run has reported {name} yet"
    value = best_value(best, name, goal)
    return (f"best run: {best.id} (#{best.number}, {best.state}) {name}={value:.4f}"
            + (f" ({reason(best)})" if reason(best) else "") + "\n"
            f"  config: {params_text(best, swept_params(sweep['config']) or list(best.config), ', ')}\n"
            f"  files: {files_text(best)}")
