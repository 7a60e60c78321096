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
COSTS = {"build_s": 0.3, "save_s": 0.05, "restore_s": 0.1, "stopped_end_share": 0.1, "estimate_share": 0.2}


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
    runs = replay.replay(replay.make_method(name, table, 0, COSTS), budget)
    assert len(runs) >= 4
    assert all(0 < r.end <= budget and r.curve in table.curves[table.nearest(r.values)] for r in runs)
    assert all(r.first_epoch <= r.done <= r.last_epoch <= EPOCHS for r in runs)
    # two workers: the runs' own time (set-up, epochs, end) adds up to at most twice the budget
    spent = sum(r.end - r.start for r in runs)
    assert spent <= 2 * budget
    if name in ("bayes", "random"):
        assert any(r.stopped for r in runs), "hyperband stops some runs at its bands"
        # a run reaching a band may stop others past it: they stop at their next epoch boundary
        assert min(r.done for r in runs if r.stopped) >= min(replay.make_method(name, table, 0, COSTS).bands)
    if name == "kt":
        assert any(r.extra["resumed"] and r.first_epoch > 0 for r in runs), "Keras Tuner resumes trials"


def test_a_run_costs_what_the_table_measured(table):
    method = replay.make_method("random", table, 1, COSTS)
    method.bands = set()  # no stopping: every run is a full training
    runs = replay.replay(method, 200.0, workers=1)
    first = runs[0]
    assert first.end - first.start == pytest.approx(4.0 + 1.5 * EPOCHS + 3.0, abs=1.0)  # plus the engine's own time


def test_a_stopped_run_skips_the_suite_unless_the_spec_says_all(table):
    lean = replay.make_method("random", table, 1, COSTS)
    full = replay.make_method("random:suite=all", table, 1, COSTS)
    run = replay.Run("0", table.values[0], table.curves[0][0], 0.0, stopped=True)
    assert lean.end_cost(run) == pytest.approx(0.3) and full.end_cost(run) == pytest.approx(3.0)
    run.stopped = False
    assert lean.end_cost(run) == full.end_cost(run) == 3.0
    assert lean.epoch_cost(run) == 1.5 and replay.make_method("bayes:estimate=off", table, 1, COSTS).epoch_cost(run) == pytest.approx(1.2)


def test_a_spec_sets_hyperband_and_refuses_what_it_does_not_know(table):
    def bands(spec):
        return {b for b in replay.make_method(spec, table, 0, COSTS).bands if b < EPOCHS}

    assert bands("bayes:min_iter=3,eta=2") == {3, 6, 12} and bands("bayes") == {2, 6, 18}  # the YAML's: 2, 3
    with pytest.raises(ValueError, match="unknown options eta"):
        replay.make_method("optuna:eta=2", table, 0, COSTS)
    with pytest.raises(ValueError, match="unknown method"):
        replay.make_method("grid", table, 0, COSTS)


def test_a_spec_can_hand_stopped_runs_to_the_gp_as_killed(table):
    stopped = replay.Run("0", table.values[0], table.curves[0][0], 0.0, done=2, end=10.0, stopped=True)
    running = replay.Run("1", table.values[1], table.curves[1][0], 0.0, done=1)

    def states(spec):
        method = replay.make_method(spec, table, 0, COSTS)
        return [str(r.state) for r in method.engine_runs([stopped, running])], method.config["metric"].get("impute", "worst")

    assert states("bayes") == (["finished", "running"], "worst")
    assert states("bayes:stopped=killed,impute=latest") == (["killed", "running"], "latest")

def test_stored_events_keep_what_the_summary_reads(table):
    runs = replay.replay(replay.make_method("random", table, 2, COSTS), 300.0)
    full = sorted([round(r.end, 2), round(r.best()[1], 5), round(r.best()[0], 5)] for r in runs)
    kept = replay.events(runs)
    assert len(kept) < len(full)
    for t in (30.0, 100.0, 200.0, 300.0):
        assert replay.best_by(kept, t) == replay.best_by(full, t)
        for threshold in (0.5, 0.9, 0.95):
            assert replay.first_reaching(kept, threshold, t) == replay.first_reaching(full, threshold, t)


def test_replays_are_stored_resumed_and_summarized(table, tmp_path, monkeypatch, capsys):
    path = tmp_path / "table.jsonl"
    path.write_text("".join(replay.json.dumps(r) + "\n" for r in tiny_rows()))
    monkeypatch.setattr(replay, "COSTS_FILE", tmp_path / "costs.json")
    replay.COSTS_FILE.write_text(replay.json.dumps(COSTS))
    results = tmp_path / "results.jsonl"
    args = ["replay.py", "--table", str(path), "--results", str(results), "--minutes", "3", "--methods", "random", "kt"]
    monkeypatch.setattr(sys, "argv", [*args, "--run", "--replays", "2"])
    assert replay.main() == 0
    monkeypatch.setattr(sys, "argv", [*args, "--run", "--replays", "3"])
    assert replay.main() == 0  # resumes: only seed 2 is new
    rows = replay.read_table(results)
    assert sorted((r["method"], r["seed"]) for r in rows) == [(m, s) for m in ("kt", "random") for s in range(3)]
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", [*args, "--ours", "random", "--check", "1", "--plot", str(tmp_path / "r.png")])
    assert replay.main() == 0
    out = capsys.readouterr().out
    assert "| 3.0 min | kt | 3 |" in out and "check seed 0" in out
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_summary_reports_every_method_and_budget(table):
    results = {m: [replay.events(replay.replay(replay.make_method(m, table, s, COSTS), 180.0))
                   for s in range(3)] for m in ("random", "bayes")}
    rows = replay.summary(results, budgets_min=(1, 3))  # ours: bayes
    assert [(r["budget_min"], r["method"]) for r in rows] == [(1, "random"), (1, "bayes"), (3, "random"), (3, "bayes")]
    random_row = rows[2]
    assert 0.0 <= random_row["p_ours_beats_metric"] <= 1.0
    assert 0.0 <= random_row["p_ours_beats"] <= 1.0 and random_row["ci"][0] <= random_row["median"] <= random_row["ci"][1]
    text = replay.format_rows(rows)
    assert text.count("\n") == 5 and "| 3 min | random | 3 |" in text


def test_p_beats_counts_ties_half():
    assert replay.p_beats([1.0, 1.0], [0.5, 1.0]) == 0.75
    assert replay.bootstrap_median([0.5] * 5, random.Random(0)) == (0.5, 0.5)
