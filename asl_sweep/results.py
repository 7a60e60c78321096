"""A sweep's results, wherever they live: which run is best, and a sweep's runs and records loaded
from the local ledger or from W&B. Report, export, status, agents and sync read results through here.

"Best" has one meaning everywhere, kept in `ranking` (which the controller uses too).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asl_sweep.errors import UserError, one_line
from asl_sweep.ranking import ranked
from asl_sweep.records import Run, RunRecord
from asl_sweep.state import RunState
from asl_sweep.sweepfile import LOGGED_METRICS, metric, wandb_target

HISTORY_KEYS = ("epoch", *LOGGED_METRICS)  # what a W&B-hosted run's history is read back with


def swept_params(config: dict[str, Any]) -> list[str]:
    """Parameters that vary between runs (a fixed `value` or a one-element `values` list do not)."""
    out = []
    for name, spec in (config.get("parameters") or {}).items():
        if "value" in spec or ("values" in spec and len(spec["values"]) < 2):
            continue
        out.append(name)
    return out


@dataclass
class SweepData:
    """A sweep's config and runs in the ledger's shapes, from the ledger or the W&B API."""

    sweep_id: str
    name: str
    state: str
    config: dict[str, Any]
    runs: list[Run]
    best: Run | None
    source: str
    # better-ranked runs that ended early without saving a model (Ctrl-C, cancel): an export cannot use them
    passed_over: list[Run] = field(default_factory=list)
    metric_name: str = field(init=False)
    goal: str = field(init=False)

    def __post_init__(self) -> None:
        self.metric_name, self.goal = metric(self.config)


def read_record(run: Run | None) -> RunRecord | None:
    """The run's record as the ledger keeps it (`load_local` attaches it), else its result.json on this
    machine; None while it runs or when gone."""
    if run is None:
        return None
    if run.record:
        return run.record
    path = run.record_path
    if not path or not Path(path).is_file():
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def load_local(sweep_id: str, *, with_model: bool = False) -> SweepData | None:
    """The sweep from the ledger, or None when the ledger does not know the id. The best run gets its
    record from the ledger and, `with_model`, a model file: its own path when this machine has it, else
    the copy the ledger keeps (so any machine that reaches the ledger can export)."""
    from asl_sweep.controller import shown_state
    from asl_sweep.ledger import Ledger, is_local_sweep

    if not is_local_sweep(sweep_id):
        return None
    with Ledger(create=False) as ledger:
        sweep = ledger.sweep(sweep_id)
        runs = ledger.runs(sweep_id)
        best, passed_over = None, []
        for candidate in ranked(runs, *metric(sweep["config"])):
            candidate.record = ledger.record(candidate.id)
            record = read_record(candidate)
            saved = record is not None and (record.get("paths") or {}).get("model")
            if with_model and not saved and candidate.state == RunState.STOPPED:
                passed_over.append(candidate)  # ended early without a model: nothing to export, and nothing to wait for
                continue
            best = candidate
            if with_model and record is not None:
                record["paths"]["model"] = local_model(ledger, best.id, record["paths"].get("model"))
            break
    return SweepData(sweep_id, sweep["name"], shown_state(sweep, runs), sweep["config"], runs, best, ledger.display,
                     passed_over)


def local_model(ledger, run_id: str, path: str | None) -> str:
    """The run's model file on this machine: where it was saved, else written out from the ledger's copy."""
    if path and Path(path).is_file():
        return path
    data = ledger.model(run_id)
    if data is None:
        raise UserError(f"run {run_id}'s model is not on this machine (it was saved at {path}) and the ledger "
                        f"{ledger.display} has no copy of it; export on the machine that trained it")
    from asl_sweep.data import atomic_file

    target = run_files(run_id) / "model.keras"
    with atomic_file(target) as fh:  # a concurrent export never reads half a file
        fh.write(data)
    return str(target)


def run_files(run_id: str) -> Path:
    """The cache folder for one run's files fetched from a ledger or W&B: reused by each later report or
    export of it, where temporary folders would pile up."""
    from asl_sweep.data import cache_subfolder

    folder = cache_subfolder("runs") / run_id
    folder.mkdir(parents=True, exist_ok=True)
    return folder


WANDB_STATES = {"killed": RunState.STOPPED, "preempted": RunState.STOPPED}  # W&B's states that are not ours


def run_from_wandb(remote: Any, number: int) -> Run:
    """A W&B run (public API) as a `Run`, the one place such a run is made: its epochs, numeric and text
    summary, config without W&B's own keys; `remote` keeps the API object for its files."""
    history = [{k: row[k] for k in HISTORY_KEYS if isinstance(row.get(k), (int, float))}
               for row in remote.scan_history() if "epoch" in row]
    summary = {k: v for k, v in remote.summary.items() if not k.startswith("_") and isinstance(v, (int, float, str))}
    summary.setdefault("wall_time", remote.summary.get("_runtime"))
    return Run(id=remote.id, number=number, state=WANDB_STATES.get(remote.state, remote.state),
               config={k: v for k, v in remote.config.items() if not k.startswith("_")},
               history=history, summary=summary, remote=remote)


def load_wandb(sweep_id: str, *, with_model: bool = False) -> SweepData:
    """A W&B sweep through the public API; the best run's result.json (and model) are downloaded."""
    import wandb

    api = wandb.Api()
    path = sweep_id if sweep_id.count("/") == 2 else f"{api.default_entity}/{wandb_target({})[0]}/{sweep_id}"
    try:
        sweep = api.sweep(path)
        best_remote = sweep.best_run()
    except Exception as exc:  # the API raises CommError, ValueError, HTTP errors: all mean "cannot read it"
        raise UserError(f"cannot read W&B sweep {path}: {one_line(exc, 200)}") from None
    runs = [run_from_wandb(r, number) for number, r in enumerate(sorted(sweep.runs, key=lambda r: r.created_at), 1)]
    best = next((r for r in runs if best_remote is not None and r.id == best_remote.id), None)
    if best is not None:
        folder = run_files(best.id)
        try:
            best.record_path = best.remote.file("result.json").download(root=str(folder), replace=True).name
            if with_model:
                model = best.remote.file("model.keras").download(root=str(folder), replace=True).name
                record = json.loads(Path(best.record_path).read_text())
                record["paths"]["model"] = model
                Path(best.record_path).write_text(json.dumps(record))
        except Exception as exc:  # missing file or network: the report still works without the record
            if with_model:
                raise UserError(f"cannot download the best run's files from W&B: {exc}") from None
    return SweepData(sweep_id, sweep.name or sweep_id, sweep.state.lower(), sweep.config, runs, best, f"W&B {path}")


def load_sweep(sweep_id: str, *, with_model: bool = False) -> SweepData:
    """Local ledger first; a W&B sweep when online; else one clear error."""
    from asl_sweep import runtime
    from asl_sweep.ledger import unknown_sweep

    local = load_local(sweep_id, with_model=with_model)
    if local is not None:
        return local
    if runtime.wandb_mode() == "online":
        runtime.require_online(f"sweep {sweep_id}")
        return load_wandb(sweep_id, with_model=with_model)
    raise unknown_sweep(sweep_id)


