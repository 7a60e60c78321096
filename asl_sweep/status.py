"""Plain-text views of the ledger for the terminal: sweeps list, one sweep's runs, the best run.
They only read: a ledger that does not exist is reported, never created; a run whose agent went silent
is shown crashed, and its sweep finished when nothing is left to run (`controller.shown_state`)."""

from __future__ import annotations

import time

from asl_sweep.controller import shown_state
from asl_sweep.ledger import Ledger, default_path, ledger_exists
from asl_sweep.ranking import best_run, best_value
from asl_sweep.sweepfile import metric


def sweeps_table() -> str:
    if not ledger_exists():
        return f"no local sweeps in {default_path()}"
    with Ledger(create=False) as ledger:
        rows = ledger.sweeps()
        if not rows:
            return f"no local sweeps in {ledger.display}"
        lines = [f"{'id':10} {'name':14} {'method':7} {'state':9} {'runs':>4}  created"]
        for s in rows:
            created = time.strftime("%Y-%m-%d %H:%M", time.localtime(s["created_at"]))
            state = shown_state(s, ledger.runs(s["id"])) if s["state"] == "running" else s["state"]
            lines.append(f"{s['id']:10} {s['name'][:14]:14} {s['config']['method']:7} {state:9} {s['runs']:>4}  {created}")
        return "\n".join(lines)


def status_table(sweep_id: str) -> str:
    with Ledger(create=False) as ledger:
        sweep = ledger.sweep(sweep_id)
        runs = ledger.runs(sweep_id)
        name, goal = metric(sweep["config"])
        lines = [f"sweep {sweep_id} ({sweep['config']['method']}, {shown_state(sweep, runs)}), metric {name} ({goal})",
                 f"{'#':>3} {'run':9} {'state':9} {'epochs':>6} {name:>14}  config"]
        for r in runs:
            best = best_value(r, name, goal)
            params = " ".join(f"{k}={v}" for k, v in r["config"].items())
            shown = f"{best:.4f}" if best is not None else "-"
            requeued = f"  (preempted {r['preemptions']}x, requeued)" if r["preemptions"] else ""
            lines.append(f"{r['number']:>3} {r['id']:9} {r['state']:9} {len(r['history']):>6} {shown:>14}  {params}{requeued}")
        lines.append(best_summary(sweep_id, ledger))
        return "\n".join(lines)


def best_summary(sweep_id: str, ledger: Ledger | None = None) -> str:
    """One paragraph: the best run, its value and where its files are."""
    if ledger is None:
        with Ledger(create=False) as own:
            return best_summary(sweep_id, own)
    name, goal = metric(ledger.sweep(sweep_id)["config"])
    best = best_run(ledger.runs(sweep_id), name, goal)
    if best is None:
        return f"sweep {sweep_id}: no run has reported {name} yet"
    value = best_value(best, name, goal)
    where = best["wandb_dir"] or "(still running)"
    params = ", ".join(f"{k}={v}" for k, v in best["config"].items())
    return (f"best run: {best['id']} (#{best['number']}, {best['state']}) {name}={value:.4f}\n"
            f"  config: {params}\n  files: {where}")
