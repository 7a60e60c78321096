"""Read a W&B sweep YAML and check it before anything runs: W&B's own schema (the `sweeps`
package's validator), then our config's known keys and value domains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from asl_sweep.config import KNOWN_KEYS, from_mapping, load_yaml_file
from asl_sweep.errors import UserError

DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
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


def validate(config: Any, source: str = "sweep config") -> dict[str, Any]:
    """Return the sweep config if W&B would accept it and every parameter is a config key; else one clear error."""
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
    return config


def load(path: str | Path) -> dict[str, Any]:
    """Read and validate a sweep YAML file."""
    return validate(load_yaml_file(path, "sweep file"), source=str(path))


def metric(config: dict[str, Any]) -> tuple[str, str]:
    """(metric name, goal) of a sweep; W&B's defaults when absent."""
    m = config.get("metric") or {}
    return m.get("name", "val_accuracy"), m.get("goal", "maximize")
