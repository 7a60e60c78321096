"""The run every reader shares (`Run`), the shapes a sweep and a run's record travel in, and the words a
run's record uses for why it ended: a leaf (it imports only `state`), so that training, reading and
reporting never import the ledger for types."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
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


@dataclass(kw_only=True)
class Run:
    """A run as every reader sees it, made in one place per source (`ledger.run_from_row` for the ledger,
    `results.run_from_wandb` for the W&B API): typed fields instead of a dict that modules add keys to.
    A W&B run has no ledger bookkeeping (agent, attempt, heartbeat), so those fields have defaults."""

    id: str
    number: int
    state: RunState
    config: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    sweep_id: str | None = None
    should_stop: int = 0
    created_at: float | None = None
    heartbeat_at: float | None = None
    ended_at: float | None = None
    record_path: str | None = None
    wandb_dir: str | None = None
    agent: str | None = None
    error: str | None = None
    attempt: int = 1  # the fencing token: 1, then one more each time a preempted run is claimed again
    claim: str | None = None  # the claiming agent's own id for that claim, to find it after a lost COMMIT
    preemptions: int = 0
    record: RunRecord | None = None  # the ledger's copy of the run's record, when a reader fetched it
    remote: Any = field(default=None, repr=False, compare=False)  # the W&B API object, for its files

    @property
    def wall_time(self) -> float | None:
        """The run's own measure when it finished, else time since it started (running) or until it ended."""
        measured = self.summary.get("wall_time")
        if isinstance(measured, (int, float)):
            return float(measured)
        if self.created_at:
            return (self.ended_at or time.time()) - self.created_at
        return None


class RunRecord(TypedDict):
    """A finished run's record (train.py writes it as `result.json` beside the model, and the ledger keeps
    it): all that export, report and evaluate need, since an offline run's W&B files are binary. A JSON
    file's shape, read and written as the dict it is, hence a TypedDict and not a class like `Run`."""

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
