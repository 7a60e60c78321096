from pathlib import Path

import pytest
import yaml

from asl_sweep import sweepfile
from asl_sweep.errors import UserError

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"


@pytest.mark.parametrize("name", ["bayes", "random", "grid", "smoke"])
def test_shipped_sweeps_are_valid_and_launch_the_entrypoint(name):
    config = sweepfile.load(SWEEPS / f"{name}.yaml")
    assert config["metric"] == {"name": "val_accuracy", "goal": "maximize"}
    assert config["command"][2:4] == ["-m", "asl_sweep.train"] and "${args}" in config["command"]


def test_bayes_has_hyperband_and_a_cap():
    config = sweepfile.load(SWEEPS / "bayes.yaml")
    assert config["early_terminate"]["type"] == "hyperband" and config["run_cap"] > 0
    assert config["parameters"]["learning_rate"]["distribution"] == "log_uniform_values"


def _write(tmp_path, config):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


BASE = {"method": "random", "metric": {"name": "val_accuracy", "goal": "maximize"},
        "parameters": {"dropout": {"values": [0.1, 0.2]}}}


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


def test_unreadable_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        sweepfile.load(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("method: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        sweepfile.load(tmp_path / "bad.yaml")
