"""The shapes a run and a sweep travel in, and the words a run's record uses for why it ended: a leaf
(it imports only `state`), so that training, reading and reporting never import the ledger for types."""

from __future__ import annotations

from typing import Any, TypedDict

from asl_sweep.state import RunState, SweepState

# why a run ended early, kept in its `error` field (every reader shows it as the run's reason)
NO_HEARTBEAT = "no heartbeat (agent died)"
CANCELED = "stopped: sweep canceled (asl-sweep sweep --cancel)"
HYPERBAND = "stopped early by hyperband (early_terminate)"
INTERRUPTED = "interrupted by user (Ctrl-C)"
# a failed run's traceback or output tail, kept in its summary under this key (`error` holds its first line)
ERROR_LOG = "error_log"
# why a run that saved its result ended early (Ctrl-C), kept in its summary; the ledger's reporter makes it `error`
STOP_REASON = "stop_reason"


class RunRow(TypedDict):
    """A run as the ledger holds it (`config`, `history`, `summary` decoded from JSON)."""

    id: str
    sweep_id: str
    number: int
    config: dict[str, Any]
    state: RunState
    should_stop: int
    created_at: float
    heartbeat_at: float
    ended_at: float | None
    history: list[dict[str, float]]
    summary: dict[str, Any]
    record_path: str | None
    wandb_dir: str | None
    agent: str | None
    error: str | None
    attempt: int  # the fencing token: 1, then one more each time a preempted run is claimed again
    claim: str | None  # the claiming agent's own id for that claim, to find it after a lost COMMIT
    preemptions: int


class RunRecord(TypedDict):
    """A finished run's record (train.py writes it as `result.json` beside the model, and the ledger keeps
    it): all that export, report and evaluate need, since an offline run's W&B files are binary."""

    run_id: str
    sweep_id: str | None
    state: RunState
    config: dict[str, Any]
    history: list[dict[str, float]]
    summary: dict[str, Any]
    confusion_matrix: list[list[int]]
    robustness: dict[str, float]  # accuracy under each change of robustness.SUITE (empty for a failed run)
    val_predictions: list[dict[str, Any]]
    paths: dict[str, str | None]


class SweepRow(TypedDict):
    """A sweep as the ledger holds it (`config` decoded); `sweeps()` adds its run count as `runs`."""

    id: str
    name: str
    config: dict[str, Any]
    state: SweepState
    created_at: float
