"""The replay benchmark (bench/replay.py) on a tiny synthetic table: each method's real engine, the
simulated clock, and the table the report prints."""

import math
import random
import sys
from pathlib import Path

import pytest
import yaml

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import replay  # noqa: E402
import replay_table  # noqa: E402

WIDE = yaml.safe_load((BENCH.parent / "sweeps" / "wide.yaml").read_text())
EPOCHS = WIDE["parameters"]["epochs"]["value"]
KT_COSTS = {"build_s": 0.3, "save_s": 0.05, "restore_s": 0.1}


def tiny_rows(configs: int = 12) -> list[dict]:
    """Rows as replay_table writes them: configurations from W&B's sampler, learning curves whose plateau
    depends on batch norm and the learning rate, and a second seed for a few."""
    rows = []
    for number, values in enumerate(replay_table.sample_configs(WIDE, configs)):
        for seed in (0, 1) if number < 3 else (0,):
            top = 0.6 + 0.3 * values["batch_norm"] + 0.05 * (values["learning_rate"] < 0.003) + 0.01 * seed
            curve = [round(top * (1 - math.exp(-(e + 1) / 4)), 5) for e in range(EPOCHS)]
            rows.append({"config": number, "seed": seed, "values": values, "state": "finished",
                         "setup_s": 4.0, "epoch_s": [1.5] * EPOCHS, "fit_s": [1.2] * EPOCHS, "end_s": 3.0,
                         "history": {"val_soft_accuracy": curve, "val_accuracy": [min(1.0, v + 0.05) for v in curve]}})
    return rows


@pytest.fixture(scope="module")
def table():
    return replay.Table(tiny_rows(), WIDE)


def test_lookup_finds_the_configuration_itself(table):
    for config, values in zip(table.ids, table.values):
        assert table.nearest(values) == config
    assert len(table.curves[0]) == 2 and len(table.curves[5]) == 1


def test_jobs_interleave_repeats_with_seed_one():
    jobs = replay_table.jobs(12, 3, 4)
    assert jobs[:5] == [(0, 0), (1, 0), (2, 0), (3, 0), (0, 1)]
    assert sorted(j for j in jobs if j[1] == 1) == [(0, 1), (4, 1), (8, 1)] and len(jobs) == 15


@pytest.mark.parametrize("name", replay.METHODS)
def test_each_method_replays_within_its_budget(table, name):
    budget = 240.0
    runs = replay.replay(replay.make_method(name, table, 0, KT_COSTS), budget)
    assert len(runs) >= 4
    assert all(0 < r.end <= budget and r.curve in table.curves[table.nearest(r.values)] for r in runs)
    assert all(r.first_epoch <= r.done <= r.last_epoch <= EPOCHS for r in runs)
    # two workers: the runs' own time (set-up, epochs, end) adds up to at most twice the budget
    spent = sum(r.end - r.start for r in runs)
    assert spent <= 2 * budget
    if name in ("bayes", "random"):
        assert any(r.stopped for r in runs), "hyperband stops some runs at its bands"
        # a run reaching a band may stop others past it: they stop at their next epoch boundary
        assert min(r.done for r in runs if r.stopped) >= min(replay.WandbEngine(table, 0, name).bands)
    if name == "kt":
        assert any(r.extra["resumed"] and r.first_epoch > 0 for r in runs), "Keras Tuner resumes trials"


def test_a_run_costs_what_the_table_measured(table):
    method = replay.make_method("random", table, 1, KT_COSTS)
    method.bands = set()  # no stopping: every run is a full training
    runs = replay.replay(method, 200.0, workers=1)
    first = runs[0]
    assert first.end - first.start == pytest.approx(4.0 + 1.5 * EPOCHS + 3.0, abs=1.0)  # plus the engine's own time


def test_summary_reports_every_method_and_budget(table):
    results = {m: [replay.events(replay.replay(replay.make_method(m, table, s, KT_COSTS), 180.0))
                   for s in range(3)] for m in ("random", "bayes")}
    rows = replay.summary(results, budgets_min=(1, 3))
    assert [(r["budget_min"], r["method"]) for r in rows] == [(1, "random"), (1, "bayes"), (3, "random"), (3, "bayes")]
    random_row = rows[2]
    assert 0.0 <= random_row["p_bayes_beats"] <= 1.0 and random_row["ci"][0] <= random_row["median"] <= random_row["ci"][1]
    text = replay.format_rows(rows)
    assert text.count("\n") == 5 and "| 3 min | random | 3 |" in text


def test_p_beats_counts_ties_half():
    assert replay.p_beats([1.0, 1.0], [0.5, 1.0]) == 0.75
    assert replay.bootstrap_median([0.5] * 5, random.Random(0)) == (0.5, 0.5)
