"""The report's figures as plotly JSON for the dashboard, from the same figure data (`report.Figures`)
and the same plotly functions as the report's page: the data is computed once, in `report`, and drawn
by plotly.js in the browser from the figures' JSON, so the page and the report cannot disagree.

What only a live view needs (best so far against time, a run of its own) is built here from the same
pieces. The random-forest importance, the costly figure (seconds for a hundred runs), is refitted when a
run has ended, at most every IMPORTANCE_S seconds.
"""

from __future__ import annotations

import base64
import io
import json
import time
from dataclasses import replace
from typing import Any

from asl_sweep import report
from asl_sweep.ranking import metric_value
from asl_sweep.records import Run, RunRecord
from asl_sweep.results import SweepData

IMPORTANCE_S = 30.0
IMPORTANCE_CACHE: dict[str, tuple[tuple, float, list[dict[str, Any]]]] = {}  # sweep -> (its ended runs, when, rows)


def plotly_json(fig) -> dict[str, Any]:
    """A figure as plotly.js takes it (`Plotly.react(div, data, layout)`): numpy arrays become lists."""
    return json.loads(fig.to_json())


def ended_fingerprint(data: SweepData) -> tuple:
    """What importance depends on once runs end: which runs ended, and with which value."""
    return (data.sweep_id, tuple((r.id, metric_value(r, data.metric_name, data.goal))
                                 for r in data.runs if not r.state.is_active))


def importance(data: SweepData) -> list[dict[str, Any]]:
    """`report.importance`, refitted when a run has ended (not on every epoch of a running one) and at most
    every IMPORTANCE_S seconds: a forest of 200 trees per poll would take a core from the agents."""
    key = ended_fingerprint(data)
    known = IMPORTANCE_CACHE.get(data.sweep_id)
    if known is None or (known[0] != key and time.monotonic() - known[1] >= IMPORTANCE_S):
        IMPORTANCE_CACHE[data.sweep_id] = known = (key, time.monotonic(), report.importance(data))
    return known[2]


def sweep_figures(data: SweepData) -> report.Figures:
    """The report's figure data for a sweep page (the best run's images are on its run page)."""
    return report.Figures(data, report.parallel_axes(data), importance(data), report.leaderboard(data), None, None)


def best_so_far(data: SweepData) -> list[dict[str, Any]]:
    """The best metric value the sweep had reached at each moment a run improved on it, in seconds since
    the sweep's first run started: a finished run counts when it ended, a running one at its last beat."""
    starts = [r.created_at for r in data.runs if r.created_at]
    if not starts:
        return []
    points = []
    for r in data.runs:
        value = metric_value(r, data.metric_name, data.goal)
        at = r.ended_at or r.heartbeat_at
        if value is not None and at:
            points.append((at - min(starts), value, r))
    best, out = None, []
    for t, value, r in sorted(points, key=lambda p: p[0]):
        if best is None or (value > best if data.goal == "maximize" else value < best):
            best = value
            out.append({"t": t, "value": value, "run": f"#{r.number} {r.id}"})
    return out


def fig_best_so_far(data: SweepData):
    import plotly.graph_objects as go

    steps = best_so_far(data)
    title = f"Best {data.metric_name} so far against time"
    if not steps:
        return report._empty(title, f"no run has reported {data.metric_name} yet")
    xs = [s["t"] / 60 for s in steps]
    ys = [s["value"] for s in steps]
    end = max(xs[-1], (time.time() - min(r.created_at for r in data.runs)) / 60)
    fig = go.Figure(go.Scatter(x=xs + [end], y=ys + [ys[-1]], mode="lines+markers", line={"shape": "hv"},
                               text=[s["run"] for s in steps] + ["now"],
                               hovertemplate="%{text}<br>%{x:.1f} min<br>%{y:.4f}<extra></extra>"))
    fig.update_layout(title=title, height=320, xaxis_title="minutes since the first run started",
                      yaxis_title=data.metric_name, margin={"t": 60})
    return fig


def sweep_payload(data: SweepData) -> dict[str, Any]:
    """Every figure of a sweep page, as plotly JSON."""
    f = sweep_figures(data)
    return {"figures": {"best_so_far": plotly_json(fig_best_so_far(data)),
                        "parallel": plotly_json(report.fig_parallel(f)),
                        "importance": plotly_json(report.fig_importance(f)),
                        "curves": plotly_json(report.fig_curves(f))},
            "importance_caveat": report.importance_caveat(data) if f.importance else ""}


def leaderboard_rows(data: SweepData) -> list[dict[str, Any]]:
    """The report's leaderboard, each row with its run's id for a link to the run's page."""
    return [{**row, "run_id": row["run"].split()[-1]} for row in report.leaderboard(data)]


def png_uri(canvas) -> str:
    """The montage as a PNG data URI: 10x smaller than plotly's pixel arrays in JSON."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def run_figures(data: SweepData, run: Run, record: RunRecord | None) -> dict[str, Any]:
    """One run's curves (the report's figure over this run alone), its example predictions and confusion
    matrix (the report's best-run figures, for this run)."""
    alone = replace(data, runs=[run], best=run)
    f = report.Figures(alone, ([], []), [], [], record, report.image_grid(record) if record else None)
    curves = report.fig_curves(f)
    curves.update_layout(title=f"Training curves of run #{run.number} {run.id}", height=560)
    images = report.fig_best_images(f)
    if f.grid is not None:
        images.data[0].update(z=None, source=png_uri(f.grid[0]))
    images.update_layout(title="Validation images (red frame: error, true→predicted confidence)")
    confusion = report.fig_confusion(f)
    confusion.update_layout(title={"text": "Confusion matrix on the validation set"})
    return {"curves": plotly_json(curves), "images": plotly_json(images), "confusion": plotly_json(confusion)}
