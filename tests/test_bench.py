import importlib.util
from pathlib import Path

import pytest

from asl_sweep.config import Config
from asl_sweep.records import Run
from asl_sweep.state import RunState
from tests.helpers_report import isolate, synthetic_sweep

spec = importlib.util.spec_from_file_location("bench", Path(__file__).resolve().parents[1] / "bench/bench.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_flop_count_of_the_seed_model():
    cfg = Config()
    conv1 = 2 * 32 * 32 * 3 * 3 * 1 * 32
    conv2 = 2 * 16 * 16 * 3 * 3 * 32 * 64
    dense = 2 * (8 * 8 * 64) * 128 + 2 * 128 * 10
    forward, training = bench.model_flops(cfg)
    assert forward == conv1 + conv2 + dense
    assert training == 3 * forward - conv1  # no input gradient for the first layer


def test_sweep_summary_counts_only_finished_runs_for_time_to_95():
    start = 1000.0
    runs = [
        Run(id="a", number=1, state=RunState.STOPPED, ended_at=start + 50, history=[{"val_accuracy": 0.97}], config={"x": 1}),
        Run(id="b", number=2, state=RunState.FINISHED, ended_at=start + 90, history=[{"val_accuracy": 0.96}], config={"x": 2}),
        Run(id="c", number=3, state=RunState.RUNNING, ended_at=None, history=[{"val_accuracy": 0.99}], config={"x": 3}),
    ]
    out = bench.sweep_summary(runs, start, [1])
    assert out["time_to_95_s"] == 90 and out["best_run"] == "a" and out["best_val_accuracy"] == 0.97
    assert out["states"]["finished"] == 1 and out["best_at"] == {"1min": 0.97} and out["wall_s"] == 90


def test_best_by_checkpoint():
    events = [(100.0, 0.5), (700.0, 0.9), (1300.0, 0.95)]
    assert bench.best_by(events, [10, 20, 30]) == {"10min": 0.5, "20min": 0.9, "30min": 0.95}


search_spec = importlib.util.spec_from_file_location("search", Path(__file__).resolve().parents[1] / "bench/search.py")
search = importlib.util.module_from_spec(search_spec)
search_spec.loader.exec_module(search)


def test_search_summary_counts_only_what_ended_within_the_budget():
    runs = [
        {"method": "bayes", "seed": 0, "events": [[100, 0.9, True, {}], [200, 0.96, False, {}], [400, 0.97, True, {}]]},
        {"method": "bayes", "seed": 1, "events": [[250, 0.99, True, {}], [700, 0.995, True, {}]]},
        {"method": "bayes", "seed": 2, "events": [[590, 0.5, True, {}]]},
    ]
    out = search.summarize(runs, minutes=10)["bayes"]
    assert out["best_at_5min"] == {"median": 0.975, "min": 0.96, "max": 0.99}  # seed 2 has nothing by 5 min
    assert out["best_at_10min"] == {"median": 0.97, "min": 0.5, "max": 0.99}  # 700 s is past the budget
    assert out["time_to_0.95_s"] == {"median": 325.0, "reached": "2/3"}  # a stopped run does not count
    assert out["time_to_0.99_s"] == {"median": None, "reached": "1/3"}  # no median when most seeds never got there
    assert out["runs_completed_median"] == 1


def test_keras_tuner_gets_the_yaml_space(monkeypatch):
    import keras_tuner as kt

    hp = kt.HyperParameters()
    assert search.kt_suggest(hp, "a", {"value": 3}) == 3
    assert search.kt_suggest(hp, "b", {"values": [8, 16]}) == 8
    assert search.kt_suggest(hp, "lr", {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2}) == 1e-4
    assert hp.get("lr") == 1e-4 and hp._hps["lr"][0].sampling == "log"


def test_a_runs_best_metric_follows_the_goal_and_skips_diverged_epochs():
    history = [{"val_soft_accuracy": 0.4, "val_loss": 1.0}, {"val_soft_accuracy": float("nan"), "val_loss": 0.5},
               {"val_soft_accuracy": 0.7, "val_loss": 0.8}]
    assert bench.best_of(history, {"name": "val_soft_accuracy", "goal": "maximize"}) == 0.7
    assert bench.best_of(history, {"name": "val_loss", "goal": "minimize"}) == 0.5
    assert bench.best_of([{"val_loss": float("nan")}], {"name": "val_loss", "goal": "minimize"}) == float("inf")


def test_each_methods_winner_is_the_run_its_own_metric_ranks_best(monkeypatch):
    """Two runs tie at val_accuracy 1.000: the winner is the one the sweep's metric ranks higher."""
    import asl_sweep.data
    import asl_sweep.train

    trained = []
    monkeypatch.setattr(asl_sweep.data, "DataCache", lambda: None)
    monkeypatch.setattr(asl_sweep.train, "execute", lambda values, cache, verbose: trained.append(values)
                        or {"summary": {"val_accuracy": 0.99}})
    runs = [{"method": "bayes", "seed": 0, "events": [[100, 1.0, True, {"x": 1}, 0.95], [200, 1.0, True, {"x": 2}, 0.98],
                                                       [900, 1.0, True, {"x": 3}, 0.99]]}]
    sweep = {"metric": {"name": "val_soft_accuracy", "goal": "maximize"}, "parameters": {"epochs": {"value": 20}}}
    out = search.retrain_winners(runs, folds=2, budget_s=600, sweep=sweep)["bayes"]
    assert out["config"] == {"x": 2}  # the run at 900 s ended after the budget
    assert trained == [{"x": 2, "epochs": 20, "seed": 1}, {"x": 2, "epochs": 20, "seed": 2}]


@pytest.mark.parametrize("args, fragment", [
    (["--methods", "bayes,bayes"], "names a method twice"),
    (["--methods", "bayes,hyperopt"], "unknown method(s) hyperopt"),
    (["--sweep", str(Path(__file__).resolve().parents[1] / "sweeps/grid.yaml")], "add early_terminate: hyperband"),
    (["--sweep", "no-such.yaml"], "no-such.yaml"),
    (["--sweep", str(Path(__file__).resolve().parents[1] / "sweeps/bayes.yaml")], "drop background"),
])
def test_bench_search_refuses_what_it_cannot_compare_before_starting(monkeypatch, capsys, args, fragment):
    monkeypatch.setattr("sys.argv", ["search.py", *args])
    with pytest.raises(SystemExit) as exc:
        search.main()
    assert exc.value.code == 2 and fragment in capsys.readouterr().err


def test_robustness_section_takes_make_sweeps_winner_and_retrains_it_on_other_folds(monkeypatch, tmp_path):
    """The winner is the best of the first run_cap runs (what `make sweep` runs), not of the runs the bench's
    lifted cap added; its configuration is re-trained on other signer folds and scored on the suite."""
    import json

    import asl_sweep.data
    import asl_sweep.train

    ledger = isolate(monkeypatch, tmp_path)
    scores = iter([0.5, 0.6, 0.9, 0.99])

    def record_for(run, value):
        path = tmp_path / f"{run.id}.json"
        path.write_text(json.dumps({"config": {"dropout": run.config["dropout"], "seed": 7, "fold": 1},
                                    "summary": {"val_accuracy": value, "val_robust_worst": value - 0.1},
                                    "robustness": {"darker": value}}))
        return str(path)

    sid = synthetic_sweep(ledger, runs=4, score=lambda c: next(scores), record_for=record_for)
    trained = []
    monkeypatch.setattr(asl_sweep.data, "DataCache", lambda: None)
    monkeypatch.setattr(asl_sweep.train, "execute", lambda values, cache, verbose: trained.append(values) or {
        "summary": {"val_accuracy": 0.99, "val_robust_accuracy": 0.98, "val_robust_worst": 0.95,
                    "val_robust_worst_change": "blur", "val_background_accuracy": 0.97, "val_background_worst": 0.95},
        "robustness": {"blur": 0.95, "darker": 1.0, "bg_wood": 0.99, "bg_small_offcentre": 0.95}})
    out = bench.bench_robustness(sid, folds=2, run_cap=3)  # the bench's sweep lifted make sweep's cap of 3
    assert out["winner"]["clean"] == 0.9 and out["winner_table"] == {"darker": 0.9}  # 0.99 came after the cap
    assert [(v["seed"], v["fold"]) for v in trained] == [(7, 0), (7, 2)]  # the same signer cut, not its own fold
    assert len({v["dropout"] for v in trained}) == 1
    assert out["winner_other_folds"]["fold_2"] == {"clean": 0.99, "robust_mean": 0.98, "robust_worst": 0.95,
                                                   "worst_change": "blur", "background_mean": 0.97,
                                                   "background_worst": 0.95, "small_offcentre": 0.95,
                                                   "rest_mean": 0.975, "rest_worst": 0.95}
