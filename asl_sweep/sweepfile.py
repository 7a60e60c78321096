"""Read a W&B sweep YAML and check it before anything runs: W&B's own schema (the `sweeps`
package's validator), then what the embedded controller can run, then our config's known keys
and value domains. A file that passes here runs under W&B's agent and ours alike."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from asl_sweep.config import KNOWN_KEYS, from_mapping, load_yaml_file
from asl_sweep.errors import UserError

DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
DEFAULT_PROJECT = "asl-sweep"
# What a sweep's `metric.name` can be: the per-epoch keys every run logs (plain names, as W&B sees
# them); tests/test_train.py checks that a run's history has exactly these keys and `epoch`.
LOGGED_METRICS = ("val_accuracy", "val_loss", "accuracy", "loss", "learning_rate", "epoch_time",
                  "val_robust_accuracy", "val_score", "soft_accuracy", "val_soft_accuracy")
# W&B's schema default for `metric.goal` (the `sweeps` engine reads the key without a default).
DEFAULT_GOAL = "minimize"
# Schema keys that need W&B's servers (Launch, multi-objective custom search): the engine cannot run them.
SERVER_ONLY_KEYS = {
    "scheduler": "a W&B Launch scheduler",
    "job": "a W&B Launch job",
    "image_uri": "a W&B Launch image",
    "metrics": "multi-objective search (method: custom)",
}
# distributions whose min/max are in the parameter's own units (log_uniform's are exponents)
VALUE_SPACE_DISTRIBUTIONS = {"uniform", "int_uniform", "q_uniform", "log_uniform_values",
                             "q_log_uniform_values", "inv_log_uniform_values"}


def _sample_values(spec: dict[str, Any]) -> list[Any]:
    """Values a parameter spec can produce that we can check against our config domain."""
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return list(spec["values"])
    if spec.get("distribution", "uniform") in VALUE_SPACE_DISTRIBUTIONS:
        return [spec[k] for k in ("min", "max") if k in spec]
    return []


def engine_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config as W&B's controller sees it: `metric.goal` filled with the schema's default."""
    out = copy.deepcopy(config)
    if isinstance(out.get("metric"), dict):
        out["metric"].setdefault("goal", DEFAULT_GOAL)
    return out


def _check_runnable(config: dict[str, Any], source: str) -> None:
    """Refuse what the schema accepts but the embedded controller or the training program cannot run."""
    import sweeps

    if config.get("method") == "custom":
        raise UserError(f"{source}: 'method: custom' needs W&B's servers; use bayes, random or grid")
    for key, what in SERVER_ONLY_KEYS.items():
        if key in config:
            raise UserError(f"{source}: '{key}' ({what}) needs W&B's servers; remove it to run this sweep")
    command = config.get("command") or DEFAULT_COMMAND
    if "${program}" in command and not config.get("program"):
        raise UserError(f"{source}: 'command' uses ${{program}} but the file has no 'program'")
    name = (config.get("metric") or {}).get("name")
    if name is not None and name not in LOGGED_METRICS:
        raise UserError(f"{source}: metric '{name}' is never logged by training; "
                        f"logged per epoch: {', '.join(LOGGED_METRICS)}")
    engine = engine_config(config)
    try:  # ask the engine itself for a first suggestion and a first stop decision
        sweeps.next_run(engine, [], validate=True)
        if "early_terminate" in engine:
            sweeps.stop_runs(engine, [], validate=True)
    except Exception as exc:  # the engine raises ValueError, KeyError, ValidationError: all mean "cannot run"
        first = " ".join(str(exc).split())
        raise UserError(f"{source}: the search engine cannot run this sweep: {first[:300]}") from None


def validate(config: Any, source: str = "sweep config") -> dict[str, Any]:
    """Return the sweep config if W&B would accept it, the engine can run it and every parameter is a
    config key; else one clear error."""
    import sweeps

    if not isinstance(config, dict):
        raise UserError(f"{source}: a sweep file must be a YAML mapping")
    violations = sweeps.schema_violations_from_proposed_config(config)
    if violations:
        first = " ".join(str(violations[0]).split())
        raise UserError(f"{source}: not a valid W&B sweep: {first[:300]}")
    params = config.get("parameters", {})
    unknown = sorted(set(params) - KNOWN_KEYS)
    if unknown:
        raise UserError(f"{source}: unknown parameter '{unknown[0]}'; known keys: {', '.join(sorted(KNOWN_KEYS))}")
    for key, spec in params.items():
        for value in _sample_values(spec):
            from_mapping({key: value}, source=f"{source}, parameter '{key}'")
    _check_runnable(config, source)
    return config


def load(path: str | Path) -> dict[str, Any]:
    """Read and validate a sweep YAML file."""
    return validate(load_yaml_file(path, "sweep file"), source=str(path))


def metric(config: dict[str, Any]) -> tuple[str, str]:
    """(metric name, goal) of a sweep; W&B's default goal, and val_accuracy to rank by when there is no metric."""
    m = config.get("metric")
    if not m:
        return "val_accuracy", "maximize"
    return m["name"], m.get("goal", DEFAULT_GOAL)


def target(config: dict[str, Any]) -> float | None:
    """`metric.target`: the sweep finishes once a run reaches it (W&B's meaning)."""
    value = (config.get("metric") or {}).get("target")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def uses_local_controller(config: dict[str, Any]) -> bool:
    """`controller: {type: local}` asks for the embedded controller, as `wandb sweep --controller` does."""
    return (config.get("controller") or {}).get("type") == "local"


def wandb_target(config: dict[str, Any], project: str | None = None, entity: str | None = None
                 ) -> tuple[str, str | None]:
    """(project, entity) with `wandb sweep`'s precedence: flag > WANDB_PROJECT/WANDB_ENTITY > the YAML > default."""
    return (project or os.environ.get("WANDB_PROJECT") or config.get("project") or DEFAULT_PROJECT,
            entity or os.environ.get("WANDB_ENTITY") or config.get("entity") or None)
