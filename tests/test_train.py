import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from asl_sweep import data
from asl_sweep.config import Config
from asl_sweep.data import DataCache
from asl_sweep.robustness import SUITE
from asl_sweep.sweepfile import LOGGED_METRICS
from asl_sweep.train import example_indices, execute, train
from tests.conftest import TINY

REPO = Path(__file__).resolve().parents[1]


def test_execute_trains_logs_offline_and_writes_the_record(dataset_dir):
    record = execute({**TINY, "epochs": 2, "split": "random"}, DataCache(str(dataset_dir)))
    assert record["state"] == "finished"
    assert [h["epoch"] for h in record["history"]] == [1, 2]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_time"):
        assert key in record["history"][0]
    assert set(record["history"][0]) == {"epoch", *LOGGED_METRICS}  # what sweep files may name as their metric
    for h in record["history"]:
        assert h["val_score"] == pytest.approx((h["val_accuracy"] + h["val_robust_accuracy"]) / 2)
    assert list(record["robustness"]) == list(SUITE) and all(0 <= v <= 1 for v in record["robustness"].values())
    assert record["summary"]["val_robust_accuracy"] == pytest.approx(np.mean(list(record["robustness"].values())))
    assert record["summary"]["val_robust_worst"] == min(record["robustness"].values())
    assert 0 < record["summary"]["robust_time"] < record["summary"]["wall_time"]
    s = record["summary"]
    assert s["best_val_accuracy"] == max(h["val_accuracy"] for h in record["history"]) and s["param_count"] > 0
    assert s["inactive_params"] == "filters_3,filters_4,warmup_epochs"  # TINY: 2 blocks, constant schedule
    assert s["val_accuracy"] == pytest.approx(s["best_val_accuracy"], abs=1e-6)  # the saved model is the best epoch's
    run_dir = Path(record["paths"]["run_dir"])
    assert run_dir.parent == Path.cwd() / "wandb" and run_dir.name.startswith("offline-run-")
    assert list(run_dir.glob("run-*.wandb")) and Path(record["paths"]["model"]).is_file()
    assert json.loads(Path(record["paths"]["record"]).read_text())["run_id"] == record["run_id"]
    requirements = (run_dir / "files" / "requirements.txt").read_text().splitlines()
    assert any(line.startswith("wandb==") for line in requirements)  # as wandb itself would have written it
    assert np.array(record["confusion_matrix"]).sum() == s["val_images"]
    sync = subprocess.run([str(Path(sys.executable).parent / "wandb"), "sync", "--dry-run", str(run_dir)],
                          capture_output=True, text=True, timeout=120)
    assert "Would sync 1 run(s)" in sync.stdout + sync.stderr


def test_without_the_estimate_epochs_log_no_robust_keys_and_the_end_still_scores_the_suite(dataset_dir):
    record = execute({**TINY, "epochs": 2, "split": "random", "robust_estimate": False, "checkpoint_metric": "val_accuracy"},
                     DataCache(str(dataset_dir)))
    assert record["state"] == "finished"
    assert set(record["history"][0]) == {"epoch", *LOGGED_METRICS} - {"val_robust_accuracy", "val_score"}
    assert list(record["robustness"]) == list(SUITE)
    assert record["summary"]["val_robust_accuracy"] == pytest.approx(np.mean(list(record["robustness"].values())))


def test_example_images_show_the_mistakes_first():
    correct = np.ones(100, dtype=bool)
    correct[[3, 50, 97]] = False
    shown = example_indices(correct, 10, seed=0)
    assert len(shown) == 10 and list(shown[:3]) == [3, 50, 97] and correct[shown[3:]].all()
    many_wrong = example_indices(np.zeros(30, dtype=bool), 10, seed=0)
    assert len(set(many_wrong)) == 10 and max(many_wrong) > 10  # a sample, not the first ten (digit 0's)
    assert len(example_indices(np.ones(4, dtype=bool), 10, seed=0)) == 4


def test_nan_loss_stops_the_run_as_failed(dataset_dir):
    ds = data.load(data.locate(dataset_dir), 16)
    ds.x[:] = 3e38  # float32 overflow inside the network makes the loss NaN
    import wandb

    run = wandb.init(project="t", config={}, reinit="finish_previous")
    record = train(Config().replace(**{**TINY, "epochs": 3, "split": "random"}), ds, run)
    run.finish(exit_code=1)
    assert record["state"] == "failed" and len(record["history"]) == 1
    assert record["paths"]["model"] is None


class StopAfterFirst:
    def __init__(self):
        self.rows, self.finished = [], None

    def epoch(self, row):
        self.rows.append(row)
        return True

    def finish(self, record):
        self.finished = record


def test_reporter_stop_request_ends_at_epoch_boundary(dataset_dir):
    rep = StopAfterFirst()
    record = execute({**TINY, "epochs": 4, "split": "random"}, DataCache(str(dataset_dir)), reporter=rep)
    assert record["state"] == "stopped" and len(record["history"]) == 1
    assert rep.finished is record and rep.rows == record["history"]
    # the suite is for candidates: a stopped run keeps its model and per-epoch estimate, not the end-of-run suite
    assert record["robustness"] == {} and "val_robust_worst" not in record["summary"]
    assert Path(record["paths"]["model"]).is_file() and "val_robust_accuracy" in record["history"][0]


def _env(**extra):
    env = {k: v for k, v in os.environ.items()}
    env.update(PYTHONPATH=str(REPO), **extra)
    return env


def test_launched_as_the_wandb_agent_launches_it(dataset_dir, tmp_path):
    """`${env} ${interpreter} -m asl_sweep.train ${args}` with the agent's env vars."""
    params = {**TINY, "learning_rate": 0.005, "split": "random"}
    param_file = tmp_path / "params.yaml"
    param_file.write_text(yaml.safe_dump({k: {"value": v} for k, v in params.items()}))
    args = [f"--{k}={v}" for k, v in params.items()]
    proc = subprocess.run(
        ["/usr/bin/env", sys.executable, "-m", "asl_sweep.train", *args],
        env=_env(WANDB_SWEEP_ID="abcd1234", WANDB_RUN_ID="agentrun1", WANDB_SWEEP_PARAM_PATH=str(param_file),
                 ASL_SWEEP_DATA_DIR=str(dataset_dir)),
        capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(next(Path("wandb").glob("offline-run-*-agentrun1/files/result.json")).read_text())
    assert record["run_id"] == "agentrun1" and record["sweep_id"] == "abcd1234"
    assert record["config"]["learning_rate"] == 0.005 and record["config"]["image_size"] == 16
    assert "Traceback" not in proc.stderr


def test_under_wandbs_agent_sigterm_ends_the_run_as_stopped_at_an_epoch_boundary(dataset_dir):
    """W&B's agent stops a run with SIGTERM: the run ends after its epoch, saved, recorded, exit code 0."""
    args = [f"--{k}={v}" for k, v in {**TINY, "epochs": 200, "split": "random"}.items()]
    proc = subprocess.Popen([sys.executable, "-m", "asl_sweep.train", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            env=_env(WANDB_SWEEP_ID="abcd1234", WANDB_RUN_ID="sigrun", ASL_SWEEP_DATA_DIR=str(dataset_dir)))
    deadline = time.monotonic() + 120
    while not list(Path("wandb").glob("offline-run-*-sigrun/files/requirements.txt")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    run_dir = next(Path("wandb").glob("offline-run-*-sigrun"))
    record = json.loads((run_dir / "files/result.json").read_text())
    assert record["state"] == "stopped" and 1 <= record["summary"]["epochs_run"] < 200
    assert (run_dir / "files/model.keras").is_file()


def test_param_file_alone_sets_the_config(dataset_dir, tmp_path):
    param_file = tmp_path / "params.yaml"
    param_file.write_text(yaml.safe_dump({k: {"value": v} for k, v in {**TINY, "dropout": 0.3, "split": "random"}.items()}))
    proc = subprocess.run(
        [sys.executable, "-m", "asl_sweep.train"],
        env=_env(WANDB_SWEEP_ID="abcd1234", WANDB_RUN_ID="paramonly", WANDB_SWEEP_PARAM_PATH=str(param_file),
                 ASL_SWEEP_DATA_DIR=str(dataset_dir)),
        capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(next(Path("wandb").glob("offline-run-*-paramonly/files/result.json")).read_text())
    assert record["config"]["dropout"] == 0.3 and record["config"]["dense_units"] == 16


@pytest.mark.parametrize("args, fragment", [
    (["--epochs=zero"], "config key 'epochs'"),
    (["--learnng_rate=0.1"], "unknown config key 'learnng_rate'"),
    (["--config=missing.yaml"], "config file not found"),
])
def test_bad_input_is_one_line_and_exit_2(args, fragment):
    proc = subprocess.run([sys.executable, "-m", "asl_sweep", "train", *args], env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and fragment in proc.stderr


@pytest.mark.realdata
@pytest.mark.slow
def test_real_data_short_run(real_data_dir):
    record = execute({"epochs": 2, "image_size": 24}, DataCache(str(real_data_dir)), verbose=0)
    assert record["state"] == "finished"
    assert record["summary"]["val_accuracy"] > 0.2  # well above chance (0.1) after two epochs


def test_the_saved_model_is_the_epoch_the_checkpoint_metric_ranks(dataset_dir):
    record = execute({**TINY, "epochs": 4, "split": "random", "checkpoint_metric": "val_score", "normalize": "image"},
                     DataCache(str(dataset_dir)))
    scores = [h["val_score"] for h in record["history"]]
    assert record["summary"]["best_epoch"] == scores.index(max(scores)) + 1


def test_a_hand_aware_run_answers_digits_and_saves_a_model_that_answers_the_same(dataset_dir):
    """The 20 hand-labelled outputs never reach a user: predictions, confusion matrix, accuracy and the saved
    model all speak in the 10 digits."""
    from asl_sweep import model

    record = execute({**TINY, "epochs": 2, "split": "random", "hand_aware": True}, DataCache(str(dataset_dir)))
    truth = np.array([p["true"] for p in record["val_predictions"]])
    preds = np.array([p["pred"] for p in record["val_predictions"]])
    assert preds.min() >= 0 and preds.max() < 10
    matrix = np.array(record["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == record["summary"]["val_images"]
    assert record["summary"]["val_accuracy"] == pytest.approx((preds == truth).mean())
    served = model.load(record["paths"]["model"])
    photos = np.stack([data.decode(Path(p["path"])) for p in record["val_predictions"]]).astype("float32")
    probs = np.asarray(served.predict_on_batch(photos))
    assert probs.shape == (len(truth), 10) and np.array_equal(probs.argmax(axis=1), preds)


def test_a_background_run_logs_the_scenes_and_saves_a_safe_mode_model(dataset_dir):
    from asl_sweep import model
    from asl_sweep.robustness import BACKGROUND_CHANGES

    record = execute({**TINY, "epochs": 2, "split": "random", "hand_aware": True, "background": 0.8},
                     DataCache(str(dataset_dir)))
    assert record["state"] == "finished"
    assert set(BACKGROUND_CHANGES) <= set(record["robustness"])
    s = record["summary"]
    assert s["val_background_accuracy"] == pytest.approx(np.mean([record["robustness"][n] for n in BACKGROUND_CHANGES]))
    assert s["val_background_worst"] == min(record["robustness"][n] for n in BACKGROUND_CHANGES)
    served = model.load(record["paths"]["model"])  # safe mode: nothing custom in the saved graph
    photos = np.stack([data.decode(Path(p["path"])) for p in record["val_predictions"]]).astype("float32")
    preds = np.array([p["pred"] for p in record["val_predictions"]])
    assert np.array_equal(np.asarray(served.predict_on_batch(photos)).argmax(axis=1), preds)
