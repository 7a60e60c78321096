"""`asl-sweep sync`: offline now, W&B later. A local sweep's runs are uploaded to W&B, then continued
there as a W&B sweep.

Runs were logged by wandb in offline mode, so `wandb sync` uploads their folders as they are (a local
run carries no W&B sweep id: the server would refuse an id it does not know). `wandb.sweep(config,
prior_runs=ids)` then creates a W&B sweep from the same YAML that holds those runs, so W&B's UI
shows one sweep and W&B's controller continues the search from them. Nothing in the ledger changes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from asl_sweep import runtime
from asl_sweep.errors import UserError, one_line
from asl_sweep.ledger import Ledger
from asl_sweep.records import Run
from asl_sweep.state import ACTIVE
from asl_sweep.sweepfile import falsy_first, wandb_target


def check_reachable() -> str:
    """W&B's base URL when there is an API key and its host answers; else one line saying why not."""
    if not runtime.has_wandb_key():
        raise UserError("W&B is not reachable: no API key (run 'wandb login' or set WANDB_API_KEY); nothing was synced")
    why = runtime.unreachable()
    if why is not None:
        raise UserError(f"W&B is not reachable at {runtime.base_url()}: {why}; nothing was synced")
    return runtime.base_url()


def run_folders(runs: list[Run]) -> tuple[list[tuple[str, Path]], list[str]]:
    """(run id, offline run folder) of every run that has one, and a note per run that has none."""
    found, missing = [], []
    for r in runs:
        folder = Path(r.wandb_dir) if r.wandb_dir else None
        if folder is not None and any(folder.glob("*.wandb")):
            found.append((r.id, folder))
        else:
            missing.append(f"run {r.id} ({r.state}) has no offline run folder")
    return found, missing


def upload(folders: list[Path], project: str, entity: str | None) -> None:
    """`wandb sync` the run folders into `entity/project`."""
    cmd = [sys.executable, "-m", "wandb", "sync", "--project", project]
    cmd += ["--entity", entity] if entity else []
    proc = subprocess.run(cmd + [str(f) for f in folders], capture_output=True, text=True,
                          env={**os.environ, "WANDB_MODE": "online"})
    if proc.returncode != 0:
        last = ((proc.stderr or proc.stdout).strip().splitlines() or ["no output"])[-1]
        raise UserError(f"wandb sync failed (exit code {proc.returncode}): {last}")


def wandb_sweep_config(config: dict[str, Any]) -> dict[str, Any]:
    """The YAML as W&B's controller should run it: without `controller: {type: local}`, and falsy
    categorical values first (a sweep made before `asl-sweep sweep` moved them, see `falsy_first`)."""
    return {k: v for k, v in falsy_first(config)[0].items() if k != "controller"}


def create_wandb_sweep(config: dict[str, Any], project: str, entity: str | None, *,
                       prior_runs: list[str] | None = None) -> str:
    """A new W&B sweep of `config` in `entity/project` (holding `prior_runs`); returns its path
    entity/project/id, which `asl-sweep agent` and `make agent SWEEP=` take."""
    import wandb

    try:
        sweep_id = wandb.sweep(config, project=project, entity=entity, **({"prior_runs": prior_runs} if prior_runs else {}))
    except Exception as exc:  # wandb raises CommError, UsageError, HTTP errors: all mean "W&B refused it"
        raise UserError(f"W&B did not create the sweep: {one_line(exc, 200)}") from None
    return "/".join(p for p in (entity, project, sweep_id) if p)


def sync_sweep(sweep_id: str, *, project: str | None = None, entity: str | None = None) -> str:
    """Upload every run of a local sweep and create the W&B sweep that continues it; returns what to print."""
    with Ledger(create=False) as ledger:
        sweep = ledger.sweep(sweep_id)
        runs = ledger.runs(sweep_id)
    active = [r.id for r in runs if r.state in ACTIVE]
    if active:
        raise UserError(f"sweep {sweep_id} has {len(active)} run(s) still running; sync once they end "
                        f"(or: asl-sweep sweep --cancel {sweep_id})")
    check_reachable()
    found, missing = run_folders(runs)
    if not found:
        raise UserError(f"sweep {sweep_id} has no run with an offline run folder to upload")
    project, entity = wandb_target(sweep["config"], project, entity)
    upload([folder for _, folder in found], project, entity)
    path = create_wandb_sweep(wandb_sweep_config(sweep["config"]), project, entity,
                              prior_runs=[run_id for run_id, _ in found])
    lines = [f"uploaded {len(found)} run(s) of local sweep {sweep_id} to {'/'.join(p for p in (entity, project) if p)}",
             *[f"  skipped: {note}" for note in missing],
             f"created W&B sweep {path} with them as prior runs",
             f"next: make agent SWEEP={path}"]
    return "\n".join(lines)
