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
