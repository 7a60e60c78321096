"""What "best" means, everywhere: a run's best epoch by the sweep's metric and goal (the model a run saves
is that epoch's), and the best run is the one whose best epoch is best. A module of its own because the
controller (metric.target), agents, status, results and export all rank runs the same way.
"""

from __future__ import annotations

import math
from typing import Any

from asl_sweep.records import Run
from asl_sweep.state import RunState


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def best_epoch(history: list[dict[str, Any]], name: str, goal: str) -> dict[str, Any] | None:
    """The epoch row with the best finite value of `name` (the first of equals), or None."""
    rows = [h for h in history if _finite(h.get(name))]
    if not rows:
        return None
    return (max if goal == "maximize" else min)(rows, key=lambda h: h[name])


def best_value(run: Run, name: str, goal: str) -> float | None:
    """A run's best finite value of the metric over its epochs (what the sweep ranks by), or None."""
    row = best_epoch(run.history, name, goal)
    return None if row is None else row[name]


def ranked(runs: list[Run], name: str, goal: str) -> list[Run]:
    """Runs that can have a result (not pending, failed or crashed), best first (the first of equals)."""
    scored = [(v, r) for r in runs if r.state in (RunState.FINISHED, RunState.STOPPED, RunState.RUNNING)
              and (v := best_value(r, name, goal)) is not None]
    return [r for _, r in sorted(scored, key=lambda s: s[0], reverse=goal == "maximize")]


def best_run(runs: list[Run], name: str, goal: str) -> Run | None:
    """The run whose best epoch is best, among runs that can have a result."""
    return next(iter(ranked(runs, name, goal)), None)


def metric_value(run: Run, name: str, goal: str) -> float | None:
    """The run's best epoch value of the metric (as the controller ranks runs), else its summary value."""
    value = best_value(run, name, goal)
    if value is not None:
        return float(value)
    v = run.summary.get(name)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None
