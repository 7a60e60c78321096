"""Read a W&B sweep YAML and check it before anything runs: W&B's own schema (the `sweeps`
package's validator), then what the embedded controller can run, then our config's known keys
and value domains. A file that passes here runs under W&B's agent and ours alike."""

from __future__ import annotations

import copy
import difflib
import functools
import json
import os
from pathlib import Path
from typing import Any, Iterator

from asl_sweep.config import KNOWN_KEYS, from_mapping, load_yaml_file
from asl_sweep.errors import UserError

DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]  # W&B's, when a file has a `program`
# what a file with neither `command` nor `program` runs: asl-sweep's own training entrypoint
OWN_COMMAND = ["${env}", "${interpreter}", "-m", "asl_sweep.train", "${args}"]
DEFAULT_PROJECT = "asl-sweep"
# What a sweep's `metric.name` can be: the per-epoch keys every run logs (plain names, as W&B sees
# them; the two of ESTIMATED only with `robust_estimate`); tests/test_train.py checks that a run's
# history has exactly these keys and `epoch`.
LOGGED_METRICS = ("val_accuracy", "val_loss", "accuracy", "loss", "learning_rate", "epoch_time",
                  "val_robust_accuracy", "val_score", "soft_accuracy", "val_soft_accuracy")
ESTIMATED = ("val_robust_accuracy", "val_score")
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


def command_of(config: dict[str, Any]) -> list[str]:
    """The command a run of this sweep starts: the file's, else W&B's default around its `program`, else ours."""
    return list(config.get("command") or (DEFAULT_COMMAND if config.get("program") else OWN_COMMAND))


def with_own_command(config: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The config with `command` written out when the file has neither `command` nor `program` (as many
    W&B examples are), so W&B's servers and our agents run the same thing; True when it was filled in."""
    if config.get("command") or config.get("program"):
        return config, False
    return {**config, "command": list(OWN_COMMAND)}, True


def check_program(config: dict[str, Any], source: str, folder: Path | None = None) -> None:
    """A `program` the command starts must exist where runs start (the agent's folder, as W&B's agent)."""
    program = config.get("program")
    if not program or "${program}" not in command_of(config):
        return
    folder = (folder or Path.cwd()).resolve()
    if not (folder / program).is_file():
        raise UserError(f"{source}: program '{program}' does not exist in {folder} (runs start it from the folder "
                        "the agent runs in); fix the path, or remove 'program' and 'command' to run asl-sweep's own "
                        "training entrypoint")


@functools.cache
def _schema() -> dict[str, Any]:
    import sweeps.config

    return json.loads((Path(sweeps.config.__file__).parent / "schema.json").read_text())


def _enums(node: Any, key: str) -> set[str]:
    """Every value the schema allows for properties named `key`, anywhere in it."""
    if isinstance(node, list):
        return set().union(*map(lambda n: _enums(n, key), node)) if node else set()
    if not isinstance(node, dict):
        return set()
    found = set(node.get("properties", {}).get(key, {}).get("enum", []))
    return found.union(*(_enums(v, key) for v in node.values()))


def did_you_mean(word: str, choices: Any) -> str:
    """` (did you mean 'x'?)` for the nearest of `choices`, or nothing."""
    near = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f"; did you mean '{near[0]}'?" if near else ""


def near_misses(config: dict[str, Any], source: str) -> None:
    """The mistakes whose schema error names neither the key nor the fix: a misspelt top-level key,
    `metrics:` for `metric:`, an unknown distribution name. One line that suggests the near miss."""
    known = set(_schema()["properties"])
    for key in config:
        if key not in known:
            raise UserError(f"{source}: not a valid W&B sweep: unknown key '{key}'{did_you_mean(key, known)}")
    if isinstance(config.get("metrics"), dict) and "metric" not in config:
        raise UserError(f"{source}: not a valid W&B sweep: 'metrics' is W&B's list of objectives for method: custom; did you mean 'metric'? "
                        "(metric: {name: val_accuracy, goal: maximize})")
    distributions = _enums(_schema()["definitions"], "distribution")
    for name, spec in (config.get("parameters") or {}).items():
        wanted = spec.get("distribution") if isinstance(spec, dict) else None
        if isinstance(wanted, str) and wanted not in distributions:
            near = difflib.get_close_matches(wanted, sorted(distributions), n=1, cutoff=0.6)
            values = [f"{n}_values" for n in near if f"{n}_values" in distributions]
            hint = (f"; did you mean '{values[0]}' (min/max in the parameter's own units) or '{near[0]}' (min/max are "
                    "exponents)?" if values else did_you_mean(wanted, distributions))
            raise UserError(f"{source}: not a valid W&B sweep: parameter '{name}': unknown distribution '{wanted}'{hint}")


def _sample_values(spec: dict[str, Any]) -> list[Any]:
    """Values a parameter spec can produce that we can check against our config domain."""
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return list(spec["values"])
    if spec.get("distribution", "uniform") in VALUE_SPACE_DISTRIBUTIONS:
        return [spec[k] for k in ("min", "max") if k in spec]
    return []


def _parameter_specs(parameters: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(dotted name, spec) of every parameter, nested ones (`parameters:` inside a parameter) included."""
    for name, spec in parameters.items():
        if not isinstance(spec, dict):
            continue
        if isinstance(spec.get("parameters"), dict):
            yield from _parameter_specs(spec["parameters"], f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", spec


def falsy_first(config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The config with each categorical list's falsy value (`false`, `0`, `0.0`, `""`, `null`) moved to the
    front, and the names of the parameters moved. W&B's engine encodes a falsy value as the list's first
    (`sweeps/params.py`, `normalize_runs_as_array` skips it), so `[true, false]` makes bayes see `false`
    as `true`; with the falsy value first the encoding is right. Sampling is uniform over the list, so a
    random or bayes sweep's space is unchanged; a grid's order is the user's and stays as written."""
    out = copy.deepcopy(config)
    if config.get("method") == "grid":
        return out, []
    moved = []
    for name, spec in _parameter_specs(out.get("parameters") or {}):
        values = spec.get("values")
        if not isinstance(values, list) or "probabilities" in spec:
            continue
        falsy = [v for v in values if not v]
        if falsy and values[0]:
            spec["values"] = falsy + [v for v in values if v]
            moved.append(name)
    return out, moved


def _engine_blind_spots(config: dict[str, Any], source: str) -> None:
    """Refuse a bayes space the engine cannot see: two values it encodes alike (two falsy ones, or `1`
    and `true`, which `==` makes one), or `probabilities`, which make its encoder fail once a run ends."""
    if config.get("method") != "bayes":
        return
    for name, spec in _parameter_specs(config.get("parameters") or {}):
        values = spec.get("values")
        if not isinstance(values, list):
            continue
        if "probabilities" in spec:
            raise UserError(f"{source}: parameter '{name}': W&B's bayes engine fails on 'probabilities' once a run "
                            "has finished; remove 'probabilities' or use method: random")
        falsy = [v for v in values if not v]
        same = next(((a, b) for i, a in enumerate(values) for b in values[i + 1:]
                     if a == b and type(a) is not type(b)), None)
        if len(falsy) > 1 or same:
            a, b = same or falsy[:2]
            raise UserError(f"{source}: parameter '{name}': W&B's bayes engine cannot tell {json.dumps(a)} from "
                            f"{json.dumps(b)} (it encodes them alike); keep one of them")


def engine_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config as W&B's controller should see it: `metric.goal` filled with the schema's default and
    falsy categorical values first (`falsy_first`, for sweeps made before it)."""
    out = falsy_first(config)[0]
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
    if "${program}" in command_of(config) and not config.get("program"):
        raise UserError(f"{source}: 'command' uses ${{program}} but the file has no 'program': add 'program: FILE', "
                        "or remove 'command' to run asl-sweep's own training entrypoint")
    name = (config.get("metric") or {}).get("name")
    if name is not None and name not in LOGGED_METRICS:
        raise UserError(f"{source}: metric '{name}' is never logged by training; "
                        f"logged per epoch: {', '.join(LOGGED_METRICS)}")
    estimate = (config.get("parameters") or {}).get("robust_estimate")
    if name in ESTIMATED and estimate is not None and not all(
            from_mapping({"robust_estimate": v}).robust_estimate for v in _sample_values(estimate)):
        raise UserError(f"{source}: metric '{name}' is computed from the per-epoch robustness estimate, and "
                        "parameter 'robust_estimate' can be false: set it to true or rank by another metric")
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
    near_misses(config, source)
    violations = sweeps.schema_violations_from_proposed_config(config)
    if violations:
        first = " ".join(str(violations[0]).split())
        raise UserError(f"{source}: not a valid W&B sweep: {first[:300]}")
    params = config.get("parameters", {})
    unknown = sorted(set(params) - KNOWN_KEYS)
    if unknown:
        hint = did_you_mean(unknown[0], KNOWN_KEYS) or f"; known keys: {', '.join(sorted(KNOWN_KEYS))}"
        raise UserError(f"{source}: unknown parameter '{unknown[0]}'{hint}")
    for key, spec in params.items():
        for value in _sample_values(spec):
            from_mapping({key: value}, source=f"{source}, parameter '{key}'")
    _engine_blind_spots(config, source)
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
