"""The replay table's surrogate (bench/surrogate.py) on the tiny synthetic table of test_replay: it learns
the table's structure, answers for configurations the table does not hold, adds the measured seed noise,
and every method replays on it."""

import random
import sys

import numpy as np
import pytest

from tests.test_replay import BENCH, COSTS, EPOCHS, WIDE, tiny_rows

sys.path.insert(0, str(BENCH))
import replay  # noqa: E402
import surrogate  # noqa: E402


@pytest.fixture(scope="module")
def table():
    return replay.SurrogateTable(tiny_rows(24), WIDE)


def test_the_forest_learns_what_decides_the_plateau(table):
    """In the tiny table batch norm lifts the plateau by 0.3: the prediction for a configuration with it
    is higher than for the same configuration without, though neither is in the table as such."""
    values = dict(table.values[0], dropout=0.123456)
    rng = random.Random(0)
    on = np.mean([table.lookup(dict(values, batch_norm=True), rng).metric[-1] for _ in range(20)])
    off = np.mean([table.lookup(dict(values, batch_norm=False), rng).metric[-1] for _ in range(20)])
    assert on - off > 0.15


def test_a_predicted_training_is_a_whole_training(table):
    curve = table.lookup(table.values[3], random.Random(1))
    assert len(curve.metric) == len(curve.accuracy) == len(curve.epoch_s) == len(curve.fit_s) == EPOCHS
    assert all(0.0 < v < 1.0 for v in curve.metric + curve.accuracy)
    assert curve.epoch_s[1] == pytest.approx(1.5, rel=0.01) and curve.fit_s[1] == pytest.approx(1.2, rel=0.01)
    assert curve.setup_s == pytest.approx(4.0, rel=0.01) and curve.end_s == pytest.approx(3.0, rel=0.01)


def test_seed_noise_is_measured_on_the_repeats_and_drawn(table):
    """The tiny table's second seeds sit 0.01 higher: the noise is not zero, and two draws for one
    configuration differ while their mean stays at the forest's."""
    assert (table.forest.offset_sd > 0).all() and (table.forest.jitter_sd >= 0).all()
    rng = random.Random(2)
    finals = [table.lookup(table.values[0], rng).metric[-1] for _ in range(200)]
    assert len(set(finals)) > 100
    mean = surrogate.accuracy(table.forest.mean_targets(table.encode([table.values[0]])[0])[EPOCHS - 1])
    assert np.median(finals) == pytest.approx(mean, abs=0.01)


def test_robust_sd_ignores_a_diverging_pair():
    assert surrogate.robust_sd([0.1, -0.1, 0.1, -0.1, 5.0], 0.0) == pytest.approx(1.4826 * 0.1)
    assert surrogate.robust_sd([1.0, 1.1, 0.9, 1.0, 9.0]) == pytest.approx(1.4826 * 0.1)


@pytest.mark.parametrize("name", replay.METHODS)
def test_each_method_replays_on_the_surrogate(table, name):
    runs = replay.replay(replay.make_method(name, table, 0, COSTS), 240.0)
    assert len(runs) >= 4 and all(0 < r.end <= 240.0 for r in runs)
    ours = {round(v, 6) for r in runs for v in r.curve.metric}
    recorded = {round(v, 6) for c in table.curves.values() for t in c for v in t.metric}
    assert not ours <= recorded, "the surrogate's curves are predicted, not the table's own"


def test_validation_reports_fidelity_beside_the_seeds(table):
    fit = surrogate.validate(table.points, [table.curves[i] for i in table.ids])
    assert fit["configurations"] == 24 and fit["spearman"] > 0.5
    assert 0.0 <= fit["median_abs_error"] < 0.2 and fit["seeds_median_abs_error"] >= 0.0


def test_main_stores_surrogate_replays_apart(tmp_path, monkeypatch, capsys):
    path = tmp_path / "table.jsonl"
    path.write_text("".join(replay.json.dumps(r) + "\n" for r in tiny_rows(24)))
    monkeypatch.setattr(replay, "COSTS_FILE", tmp_path / "costs.json")
    replay.COSTS_FILE.write_text(replay.json.dumps(COSTS))
    monkeypatch.setattr(replay, "SURROGATE_RESULTS_FILE", tmp_path / "results-surrogate.jsonl")
    args = ["replay.py", "--table", str(path), "--minutes", "3", "--methods", "random", "--surrogate"]
    monkeypatch.setattr(sys, "argv", [*args, "--run", "--replays", "2"])
    assert replay.main() == 0
    assert len(replay.read_table(tmp_path / "results-surrogate.jsonl")) == 2
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", [*args, "--ours", "random", "--check", "0"])
    assert replay.main() == 0
    out = capsys.readouterr().out
    assert "surrogate, 5-fold over 24 configurations: Spearman" in out and "| 3.0 min | random | 2 |" in out
