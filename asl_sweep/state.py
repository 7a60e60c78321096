"""Run and sweep states, and what an agent's attempt at a run came to: a leaf that every module imports
(as Optuna's `trial/_state.py`) and that imports nothing. Each is a `str` enum stored as its value, so
ledger rows, records and plain string comparisons (`state == "running"`) keep working."""

from __future__ import annotations

from enum import Enum


class Named(str, Enum):
    """Shown and formatted as its value (`f"{state:9}"` pads "running", not "RunState.RUNNING")."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class RunState(Named):
    """A run's state, one type for every module (as Optuna's TrialState); stored as its value.
    `pending` is a preempted run waiting for the next free agent (W&B's requeue), `stopped` an
    early-stopped (hyperband) or interrupted run, `crashed` one whose agent died."""

    PENDING = "pending"
    RUNNING = "running"
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"
    CRASHED = "crashed"

    @property
    def is_active(self) -> bool:
        return self in (RunState.PENDING, RunState.RUNNING)

    @property
    def is_final(self) -> bool:
        return not self.is_active

    @property
    def is_broken(self) -> bool:
        """Ended without a usable result."""
        return self in (RunState.FAILED, RunState.CRASHED)


ACTIVE = tuple(s.value for s in RunState if s.is_active)


class SweepState(Named):
    """A sweep's state, W&B's lower-case names: only a running sweep gives runs."""

    RUNNING = "running"
    PAUSED = "paused"
    FINISHED = "finished"
    CANCELED = "canceled"


class Outcome(Named):
    """What one agent's attempt at a run came to: the final state it recorded, `requeued` (SIGTERM: the
    run waits for the next free agent) or `fenced` (reaped meanwhile, so its result was not recorded)."""

    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"
    CRASHED = "crashed"
    REQUEUED = "requeued"
    FENCED = "fenced"

    @property
    def recorded(self) -> bool:
        """The attempt recorded the run's end (it was neither requeued nor fenced)."""
        return self not in (Outcome.REQUEUED, Outcome.FENCED)
