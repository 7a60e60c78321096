from pathlib import Path

import pytest
import yaml

from asl_sweep import sweepfile
from asl_sweep.errors import UserError

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"


@pytest.mark.parametrize("name, metric", [("bayes", "val_score"), ("random", "val_score"), ("grid", "val_accuracy"),
                                          ("smoke", "val_accuracy"), ("wide", "val_soft_accuracy")])
def test_shipped_sweeps_are_valid_and_launch_the_entrypoint(name, metric):
    config = sweepfile.load(SWEEPS / f"{name}.yaml")
    assert config["metric"] == {"name": metric, "goal": "maximize"}
    assert config["command"][2:4] == ["-m", "asl_sweep.train"] and "${args}" in config["command"]


def test_bayes_has_hyperband_and_a_cap():
    config = sweepfile.load(SWEEPS / "bayes.yaml")
    assert config["early_terminate"]["type"] == "hyperband" and config["run_cap"] > 0
    assert config["parameters"]["learning_rate"]["distribution"] == "log_uniform_values"


@pytest.mark.parametrize("name", ["bayes", "random", "wide"])
def test_a_sweep_saves_the_epoch_its_metric_ranks(name):
    config = sweepfile.load(SWEEPS / f"{name}.yaml")
    assert config["parameters"]["checkpoint_metric"] == {"value": config["metric"]["name"]}


def test_the_default_sweep_ranks_and_saves_by_clean_and_robust_accuracy():
    params = sweepfile.load(SWEEPS / "bayes.yaml")["parameters"]
    assert params["checkpoint_metric"] == {"value": "val_score"}
    assert params["normalize"] == {"value": "image"} and params["hand_aware"] == {"value": True}


def test_the_default_sweeps_search_the_same_space_at_48_pixels():
    """A small hand in front of a photo needs the pixels (docs/backgrounds.md); random is bayes' baseline."""
    bayes = sweepfile.load(SWEEPS / "bayes.yaml")["parameters"]
    assert bayes["image_size"] == {"value": 48}
    assert sweepfile.load(SWEEPS / "random.yaml")["parameters"] == bayes


def _write(tmp_path, config):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


BASE = {"method": "random", "metric": {"name": "val_accuracy", "goal": "maximize"},
        "parameters": {"dropout": {"values": [0.1, 0.2]}},
        "command": ["${env}", "${interpreter}", "-m", "asl_sweep.train", "${args}"]}


@pytest.mark.parametrize("change, fragment", [
    ({"parameters": {"dropuot": {"values": [0.1]}}}, "unknown parameter 'dropuot'"),
    ({"parameters": {"dropout": {"distribution": "unifrom", "min": 0.1, "max": 0.2}}}, "not a valid W&B sweep"),
    ({"method": "bayesian"}, "not a valid W&B sweep"),
    ({"parameters": {"dropout": {"values": [0.1, 2.0]}}}, "parameter 'dropout'"),
    ({"parameters": {"optimizer": {"values": ["adam", "lion"]}}}, "must be one of"),
    ({"parameters": {"epochs": {"distribution": "int_uniform", "min": 0, "max": 5}}}, "'epochs'"),
])
def test_bad_sweep_files_are_one_clear_error(tmp_path, change, fragment):
    with pytest.raises(UserError, match=fragment):
        sweepfile.load(_write(tmp_path, {**BASE, **change}))


@pytest.mark.parametrize("change, fragment", [
    ({"method": "custom"}, "'method: custom' needs W&B's servers"),
    ({"scheduler": {"engine": "wandb"}}, "'scheduler'"),
    ({"method": "custom", "metric": None, "metrics": [{"name": "val_accuracy"}, {"name": "val_loss"}]},
     "'method: custom' needs W&B's servers"),
    ({"job": "me/proj/job:v1"}, "'job'"),
    ({"image_uri": "docker.io/x"}, "'image_uri'"),
    ({"metric": {"name": "val_acc", "goal": "maximize"}}, "metric 'val_acc' is never logged"),
    ({"method": "bayes", "metric": None}, "the search engine cannot run this sweep"),
    ({"method": "grid", "parameters": {"dropout": {"min": 0.1, "max": 0.3}}}, "the search engine cannot run"),
    ({"metric": None, "early_terminate": {"type": "hyperband", "min_iter": 2}}, "the search engine cannot run"),
    ({"command": ["${env}", "${interpreter}", "${program}", "${args}"]}, "has no 'program'"),
])
def test_what_the_schema_accepts_but_cannot_run_is_refused(tmp_path, change, fragment):
    config = {**BASE, **change}
    config = {k: v for k, v in config.items() if v is not None}
    with pytest.raises(UserError, match=fragment):
        sweepfile.load(_write(tmp_path, config))


def test_runnable_schema_keys_are_accepted_and_goal_defaults_like_wandb(tmp_path):
    config = {**BASE, "metric": {"name": "val_loss", "target": 0.1, "impute": "worst"}, "apiVersion": "1",
              "description": "d", "controller": {"type": "local"}, "project": "p", "entity": "e",
              "program": "train.py", "command": ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"]}
    loaded = sweepfile.load(_write(tmp_path, config))
    assert sweepfile.metric(loaded) == ("val_loss", "minimize") and sweepfile.target(loaded) == 0.1
    assert sweepfile.uses_local_controller(loaded)
    assert sweepfile.engine_config(loaded)["metric"]["goal"] == "minimize" and "goal" not in loaded["metric"]


def test_unreadable_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        sweepfile.load(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("method: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        sweepfile.load(tmp_path / "bad.yaml")


def test_falsy_values_go_first_except_in_a_grid():
    config = {"method": "bayes", "parameters": {
        "batch_norm": {"values": [True, False]}, "augment": {"values": [0.1, 0.0, 0.2]},
        "pooling": {"values": ["flatten", "global_avg"]}, "dropout": {"min": 0.0, "max": 0.5},
        "opt": {"parameters": {"nesterov": {"values": [True, None]}}}}}
    moved_config, moved = sweepfile.falsy_first(config)
    assert moved == ["batch_norm", "augment", "opt.nesterov"]
    params = moved_config["parameters"]
    assert params["batch_norm"]["values"] == [False, True] and params["augment"]["values"] == [0.0, 0.1, 0.2]
    assert params["opt"]["parameters"]["nesterov"]["values"] == [None, True]
    assert params["pooling"] == config["parameters"]["pooling"] and config["parameters"]["batch_norm"]["values"] == [True, False]
    assert sweepfile.falsy_first({**config, "method": "grid"}) == ({**config, "method": "grid"}, [])
    assert sweepfile.engine_config(config)["parameters"]["batch_norm"]["values"] == [False, True]


def test_shipped_sweeps_need_no_reordering():
    for path in SWEEPS.glob("*.yaml"):
        assert sweepfile.falsy_first(sweepfile.load(path))[1] == [], path.name


def _encoded(config, values):
    """What W&B's engine feeds its GP for runs with these `batch_norm` values."""
    from sweeps.params import HyperParameterSet

    from sweeps import SweepRun

    runs = [SweepRun(name=str(i), state="finished", config={"batch_norm": {"value": v}}) for i, v in enumerate(values)]
    return HyperParameterSet.from_config(config["parameters"]).normalize_runs_as_array(runs)[:, 0].tolist()


def test_the_engine_tells_false_from_true_once_false_is_first():
    written = {"method": "bayes", "parameters": {"batch_norm": {"values": [True, False]}}}
    assert _encoded(written, [True, False]) == [0.5, 0.5]  # the blind spot, in the engine itself
    reordered = sweepfile.engine_config(written)
    low, high = _encoded(reordered, [False, True])
    assert low != high


def _share_with_batch_norm(config, seed, suggestions=12):
    """Of the engine's next suggestions, after runs where batch norm decided the metric, the share with it on."""
    import numpy as np

    import sweeps
    from sweeps import SweepRun

    rng = np.random.default_rng(seed)
    runs = []
    for i in range(16):
        on, lr = bool(i % 2), float(rng.uniform(0.001, 0.01))
        value = (0.9 if on else 0.1) + float(rng.normal(0, 0.01))
        runs.append(SweepRun(name=str(i), state="finished", config={"batch_norm": {"value": on}, "learning_rate": {"value": lr}},
                             history=[{"val_accuracy": value}], summary_metrics={"val_accuracy": value}))
    np.random.seed(seed)
    picks = [sweeps.next_run(config, runs).config["batch_norm"]["value"] for _ in range(suggestions)]
    return sum(picks) / len(picks)


def test_bayes_then_suggests_what_won():
    space = {"method": "bayes", "metric": {"name": "val_accuracy", "goal": "maximize"},
             "parameters": {"batch_norm": {"values": [True, False]}, "learning_rate": {"min": 0.001, "max": 0.01}}}
    blind = [_share_with_batch_norm(space, seed) for seed in range(3)]
    seen = [_share_with_batch_norm(sweepfile.engine_config(space), seed) for seed in range(3)]
    assert sum(seen) / 3 >= 0.9 and sum(seen) / 3 > sum(blind) / 3 + 0.2, (blind, seen)


@pytest.mark.parametrize("name, values, fragment", [
    ("augment", [0, 0.0, 0.1], "cannot tell 0 from 0.0"),
    ("batch_norm", [1, True], "cannot tell 1 from true"),
])
def test_bayes_values_the_engine_encodes_alike_are_refused(tmp_path, name, values, fragment):
    config = {**BASE, "method": "bayes", "parameters": {name: {"values": values}}}
    with pytest.raises(UserError, match=fragment):
        sweepfile.load(_write(tmp_path, config))
    sweepfile.load(_write(tmp_path, {**config, "method": "random"}))
