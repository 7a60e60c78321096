"""`asl-sweep report`: one self-contained HTML page per sweep, like W&B's sweep workspace, offline.

The page embeds plotly.js inline (no CDN, no request of any kind), so it opens from a file, a mail
attachment or an air-gapped machine. Every figure also gets a PNG copy drawn with matplotlib:
plotly's own static export (kaleido) needs a Chrome binary that pip cannot install offline.
It reads the local ledger, so it works while a sweep is running (partial histories, no records).
"""

from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from asl_sweep.config import inactive_keys
from asl_sweep.ranking import metric_value
from asl_sweep.records import Run, RunRecord
from asl_sweep.results import SweepData, load_sweep, read_record, swept_params
from asl_sweep.state import ACTIVE, RunState

LOG_DISTRIBUTIONS = {"log_uniform", "log_uniform_values", "q_log_uniform", "q_log_uniform_values",
                     "inv_log_uniform", "inv_log_uniform_values"}
STATE_DASH = {RunState.FINISHED: "solid", RunState.RUNNING: "dashdot", RunState.STOPPED: "dash",
              RunState.FAILED: "dot", RunState.CRASHED: "dot", RunState.PENDING: "dashdot"}
MPL_DASH = {"solid": "-", "dashdot": "-.", "dash": "--", "dot": ":"}
BROKEN = tuple(s for s in RunState if s.is_broken)
GRID_IMAGES, GRID_COLS, TILE, BORDER = 32, 8, 72, 4
FEW_RUNS = 10  # importance from fewer runs than this is a rough guide, and says so
MODEBAR_PX = 40  # plotly's toolbar at the top right of each figure: a title in a narrow figure goes below it


@dataclass
class Axis:
    """One hyperparameter as numbers: categories and log-scaled values get readable tick labels."""

    name: str
    label: str
    values: list[float]
    ticks: list[float] | None = None
    ticktext: list[str] | None = None
    categories: list[str] | None = None
    inactive: list[bool] | None = None  # per run: the parameter had no effect there (config.inactive_keys)


def axis_range(a: Axis) -> tuple[float, float] | None:
    """The span an axis is drawn over: its values and ticks, or one unit around a value every run shares
    (plotly would stretch that to ±10%, 28.8-35.2 for a constant 32, as if the runs differed); None when
    no run has a value yet."""
    seen = [v for v in a.values + (a.ticks or []) if not math.isnan(v)]
    if not seen:
        return None
    lo, hi = min(seen), max(seen)
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)


def shared_value(a: Axis) -> float | None:
    """The one value of a numeric axis without ticks of its own (the same in every run so far), else None."""
    seen = {v for v in a.values if not math.isnan(v)}
    return seen.pop() if len(seen) == 1 and not a.ticks else None


def importance_caveat(data: SweepData) -> str:
    """`from N runs: a rough guide` when few runs have the metric (a forest fitted to them says little), else ''."""
    n = len(scored_runs(data))
    return f"from {n} runs: a rough guide" if n < FEW_RUNS else ""


# ---------------------------------------------------------------- analysis

def _log_ticks(lo: float, hi: float) -> list[float]:
    ticks = [m * 10.0**e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1) for m in (1, 2, 5)]
    inside = [t for t in ticks if lo <= t <= hi]
    return inside if len(inside) >= 2 else [lo, hi]


INACTIVE = "(inactive)"


def encode_param(name: str, spec: dict[str, Any], raw: list[Any], inactive: list[bool] | None = None) -> Axis:
    """Numbers stay numbers (log10 for log distributions); anything else becomes category indices. Runs
    where the parameter had no effect get their own place: the category "(inactive)", or a tick below
    a numeric axis's range; importance and correlation leave them out (`importance`)."""
    inactive = inactive or [False] * len(raw)
    active = [v for v, off in zip(raw, inactive) if not off]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in active)
    if numeric and active:
        log = spec.get("distribution") in LOG_DISTRIBUTIONS and all(v > 0 for v in active)
        values = [math.log10(v) if log else float(v) for v in active]
        ticks = [math.log10(t) for t in _log_ticks(min(active), max(active))] if log else None
        axis = Axis(name, f"{name} (log)" if log else name, values, ticks,
                    [f"{10 ** t:g}" for t in ticks] if log else None)
        if not any(inactive):
            return axis
        lo, hi = min(values), max(values)
        below = lo - 0.2 * ((hi - lo) or 1.0)
        ticks = axis.ticks or [lo, (lo + hi) / 2, hi]
        it = iter(values)
        return Axis(name, axis.label, [below if off else next(it) for off in inactive], [below, *ticks],
                    [INACTIVE, *(axis.ticktext or [f"{t:.3g}" for t in ticks])], inactive=inactive)

    def label(v: Any) -> str:
        return "(unset)" if v is None else str(v).lower() if isinstance(v, bool) else str(v)

    labels = [INACTIVE if off else label(v) for v, off in zip(raw, inactive)]
    categories = [label(v) for v in spec.get("values", [])]
    categories += sorted(set(labels) - set(categories) - {INACTIVE}) + ([INACTIVE] if any(inactive) else [])
    return Axis(name, name, [float(categories.index(x)) for x in labels], list(map(float, range(len(categories)))),
                categories, categories, inactive=inactive if any(inactive) else None)


def scored_runs(data: SweepData) -> list[tuple[Run, float]]:
    """Runs that have reported the metric, with their value, in run order."""
    scored = [(r, metric_value(r, data.metric_name, data.goal)) for r in data.runs]
    return [(r, v) for r, v in scored if v is not None]


def param_axes(data: SweepData, runs: list[Run]) -> list[Axis]:
    params = data.config.get("parameters") or {}
    off = [set(inactive_keys(r.config)) for r in runs]
    return [encode_param(p, params[p], [r.config.get(p) for r in runs], [p in o for o in off])
            for p in swept_params(data.config)]


def design_matrix(axes: list[Axis]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Feature columns as W&B builds them (numbers as is, two-level categories 0/1, others one-hot), and
    per column which runs it is active in; an "(inactive)" category gets no column of its own."""
    names, cols, masks = [], [], []
    for a in axes:
        v = np.asarray(a.values)
        active = ~np.asarray(a.inactive, dtype=bool) if a.inactive else np.ones(len(v), dtype=bool)
        levels = [c for c in a.categories or [] if c != INACTIVE]
        if a.categories is None or len(levels) <= 2 and INACTIVE not in a.categories:
            names.append(a.name if a.categories is None else f"{a.name}={a.categories[-1]}")
            cols.append(v)
            masks.append(active)
        else:
            for c in levels:
                names.append(f"{a.name}={c}")
                cols.append((v == a.categories.index(c)).astype(float))
                masks.append(active)
    n = len(axes[0].values) if axes else 0
    if not cols:
        return names, np.empty((n, 0)), np.empty((n, 0), dtype=bool)
    return names, np.column_stack(cols), np.column_stack(masks)


def masked_permutation_importance(forest, x: np.ndarray, y: np.ndarray, active: np.ndarray,
                                  repeats: int = 20, seed: int = 0) -> np.ndarray:
    """How much worse the forest predicts when a feature's values are shuffled among the runs where it is
    active only (sklearn's permutation_importance shuffles whole columns). A parameter that does nothing
    in some runs is then credited only for what it does where it acts, not for standing in for the
    parameter that switched it off (filters_4 for conv_blocks)."""
    rng = np.random.default_rng(seed)
    base = np.mean((forest.predict(x) - y) ** 2)
    out = np.zeros(x.shape[1])
    for j in range(x.shape[1]):
        rows = np.flatnonzero(active[:, j])
        for _ in range(repeats):
            shuffled = x.copy()
            shuffled[rows, j] = rng.permutation(x[rows, j])
            out[j] += np.mean((forest.predict(shuffled) - y) ** 2) - base
    out = np.clip(out / repeats, 0, None)
    return out / out.sum() if out.sum() > 0 else out


def importance(data: SweepData) -> list[dict[str, Any]]:
    """Random-forest permutation importance (shares summing to 1) and Pearson correlation of each feature
    with the metric, each over the runs where the feature is active, most important first."""
    from sklearn.ensemble import RandomForestRegressor

    scored = scored_runs(data)
    if len(scored) < 2:
        return []
    names, x, active = design_matrix(param_axes(data, [r for r, _ in scored]))
    keep = np.array([x[m, j].std() > 0 if m.sum() > 1 else False for j, m in enumerate(active.T)], dtype=bool)
    names, x, active = [n for n, k in zip(names, keep) if k], x[:, keep], active[:, keep]
    if not names:
        return []
    y = np.array([v for _, v in scored])
    forest = RandomForestRegressor(n_estimators=200, random_state=0).fit(x, y)
    shares = masked_permutation_importance(forest, x, y, active)
    rows = []
    for i, name in enumerate(names):
        m = active[:, i]
        corr = float(np.corrcoef(x[m, i], y[m])[0, 1]) if y[m].std() > 0 and m.sum() > 2 else None
        rows.append({"feature": name, "importance": float(shares[i]), "correlation": corr, "runs": int(m.sum())})
    return sorted(rows, key=lambda r: -r["importance"])


# the robustness suite's mean and worst case, and the mean over its background changes
ROBUST_KEYS = ("val_robust_accuracy", "val_robust_worst", "val_background_accuracy")


def robust_keys(data: SweepData) -> list[str]:
    """The suite's summary numbers that some run has (older runs have none), except the sweep's metric."""
    return [k for k in ROBUST_KEYS if k != data.metric_name
            and any(isinstance(r.summary.get(k), (int, float)) for r in data.runs)]


def parallel_axes(data: SweepData) -> tuple[list[Axis], list[Run]]:
    """Parameter axes, the robustness suite's mean and worst case (when runs have them), and the metric as
    the last axis; one entry per run that has the metric."""
    scored = scored_runs(data)
    runs = [r for r, _ in scored]
    robust = [Axis(k, k, [float(r.summary.get(k, math.nan)) for r in runs]) for k in robust_keys(data)]
    metric_axis = Axis(data.metric_name, f"{data.metric_name} ({data.goal})", [v for _, v in scored])
    return param_axes(data, runs) + robust + [metric_axis], runs


def leaderboard(data: SweepData) -> list[dict[str, Any]]:
    """One row per run, best first by the sweep's goal; runs without the metric last."""
    rows = []
    robust = robust_keys(data)
    for r in data.runs:
        rows.append({"run": f"#{r.number} {r.id}", "state": r.state,
                     data.metric_name: metric_value(r, data.metric_name, data.goal),
                     **{k: r.summary.get(k) for k in robust},
                     **{p: None if p in inactive_keys(r.config) else r.config.get(p)
                        for p in swept_params(data.config)},
                     "epochs": len(r.history), "wall time (s)": r.wall_time,
                     "reason": None if r.state in (RunState.FINISHED, RunState.RUNNING) else r.error})
    sign = -1 if data.goal == "maximize" else 1
    return sorted(rows, key=lambda row: (row[data.metric_name] is None, sign * (row[data.metric_name] or 0)))


def image_grid(record: dict[str, Any]) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """A montage of validation images (errors first), red-framed errors, green-framed hits, plus tile labels."""
    from PIL import Image

    preds = record.get("val_predictions") or []
    errors = [p for p in preds if p["true"] != p["pred"]]
    right = [p for p in preds if p["true"] == p["pred"]]
    n_err = min(len(errors), GRID_IMAGES // 2 if right else GRID_IMAGES)
    n_right = min(len(right), GRID_IMAGES - n_err)
    picks = errors[:n_err] + [right[i] for i in np.linspace(0, len(right) - 1, n_right).round().astype(int)] \
        if n_right else errors[:n_err]
    rows = max(1, math.ceil(len(picks) / GRID_COLS))
    canvas = np.full((rows * TILE, GRID_COLS * TILE, 3), 255, dtype=np.uint8)
    labels = []
    for i, p in enumerate(picks):
        y0, x0 = (i // GRID_COLS) * TILE, (i % GRID_COLS) * TILE
        wrong = p["true"] != p["pred"]
        canvas[y0:y0 + TILE, x0:x0 + TILE] = (220, 30, 30) if wrong else (40, 160, 60)
        inner = TILE - 2 * BORDER
        try:
            with Image.open(p["path"]) as img:
                tile = np.asarray(img.convert("RGB").resize((inner, inner)))
        except (OSError, ValueError):
            tile = np.full((inner, inner, 3), 200, dtype=np.uint8)
        canvas[y0 + BORDER:y0 + TILE - BORDER, x0 + BORDER:x0 + TILE - BORDER] = tile
        labels.append({"x": x0 + TILE / 2, "y": y0 + BORDER + 1, "wrong": wrong,
                       "text": f"{p['true']}→{p['pred']} {p['confidence']:.2f}" if wrong else f"{p['true']} ✓"})
    return canvas, labels


@dataclass
class Figures:
    """Every figure's data, computed once from a sweep; each figure is drawn from it twice, with plotly
    for the page and with matplotlib for its PNG (as Optuna's plots share one `_get_..._info`)."""

    sweep: SweepData
    parallel: tuple[list[Axis], list[Run]]
    importance: list[dict[str, Any]]
    leaderboard: list[dict[str, Any]]
    record: RunRecord | None
    grid: tuple[np.ndarray, list[dict[str, Any]]] | None


def figure_data(data: SweepData) -> Figures:
    record = read_record(data.best)
    return Figures(data, parallel_axes(data), importance(data), leaderboard(data), record,
                   image_grid(record) if record is not None else None)


# ---------------------------------------------------------------- plotly figures (the HTML page)

def _empty(title: str, why: str):
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_annotation(text=why, showarrow=False, font={"size": 16}, xref="paper", yref="paper", x=0.5, y=0.5)
    fig.update_layout(title=title, xaxis_visible=False, yaxis_visible=False, height=250)
    return fig


def _dimension(a: Axis) -> dict[str, Any]:
    """One parallel-coordinates axis over `axis_range`: a value every run shares is one label mid-axis."""
    dim: dict[str, Any] = {"label": a.label, "values": a.values}
    span = axis_range(a)
    if span is not None:
        dim["range"] = list(span)
    if a.ticks:
        dim.update(tickvals=a.ticks, ticktext=a.ticktext)
    elif (value := shared_value(a)) is not None:  # unlabelled end ticks: plotly draws the axis line between ticks
        dim.update(tickvals=[value - 0.5, value, value + 0.5], ticktext=["", _fmt(value), ""])
    return dim


def fig_parallel(f: Figures):
    import plotly.graph_objects as go

    data = f.sweep
    axes, runs = f.parallel
    title = f"Parallel coordinates: {len(runs)} runs with {data.metric_name}"
    if len(runs) < len(data.runs):
        title += f" ({len(data.runs) - len(runs)} without it not shown)"
    if not runs:
        return _empty(title, f"no run has reported {data.metric_name} yet")
    dims = [_dimension(a) for a in axes]
    line = dict(color=axes[-1].values, colorscale="Viridis", reversescale=data.goal == "minimize", showscale=True,
                colorbar={"title": {"text": data.metric_name}})
    fig = go.Figure(go.Parcoords(dimensions=dims, line=line, labelangle=-20))
    fig.update_layout(title=title, height=480, margin={"t": 110, "l": 60, "r": 110})
    return fig


def fig_importance(f: Figures):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    data = f.sweep
    rows = f.importance
    title = f"Parameter importance with respect to {data.metric_name}"
    if not rows:
        return _empty(title, "needs at least two runs with the metric and a parameter that varies")
    caveat = importance_caveat(data)
    if caveat:
        title += f" <span style='color:#b35900'>({caveat})</span>"
    names = [r["feature"] for r in rows][::-1]
    corr = [r["correlation"] or 0.0 for r in rows][::-1]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=("importance (random forest, permutation)", "correlation (Pearson)"))
    fig.add_trace(go.Bar(x=[r["importance"] for r in rows][::-1], y=names, orientation="h", marker_color="#4c78a8",
                         name="importance"), 1, 1)
    fig.add_trace(go.Bar(x=corr, y=names, orientation="h", name="correlation",
                         marker_color=["#2ca02c" if c >= 0 else "#d62728" for c in corr]), 1, 2)
    fig.update_xaxes(range=[-1, 1], row=1, col=2)
    fig.update_layout(title=title, showlegend=False, height=max(300, 120 + 28 * len(rows)))
    return fig


def _run_name(r: Run) -> str:
    return f"#{r.number} {r.id} ({r.state})"


def fig_curves(f: Figures):
    import plotly.express as px
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    data = f.sweep
    panels = (("loss", 1, 1), ("val_loss", 1, 2), ("accuracy", 2, 1), ("val_accuracy", 2, 2))
    fig = make_subplots(rows=2, cols=2, shared_xaxes=True, shared_yaxes=True, vertical_spacing=0.1,
                        subplot_titles=("train loss", "validation loss", "train accuracy", "validation accuracy"))
    colors = px.colors.qualitative.Dark24
    best_id = data.best.id if data.best else None
    for i, r in enumerate(data.runs):
        for key, row, col in panels:
            pts = [(h.get("epoch", n + 1), h[key]) for n, h in enumerate(r.history) if isinstance(h.get(key), (int, float))]
            if not pts:
                continue
            xs, ys = zip(*pts)
            broken = r.state in BROKEN
            fig.add_trace(go.Scatter(
                x=xs, y=ys, name=_run_name(r), legendgroup=r.id, showlegend=(key == "loss"),
                mode="lines+markers" if broken else "lines",
                line={"color": colors[i % len(colors)], "dash": STATE_DASH.get(r.state, "solid"),
                      "width": 3.5 if r.id == best_id else 1.6},
                marker={"symbol": "x", "size": [0] * (len(xs) - 1) + [12]} if broken else None,
                hovertemplate=f"{_run_name(r)}<br>epoch %{{x}}<br>{key} %{{y:.4f}}<extra></extra>"), row, col)
    fig.update_xaxes(title_text="epoch", row=2)
    if max((len(r.history) for r in data.runs), default=0) <= 10:  # plotly would tick 1.2, 1.4, ...; beyond, its steps are whole
        fig.update_xaxes(dtick=1)
    fig.update_layout(height=680, legend={"title": {"text": "run (state)"}}, title=(
        "Training curves, all runs — solid: finished, dash-dot: running, dashed: stopped early, "
        "dotted with ✕: failed/crashed; thick: best run"))
    return fig


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def fig_leaderboard(f: Figures):
    import plotly.graph_objects as go

    data = f.sweep
    rows = f.leaderboard
    if not rows:
        return _empty("Leaderboard", "no runs yet")
    cols = ["rank"] + list(rows[0])
    cells = [[str(i + 1) for i in range(len(rows))]] + [[_fmt(row[c]) for row in rows] for c in cols[1:]]
    best_run = f"#{data.best.number} {data.best.id}" if data.best else None
    fill = ["#d9f2d9" if row["run"] == best_run else "#fadbd8" if row["state"] in BROKEN else "white" for row in rows]
    # relative widths from each column's longest text, so no header is cut (`val_robust_worst`, not `val_robust_wo`)
    widths = [max(len(c), *(min(len(v), 60) for v in column)) for c, column in zip(cols, cells)]
    fig = go.Figure(go.Table(header={"values": [f"<b>{c}</b>" for c in cols], "fill_color": "#e8edf3", "align": "left"},
                             cells={"values": cells, "fill_color": [fill] * len(cols), "align": "left"},
                             columnwidth=widths))
    fig.update_layout(title=f"Leaderboard by {data.metric_name} ({data.goal})", height=min(900, 140 + 28 * len(rows)),
                      margin={"t": 60, "b": 10})
    return fig


def fig_best_images(f: Figures):
    import plotly.graph_objects as go

    record = f.record
    title = "Best run: validation images (red frame: error, true→predicted confidence)"
    if record is None:
        return _empty(title, "the best run has no record yet (still running, or its files are gone)")
    canvas, labels = f.grid
    fig = go.Figure(go.Image(z=canvas, hoverinfo="skip"))
    for lab in labels:
        fig.add_annotation(x=lab["x"], y=lab["y"], text=lab["text"], showarrow=False, yanchor="top",
                           font={"size": 10, "color": "white"}, bgcolor="#c0392b" if lab["wrong"] else "#2e8b57")
    fig.update_layout(title=f"{title} — run {record['run_id']}", height=120 + canvas.shape[0] * 1.1,
                      xaxis_visible=False, yaxis_visible=False, margin={"l": 10, "r": 10})
    return fig


def fig_confusion(f: Figures):
    import plotly.express as px

    record = f.record
    title = "Best run: confusion matrix on the validation set"
    if record is None or not record.get("confusion_matrix"):
        return _empty(title, "the best run has no record yet")
    cm = np.array(record["confusion_matrix"])
    digits = [str(d) for d in range(cm.shape[0])]
    fig = px.imshow(cm, text_auto=True, x=digits, y=digits, color_continuous_scale="Blues",
                    labels={"x": "predicted", "y": "true", "color": "images"})
    height = 560
    # in a figure this narrow the toolbar (top right) would cover a title at plotly's usual place: below it
    fig.update_layout(title={"text": f"{title} — run {record['run_id']}", "yref": "container", "yanchor": "top",
                             "y": 1 - MODEBAR_PX / height}, height=height, width=620, margin={"t": MODEBAR_PX + 60})
    return fig


# ---------------------------------------------------------------- matplotlib copies (the PNG files)

def png_parallel(f: Figures, ax) -> None:
    from matplotlib import colormaps

    data = f.sweep
    axes, runs = f.parallel
    ax.set_title(f"Parallel coordinates ({len(runs)} runs with {data.metric_name})")
    if not runs:
        ax.text(0.5, 0.5, f"no run has reported {data.metric_name} yet", ha="center")
        return
    ranges = [axis_range(a) or (0.0, 1.0) for a in axes]  # a running run has no robustness yet: NaN
    lows, spans = [lo for lo, _ in ranges], [hi - lo for lo, hi in ranges]
    metric_vals = np.array(axes[-1].values)
    span = float(np.ptp(metric_vals)) or 1.0
    shade = (metric_vals - metric_vals.min()) / span
    cmap = colormaps["viridis_r" if data.goal == "minimize" else "viridis"]
    for j in range(len(runs)):
        ax.plot(range(len(axes)), [(a.values[j] - lo) / s for a, lo, s in zip(axes, lows, spans)],
                color=cmap(shade[j]), alpha=0.8)
    for i, (a, lo, s) in enumerate(zip(axes, lows, spans)):
        ax.axvline(i, color="black", lw=0.8)
        value = shared_value(a)
        ticks = a.ticks or ([value] if value is not None else list(np.linspace(lo, lo + s, 3)))
        for t, txt in zip(ticks, a.ticktext or [_fmt(float(t)) for t in ticks]):
            ax.text(i + 0.02, (t - lo) / s, txt, fontsize=7, va="center")
    ax.set_xticks(range(len(axes)), [a.label for a in axes], rotation=20, ha="right")
    ax.set_yticks([])


def png_importance(f: Figures, fig) -> None:
    data = f.sweep
    rows = f.importance[::-1]
    left, right = fig.subplots(1, 2, sharey=True)
    caveat = importance_caveat(data) if rows else ""
    fig.suptitle(f"Parameter importance with respect to {data.metric_name}" + (f" ({caveat})" if caveat else ""),
                 color="#b35900" if caveat else "black")
    if not rows:
        left.text(0.5, 0.5, "needs two runs with the metric", ha="center")
        return
    names = [r["feature"] for r in rows]
    corr = [r["correlation"] or 0.0 for r in rows]
    left.barh(names, [r["importance"] for r in rows], color="#4c78a8")
    left.set_title("importance (random forest, permutation)")
    right.barh(names, corr, color=["#2ca02c" if c >= 0 else "#d62728" for c in corr])
    right.set_xlim(-1, 1)
    right.set_title("correlation (Pearson)")


def png_curves(f: Figures, fig) -> None:
    from matplotlib import colormaps
    from matplotlib.ticker import MaxNLocator

    data = f.sweep
    grid = fig.subplots(2, 2, sharex=True, sharey="row")
    fig.suptitle("Training curves — solid finished, -. running, -- stopped, : failed/crashed (x)")
    best_id = data.best.id if data.best else None
    cmap = colormaps["tab20"]
    for ax, key in zip(grid.flat, ("loss", "val_loss", "accuracy", "val_accuracy")):
        ax.set_title(key, fontsize=10)
        for i, r in enumerate(data.runs):
            pts = [(h.get("epoch", n + 1), h[key]) for n, h in enumerate(r.history) if isinstance(h.get(key), (int, float))]
            if not pts:
                continue
            xs, ys = zip(*pts)
            ax.plot(xs, ys, MPL_DASH[STATE_DASH.get(r.state, "solid")], color=cmap(i % 20),
                    lw=3 if r.id == best_id else 1.2, label=_run_name(r) if key == "loss" else None)
            if r.state in BROKEN:
                ax.plot(xs[-1], ys[-1], "x", color=cmap(i % 20), ms=10, mew=2)
    for ax in grid[1]:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if any(r.history for r in data.runs):
        fig.legend(loc="center right", fontsize=7)
        fig.subplots_adjust(right=0.78)


def png_leaderboard(f: Figures, ax) -> None:
    data = f.sweep
    rows = f.leaderboard
    ax.axis("off")
    ax.set_title(f"Leaderboard by {data.metric_name} ({data.goal})")
    if not rows:
        return
    cols = ["rank"] + list(rows[0])
    table = ax.table(cellText=[[str(i + 1)] + [_fmt(row[c])[:60] for c in cols[1:]] for i, row in enumerate(rows)],
                     colLabels=cols, loc="upper center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    table.auto_set_column_width(list(range(len(cols))))


def png_best_images(f: Figures, ax) -> None:
    record = f.record
    ax.axis("off")
    if record is None:
        ax.text(0.5, 0.5, "the best run has no record yet", ha="center")
        return
    canvas, labels = f.grid
    ax.imshow(canvas)
    ax.set_title(f"Best run {record['run_id']}: validation images (red: error, true→pred confidence)")
    for lab in labels:
        ax.text(lab["x"], lab["y"], lab["text"], ha="center", va="top", fontsize=6, color="white",
                bbox={"facecolor": "#c0392b" if lab["wrong"] else "#2e8b57", "pad": 1, "lw": 0})


def png_confusion(f: Figures, ax) -> None:
    from sklearn.metrics import ConfusionMatrixDisplay

    record = f.record
    if record is None or not record.get("confusion_matrix"):
        ax.axis("off")
        ax.text(0.5, 0.5, "the best run has no record yet", ha="center")
        return
    ConfusionMatrixDisplay(np.array(record["confusion_matrix"])).plot(ax=ax, cmap="Blues", colorbar=False)
    ax.set_title(f"Best run {record['run_id']}: confusion matrix (validation)")


def save_png(draw, path: Path, size: tuple[float, float], *, whole_figure: bool = False) -> None:
    """Draw with matplotlib's object API (no pyplot state, no display) and save."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=110, layout=None if whole_figure else "constrained")
    draw(fig) if whole_figure else draw(fig.add_subplot())
    fig.savefig(path)


# ---------------------------------------------------------------- the page

def html_page(data: SweepData, sections: list[tuple[str, str, Any]]) -> str:
    """One HTML document: a header, then each figure as a plotly div; plotly.js is inlined once, and only
    when there is a figure (a sweep without runs gets a page of a few KB that says what to do next)."""
    counts: dict[str, int] = {}
    for r in data.runs:
        counts[r.state] = counts.get(r.state, 0) + 1
    best = data.best
    best_txt = (f"best run <b>{html.escape(best.id)}</b> (#{best.number}): {data.metric_name} = "
                f"{_fmt(metric_value(best, data.metric_name, data.goal))}") if best else "no best run yet"
    broken = [r for r in data.runs if r.state in BROKEN]
    if not data.runs:
        runs_txt = f"no runs yet: start one with <code>asl-sweep agent {html.escape(data.sweep_id)}</code>"
    elif len(broken) == len(data.runs):
        first = broken[0]
        runs_txt = (f"<b>all {len(broken)} runs failed</b>; run #{first.number}: "
                    f"{html.escape(first.error or 'no reason recorded')} (the leaderboard has every run's "
                    f"reason; <code>asl-sweep status {html.escape(data.sweep_id)} --run {first.number}</code> "
                    f"its output)")
    else:
        runs_txt = "runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + f"; {best_txt}"
    live = sum(n for state, n in counts.items() if state in ACTIVE)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>asl-sweep report {html.escape(data.sweep_id)}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1250px;margin:auto;padding:1em;color:#222}"
        "h2{margin-top:2em;border-bottom:1px solid #ddd}.note{color:#555}.live{color:#b35900}</style></head><body>",
        f"<h1>Sweep {html.escape(data.name)} <small>({html.escape(data.sweep_id)})</small></h1>",
        f"<p>{html.escape(str(data.config.get('method')))} search, metric <b>{html.escape(data.metric_name)}</b> "
        f"({data.goal}), sweep state {html.escape(data.state)}; {runs_txt}.</p>",
        f"<p class='note'>Source: {html.escape(data.source)}. Generated {time.strftime('%Y-%m-%d %H:%M:%S')}. "
        "Self-contained: opens offline" + ("; PNG copies of each figure sit beside this file.</p>" if sections else ".</p>"),
    ]
    if not sections:
        sid = html.escape(data.sweep_id)
        parts.append(f"<h2>No figures yet</h2><p>They appear once a run has started: start an agent (above), then "
                     f"run <code>asl-sweep report {sid}</code> again; <code>asl-sweep status {sid}</code> shows the "
                     "runs meanwhile.</p>")
    if live:
        parts.append(f"<p class='live'>{live} run(s) still in progress: their curves are partial; "
                     "run <code>asl-sweep report</code> again to refresh.</p>")
    for i, (title, note, fig) in enumerate(sections):
        parts.append(f"<h2>{html.escape(title)}</h2><p class='note'>{html.escape(note)}</p>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0), config={"displaylogo": False}))
    parts.append("</body></html>")
    return "\n".join(parts)


@dataclass(frozen=True)
class Section:
    """One figure of the report: its heading and note, and how to draw it in each backend."""

    title: str
    note: str
    png: str
    plotly: Callable[[Figures], Any]
    matplotlib: Callable[..., None]  # (Figures, axes) or, with whole_figure, (Figures, figure)
    size: Callable[[Figures], tuple[float, float]]
    whole_figure: bool = False


def _grid_rows(f: Figures) -> int:
    return math.ceil(min(GRID_IMAGES, len((f.record or {}).get("val_predictions") or [1])) / GRID_COLS)


SECTIONS = (
    Section("Parallel coordinates", "One line per run over every swept hyperparameter; the last axis is the metric "
            "(each run's best epoch). Categorical values are numbered; drag on an axis to filter. A parameter that "
            "had no effect in a run (filters of a block it does not have, warm-up without cosine) is on its axis's "
            "'(inactive)' mark.",
            "parallel_coordinates.png", fig_parallel, png_parallel, lambda f: (12, 5)),
    Section("Parameter importance", "A random forest predicts the metric from the hyperparameters (categories "
            "one-hot), as in W&B's panel; importance is how much worse it predicts when a parameter's values are "
            "shuffled among the runs where the parameter acts, correlation the linear (Pearson) one over those runs: "
            "a parameter is not credited for runs where it did nothing.", "importance.png", fig_importance, png_importance, lambda f: (11, 5), True),
    Section("Training curves", "Per-epoch train and validation loss and accuracy of every run, on shared axes.",
            "curves.png", fig_curves, png_curves, lambda f: (13, 8), True),
    Section("Leaderboard", "Every run, best first; wall time is the run's own when finished, else elapsed so far.",
            "leaderboard.png", fig_leaderboard, png_leaderboard, lambda f: (13, 1.2 + 0.25 * max(1, len(f.sweep.runs)))),
    Section("Best run: validation images", "Errors first (red frame), then a spread of correct predictions.",
            "best_run_images.png", fig_best_images, png_best_images, lambda f: (10, 1.2 + 1.3 * _grid_rows(f))),
    Section("Best run: confusion matrix", "Rows: true digit, columns: predicted digit, on the validation split.",
            "confusion_matrix.png", fig_confusion, png_confusion, lambda f: (6, 5.5)),
)


def write_report(data: SweepData, out: Path) -> Path:
    """Write index.html and one PNG per figure into `out`; return the HTML path."""
    out.mkdir(parents=True, exist_ok=True)
    page = out / "index.html"
    if not data.runs:  # nothing to draw: no figures, no PNGs, no plotly.js (4.9 MB)
        page.write_text(html_page(data, []), encoding="utf-8")
        return page
    figures = figure_data(data)
    for section in SECTIONS:
        save_png(lambda target, section=section: section.matplotlib(figures, target), out / section.png, section.size(figures),
                 whole_figure=section.whole_figure)
    page.write_text(html_page(data, [(s.title, s.note, s.plotly(figures)) for s in SECTIONS]), encoding="utf-8")
    return page


def build_report(sweep_id: str, out: str | Path | None = None) -> tuple[SweepData, Path]:
    """`asl-sweep report`: the sweep's page and PNGs in `out` (default reports/<sweep_id>); where to write
    is checked before the sweep is read."""
    from asl_sweep.data import check_folder

    folder = Path(out or Path("reports") / sweep_id)
    check_folder(folder, "output folder")
    data = load_sweep(sweep_id)
    return data, write_report(data, folder)
