"""A run's saved model as a W&B artifact of type `model`, where W&B's users look for models: named as
W&B's Keras integration (`WandbModelCheckpoint`) names them, `run_<id>_model`, logged offline too (the
run's `.wandb` file holds the artifact record; `wandb sync` and `asl-sweep sync` upload it).

`asl-sweep export` of a W&B sweep downloads the winner's model from its artifact (a run logged before
artifacts falls back to the run's `model.keras` file), and `--link NAME` links it into the registry.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from asl_sweep.errors import UserError, one_line

MODEL_TYPE = "model"
MODEL_FILE = "model.keras"
REGISTRY = "wandb-registry-model"  # W&B's model registry: a bare --link NAME is a collection in it
log = logging.getLogger("asl_sweep")


def artifact_name(run_id: str) -> str:
    return f"run_{run_id}_model"


def metadata(record: dict[str, Any]) -> dict[str, Any]:
    """What the artifact says about its model: the sweep, the run's summary numbers, the config."""
    summary = {k: v for k, v in (record.get("summary") or {}).items()
               if isinstance(v, (int, str)) or (isinstance(v, float) and math.isfinite(v))}
    return {"sweep_id": record.get("sweep_id"), "state": str(record.get("state")), **summary,
            "config": record.get("config") or {}}


def log_model(run, record: dict[str, Any]) -> Any | None:
    """Log the run's saved model (none for a failed run) as its `model` artifact; the file is referenced
    where it lies ("immutable": nothing writes it after the save), not copied to a staging folder."""
    import wandb

    path = (record.get("paths") or {}).get("model")
    if not path or not Path(path).is_file():
        return None
    artifact = wandb.Artifact(artifact_name(run.id), type=MODEL_TYPE, metadata=metadata(record))
    artifact.add_file(path, name=MODEL_FILE, policy="immutable")
    return run.log_artifact(artifact)


def model_artifact(remote_run) -> Any | None:
    """The run's own `model` artifact (W&B API), or None when it logged none."""
    for artifact in remote_run.logged_artifacts():
        if artifact.type == MODEL_TYPE and artifact.name.split(":")[0] == artifact_name(remote_run.id):
            return artifact
    return None


def winner_model(remote_run, folder: Path) -> str:
    """The W&B run's model file downloaded into `folder`: from its artifact, else from its files."""
    try:
        artifact = model_artifact(remote_run)
        if artifact is not None:
            return str(Path(artifact.download(root=str(folder / "artifact"))) / MODEL_FILE)
        log.info("run %s logged no model artifact; downloading its %s file", remote_run.id, MODEL_FILE)
        return remote_run.file(MODEL_FILE).download(root=str(folder), replace=True).name
    except Exception as exc:  # the API raises CommError, HTTP errors, ValueError: all mean "cannot fetch it"
        raise UserError(f"cannot download run {remote_run.id}'s model from W&B: {one_line(exc, 200)}") from None


def link_target(name: str) -> str:
    """`NAME` is a collection of the model registry; `registry/collection` is taken as given."""
    return name if "/" in name else f"{REGISTRY}/{name}"


def link_model(remote_run, name: str) -> str:
    """Link the W&B run's model artifact into the registry; returns the linked artifact's path."""
    artifact = model_artifact(remote_run)
    if artifact is None:
        raise UserError(f"run {remote_run.id} logged no '{MODEL_TYPE}' artifact to link (it predates artifacts); "
                        "export it without --link")
    target = link_target(name)
    try:
        linked = artifact.link(target)
    except Exception as exc:  # permissions, an unknown registry, the network
        raise UserError(f"cannot link {artifact.name} to {target}: {one_line(exc, 200)}") from None
    return getattr(linked, "qualified_name", None) or target
