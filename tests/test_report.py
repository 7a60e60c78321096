"""`asl-sweep report`: the numbers behind each figure, and a page that needs no network."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess

import pytest
from PIL import Image

from asl_sweep import cli, report
from asl_sweep.errors import UserError
from asl_sweep.ledger import Ledger
from asl_sweep.records import Run
from asl_sweep.results import SweepData, load_sweep, read_record
from asl_sweep.state import RunState
from tests.conftest import skip_unless_ci
from tests.helpers_report import isolate, synthetic_sweep, tiny_trained_sweep

PNGS = ("parallel_coordinates.png", "importance.png", "curves.png", "leaderboard.png", "best_run_images.png",
        "confusion_matrix.png")


def test_importance_finds_the_one_param_that_drives_the_metric(monkeypatch, tmp_path):
    ledger = isolate(monkeypatch, tmp_path)
    sweep_id = synthetic_sweep(ledger, score=lambda c: 0.2 + c["dropout"])
    rows = report.importance(load_sweep(sweep_id))
    assert rows[0]["feature"] == "dropout"
    assert rows[0]["correlation"] == pytest.approx(1.0, abs=1e-9)
    assert rows[0]["importance"] > 2 * max(r["importance"] for r in rows[1:])
    assert {r["feature"] for r in rows} >= {"learning_rate", "batch_norm=false"}
    assert all(r["feature"].startswith("optimizer=") for r in rows if "optimizer" in r["feature"])


def test_importance_correlation_is_signed_for_a_minimized_metric(monkeypatch, tmp_path):
    ledger = isolate(monkeypatch, tmp_path)
    sweep_id = synthetic_sweep(ledger, metric_name="val_loss", goal="minimize", score=lambda c: 3.0 - 4 * c["dropout"])
    rows = report.importance(load_sweep(sweep_id))
    assert rows[0]["feature"] == "dropout"
    assert rows[0]["correlation"] == pytest.approx(-1.0, abs=1e-9)


def test_parallel_coordinates_encode_every_param_and_end_with_the_metric(monkeypatch, tmp_path):
    ledger = isolate(monkeypatch, tmp_path)
    sweep_id = synthetic_sweep(ledger, extra_running=True)
    data = load_sweep(sweep_id)
    axes, runs = report.parallel_axes(data)
    assert [a.name for a in axes] == ["dropout", "optimizer", "learning_rate", "batch_norm", "val_accuracy"]
    assert len(runs) == 13  # 12 finished/stopped + the partial one; the run with no epoch has no metric
    by_name = {a.name: a for a in axes}
    opt = by_name["optimizer"]
    assert opt.ticktext == ["adam", "sgd", "rmsprop"] and opt.ticks == [0.0, 1.0, 2.0]
    assert [opt.ticktext[int(v)] for v in opt.values] == [r.config["optimizer"] for r in runs]
    assert by_name["batch_norm"].ticktext == ["true", "false"]
    lr = by_name["learning_rate"]
    assert lr.label == "learning_rate (log)"
    assert lr.values == pytest.approx([math.log10(r.config["learning_rate"]) for r in runs])
    assert by_name["dropout"].values == pytest.approx([r.config["dropout"] for r in runs])
    expected = [0.2 + r.config["dropout"] if r.state != "running" else 0.2 for r in runs]
    assert by_name["val_accuracy"].values == pytest.approx(expected)
    fig = report.fig_parallel(report.figure_data(data))
    assert len(fig.data[0].dimensions) == 5 and "1 without it not shown" in fig.layout.title.text


def test_leaderboard_orders_by_goal_and_puts_runs_without_metric_last(monkeypatch, tmp_path):
    ledger = isolate(monkeypatch, tmp_path)
    sweep_id = synthetic_sweep(ledger, metric_name="val_loss", goal="minimize", score=lambda c: c["dropout"],
                               runs=5, extra_running=True)
    rows = report.leaderboard(load_sweep(sweep_id))
    values = [r["val_loss"] for r in rows]
    assert values[-1] is None and values[:-1] == sorted(values[:-1])
    assert rows[-1]["epochs"] == 0 and rows[-1]["state"] == "running"
    assert set(rows[0]) >= {"run", "state", "dropout", "optimizer", "learning_rate", "batch_norm", "epochs",
                            "wall time (s)"}


def test_report_of_a_running_sweep_is_one_offline_page_plus_pngs(monkeypatch, tmp_path, capsys):
    ledger = isolate(monkeypatch, tmp_path)
    sweep_id = synthetic_sweep(ledger, runs=4, extra_running=True)
    db = Ledger(ledger)
    crashed = db.runs(sweep_id)[-1].id
    db.finish_run(crashed, "crashed", error="no heartbeat")
    db.close()

    assert cli.main(["report", sweep_id]) == 0
    out = tmp_path / "reports" / sweep_id
    page = (out / "index.html").read_text()
    assert re.search(r"<script[^>]+src=", page) is None  # plotly.js inline, nothing fetched
    assert "<link" not in page and "cdn.plot.ly/plotly" not in page
    assert page.count("Plotly.newPlot") == 6
    assert "still in progress" in page and "1 crashed" in page
    for name in PNGS:
        with Image.open(out / name) as img:
            assert img.format == "PNG" and img.width > 300
    assert "self-contained" in capsys.readouterr().out


def test_curves_mark_stopped_and_crashed_runs(monkeypatch, tmp_path):
    ledger = isolate(monkeypatch, tmp_path)
    sweep_id = synthetic_sweep(ledger, runs=3, extra_running=True)
    db = Ledger(ledger)
    partial = db.runs(sweep_id)[3].id
    db.finish_run(partial, "crashed")
    db.close()
    fig = report.fig_curves(report.figure_data(load_sweep(sweep_id)))
    by_state = {t.name.split("(")[-1].rstrip(")"): t for t in fig.data if t.showlegend}
    assert by_state["finished"].line.dash == "solid"
    assert by_state["stopped"].line.dash == "dash"
    assert by_state["crashed"].line.dash == "dot" and by_state["crashed"].marker.symbol == "x"


def test_unknown_sweep_offline_is_one_clear_error(monkeypatch, tmp_path):
    isolate(monkeypatch, tmp_path)
    with pytest.raises(UserError, match="unknown sweep id 'nope'"):
        report.build_report("nope")


@pytest.mark.slow
def test_best_run_images_and_confusion_from_a_trained_sweep(monkeypatch, tmp_path):
    tiny = tiny_trained_sweep()
    isolate(monkeypatch, tmp_path)
    monkeypatch.setenv("ASL_SWEEP_LEDGER", str(tiny["ledger"]))
    data = load_sweep(tiny["sweep_id"])
    record = read_record(data.best)
    canvas, labels = report.image_grid(record)
    assert len(labels) == len(record["val_predictions"]) == 16
    errors = sum(p["true"] != p["pred"] for p in record["val_predictions"])
    assert sum(lab["wrong"] for lab in labels) == errors
    assert all(lab["wrong"] for lab in labels[:errors])  # errors come first
    fig = report.fig_confusion(report.figure_data(data))
    assert fig.data[0].z.sum() == 16
    page = report.write_report(data, tmp_path / "out").read_text()
    assert f"run {record['run_id']}" in page and "has no record yet" not in page


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
def test_page_renders_in_headless_chromium_with_network_off(monkeypatch, tmp_path):
    if _chromium() is None:
        skip_unless_ci("no chromium/chrome on PATH (apt-get install chromium)")
    ledger = isolate(monkeypatch, tmp_path)
    sweep_id = synthetic_sweep(ledger, runs=6)
    report.build_report(sweep_id, "rep")
    shot = tmp_path / "shot.png"
    # an unreachable proxy makes any network request fail, so a page that needs one renders blank
    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--enable-unsafe-swiftshader",
                    "--proxy-server=http://127.0.0.1:9", "--virtual-time-budget=8000", "--window-size=1300,2400",
                    f"--screenshot={shot}", (tmp_path / "rep" / "index.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    with Image.open(shot) as img:
        colours = img.convert("RGB").resize((130, 240)).getcolors(maxcolors=100_000)
    assert colours is not None and len(colours) > 50  # drawn charts, not a blank page


def test_leaderboard_and_parallel_coordinates_show_the_robustness_suite(monkeypatch, tmp_path):
    ledger = isolate(monkeypatch, tmp_path)
    sweep_id = synthetic_sweep(ledger, runs=4)
    db = Ledger(ledger)
    for r in db.runs(sweep_id)[:3]:  # the fourth run predates the suite: no numbers, shown as missing
        db.execute("UPDATE runs SET summary = ? WHERE id = ?",
                      (json.dumps({"val_robust_accuracy": r.config["dropout"], "val_robust_worst": 0.5}), r.id))
    db.close()
    data = load_sweep(sweep_id)
    axes, runs = report.parallel_axes(data)
    assert [a.name for a in axes[-3:]] == ["val_robust_accuracy", "val_robust_worst", "val_accuracy"]
    robust = dict(zip([r.id for r in runs], axes[-3].values))
    assert sum(math.isnan(v) for v in robust.values()) == 1
    rows = report.leaderboard(data)
    assert {"val_robust_accuracy", "val_robust_worst"} <= set(rows[0])
    report.write_report(data, tmp_path / "out")  # both backends draw the missing values


def conditional_sweep(runs_per_setting: int = 6) -> SweepData:
    """conv_blocks decides the metric; filters_4 does nothing, and exists only with 4 blocks. Its value in
    2-block runs (where the sampler still drew one) happens to track conv_blocks, as a bayes search's
    draws can: naive importance credits filters_4 with conv_blocks' effect."""
    params = {"conv_blocks": {"values": [2, 4]}, "filters_4": {"values": [64, 128]},
              "lr_schedule": {"values": ["constant", "cosine"]}, "warmup_epochs": {"values": [0, 3]}}
    config = {"method": "bayes", "metric": {"name": "val_accuracy", "goal": "maximize"}, "parameters": params}
    runs = []
    for i in range(4 * runs_per_setting):
        blocks = 2 if i % 2 else 4
        cfg = {"conv_blocks": blocks, "filters_4": 64 if blocks == 2 else (64, 128)[i // 2 % 2],
               "lr_schedule": ("constant", "cosine")[i // 4 % 2], "warmup_epochs": (0, 3)[i // 8 % 2]}
        value = 0.9 if blocks == 4 else 0.6
        runs.append(Run(id=f"r{i}", number=i + 1, state=RunState.FINISHED, config=cfg,
                        history=[{"epoch": 1, "val_accuracy": value + 0.001 * (i % 3)}]))
    return SweepData("s", "conditional", "finished", config, runs, None, "test")


def test_a_parameter_is_not_credited_for_runs_where_it_did_nothing():
    data = conditional_sweep()
    rows = {r["feature"]: r for r in report.importance(data)}
    assert max(rows, key=lambda f: rows[f]["importance"]) == "conv_blocks"
    assert rows["conv_blocks"]["importance"] > 0.9 and rows["conv_blocks"]["correlation"] > 0.99
    four = rows["filters_4"]  # judged on the 4-block runs only, where it changes nothing
    assert four["runs"] == 12 and four["importance"] < 0.05 and abs(four["correlation"]) < 0.3
    assert rows["warmup_epochs"]["runs"] == 12  # the cosine runs only


def test_inactive_values_have_their_own_mark_on_axes_and_none_in_the_leaderboard():
    data = conditional_sweep(1)
    axes = {a.name: a for a in report.param_axes(data, data.runs)}
    f4 = axes["filters_4"]  # numbers: the inactive runs sit on a mark below the axis's range
    assert f4.inactive == [r.config["conv_blocks"] == 2 for r in data.runs] and f4.ticktext[0] == report.INACTIVE
    assert all(v == f4.ticks[0] < 64 for v, off in zip(f4.values, f4.inactive) if off)
    log = report.encode_param("lr", {"distribution": "log_uniform_values"}, [1e-3, 1e-2, 5e-3], [False, True, False])
    assert log.ticktext[0] == report.INACTIVE and log.values[1] == log.ticks[0] < min(log.values[::2])
    named = report.encode_param("opt", {"values": ["adam", "sgd"]}, ["adam", "sgd", "adam"], [False, False, True])
    assert named.categories == ["adam", "sgd", report.INACTIVE] and named.values == [0.0, 1.0, 2.0]
    board = {row["run"]: row for row in report.leaderboard(data)}
    two_blocks = next(r for r in data.runs if r.config["conv_blocks"] == 2)
    assert board[f"#{two_blocks.number} {two_blocks.id}"]["filters_4"] is None


def plain_sweep(runs: int, epochs: int, record: dict | None = None) -> SweepData:
    """`runs` finished runs of `epochs` epochs each, dropout driving the metric; the best one has `record`."""
    config = {"method": "random", "metric": {"name": "val_accuracy", "goal": "maximize"},
              "parameters": {"dropout": {"min": 0.1, "max": 0.5}, "filters_1": {"values": [32, 64]}}}
    rows = [Run(id=f"r{i}", number=i + 1, state=RunState.FINISHED, config={"dropout": 0.1 + i / 100, "filters_1": 32},
                history=[{"epoch": e, "loss": 1 / e, "val_accuracy": 0.5 + i / 100} for e in range(1, epochs + 1)])
            for i in range(runs)]
    rows[-1].record = record
    return SweepData("s", "plain", "finished", config, rows, rows[-1], "test")


def test_the_confusion_matrix_title_sits_below_the_toolbar():
    cm = [[1 if i == j else 0 for j in range(10)] for i in range(10)]
    fig = report.fig_confusion(report.figure_data(plain_sweep(2, 1, {"run_id": "r1", "confusion_matrix": cm})))
    title, height = fig.layout.title, fig.layout.height
    assert title.yref == "container" and title.yanchor == "top" and "run r1" in title.text
    assert (1 - title.y) * height == pytest.approx(report.MODEBAR_PX)  # the toolbar's strip at the top is left to the toolbar
    assert fig.layout.margin.t >= report.MODEBAR_PX + 40  # and the title's line is above the matrix


@pytest.mark.parametrize("epochs, dtick", [(1, 1), (3, 1), (10, 1), (40, None)])
def test_epoch_axes_tick_whole_epochs(epochs, dtick):
    fig = report.fig_curves(report.figure_data(plain_sweep(2, epochs)))
    assert {fig.layout[f"xaxis{n}"].dtick for n in ("", 2, 3, 4)} == {dtick}  # None: plotly's steps, whole beyond 10


@pytest.mark.parametrize("runs, caveat", [(3, "from 3 runs: a rough guide"), (9, "from 9 runs: a rough guide"),
                                          (10, ""), (12, "")])
def test_importance_from_few_runs_says_it_is_a_rough_guide(runs, caveat):
    data = plain_sweep(runs, 1)
    assert report.importance_caveat(data) == caveat
    title = report.fig_importance(report.figure_data(data)).layout.title.text
    assert (caveat in title) if caveat else "rough guide" not in title


@pytest.mark.parametrize("axis, span, ticks", [
    (report.Axis("filters_1", "filters_1", [32.0, 32.0, 32.0]), [31.5, 32.5], ["", "32", ""]),  # not 28.8-35.2
    (report.Axis("val_robust_worst", "val_robust_worst", [math.nan, 0.5]), [0.0, 1.0], ["", "0.5", ""]),
    (report.Axis("dropout", "dropout", [0.1, 0.3, 0.2]), [0.1, 0.3], None),
    (report.Axis("opt", "opt", [0.0, 0.0], [0.0], ["adam"], ["adam"]), [-0.5, 0.5], ["adam"]),
    (report.Axis("val_robust_worst", "val_robust_worst", [math.nan]), None, None),
])
def test_a_parameter_every_run_shares_is_drawn_as_one_value(axis, span, ticks):
    dim = report._dimension(axis)
    assert dim.get("range") == (pytest.approx(span) if span else None)
    assert dim.get("ticktext") == ticks


def test_a_sweep_without_runs_is_a_small_page_that_says_what_to_do(monkeypatch, tmp_path, capsys):
    ledger = isolate(monkeypatch, tmp_path)
    db = Ledger(ledger)
    sweep_id = db.create_sweep({"method": "random", "metric": {"name": "val_accuracy", "goal": "maximize"},
                                "parameters": {"dropout": {"min": 0.1, "max": 0.5}}}, "empty")
    db.close()
    assert cli.main(["report", sweep_id]) == 0
    out = tmp_path / "reports" / sweep_id
    page = (out / "index.html").read_text()
    assert len(page.encode()) < 5_000 and "plotly" not in page.lower()  # was 4.9 MB of plotly.js for no figure
    assert f"asl-sweep agent {sweep_id}" in page and f"asl-sweep report {sweep_id}</code> again" in page
    assert [p.name for p in out.iterdir()] == ["index.html"]
    assert "report of 0 runs" in capsys.readouterr().out
