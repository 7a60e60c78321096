"""`asl-sweep export`: the right run for either goal, a complete folder, no silent overwrite, re-training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from asl_sweep import cli, export
from asl_sweep import model as model_lib
from asl_sweep.config import Config, from_mapping, read_yaml
from asl_sweep.errors import UserError
from asl_sweep.results import load_sweep
from tests.helpers_report import TINY, isolate, synthetic_sweep, tiny_trained_sweep


@pytest.mark.parametrize("goal", ["maximize", "minimize"])
def test_best_run_follows_the_sweeps_goal(monkeypatch, tmp_path, goal):
    ledger = isolate(monkeypatch, tmp_path)
    sweep_id = synthetic_sweep(ledger, metric_name="val_loss", goal=goal, score=lambda c: c["dropout"], runs=6)
    data = load_sweep(sweep_id)
    values = {r.id: r.config["dropout"] for r in data.runs}
    pick = max if goal == "maximize" else min
    assert data.best.id == pick(values, key=values.get)


def test_refuses_a_non_empty_folder_without_force(monkeypatch, tmp_path):
    isolate(monkeypatch, tmp_path)
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty; pass --force"):
        export.export_best("anything", out)
    assert (out / "keep.txt").read_text() == "mine"


def test_no_finished_record_is_a_clear_error(monkeypatch, tmp_path):
    ledger = isolate(monkeypatch, tmp_path)
    sweep_id = synthetic_sweep(ledger, runs=3)
    with pytest.raises(UserError, match="has no result record yet"):
        export.export_best(sweep_id, tmp_path / "out")


@pytest.mark.slow
def test_export_of_a_trained_sweep_writes_a_usable_folder(monkeypatch, tmp_path, capsys):
    tiny = tiny_trained_sweep()
    isolate(monkeypatch, tmp_path)
    monkeypatch.setenv("ASL_SWEEP_LEDGER", str(tiny["ledger"]))
    out = tmp_path / "export"
    assert cli.main(["export", tiny["sweep_id"], "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(export.FILES)

    data = load_sweep(tiny["sweep_id"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run_id"] == data.best.id and metrics["sweep_id"] == tiny["sweep_id"]
    assert metrics["metric"]["best"] == max(h["val_accuracy"] for h in data.best.history)
    assert len(metrics["history"]) == TINY["epochs"] and metrics["wall_time"] > 0 and metrics["retrain"] is None

    cfg = from_mapping(read_yaml(out / "config.yaml"), source="export")
    assert cfg == Config(**data.best.config | {k: v for k, v in Config().to_dict().items()
                                                   if k not in data.best.config})
    assert cfg.learning_rate == data.best.config["learning_rate"] and cfg.image_size == TINY["image_size"]
    card = (out / "README.md").read_text()
    assert data.best.id in card and "| learning_rate * |" in card and "asl-sweep predict" in card
    assert "## Robustness" in card and "| mirrored | a left-handed signer" in card
    assert metrics["robustness"] == json.loads(Path(data.best.record_path).read_text())["robustness"]
    assert (out / "model.keras").read_bytes() == Path(json.loads(Path(data.best.record_path).read_text())
                                                      ["paths"]["model"]).read_bytes()

    with pytest.raises(UserError, match="not empty"):
        export.export_best(tiny["sweep_id"], out)
    assert cli.main(["export", tiny["sweep_id"], "--out", str(out), "--force", "--retrain",
                     "--data-dir", str(tiny["images"])]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["retrain"]["images"] == 80 and metrics["retrain"]["epochs"] == TINY["epochs"]
    assert "Re-trained on train+validation" in (out / "README.md").read_text()
    assert "re-trained on train+validation" in capsys.readouterr().out
    served = model_lib.load(str(out / "model.keras"))  # the servable model, not the bare classifier
    assert np.asarray(served(np.full((1, 50, 70, 3), 128.0, dtype="float32"))).shape == (1, 10)


def _previous_export(folder: Path) -> dict[str, bytes]:
    folder.mkdir(parents=True)
    for name in (*export.FILES, "evaluation.json", "stale-from-an-older-version.txt"):
        (folder / name).write_bytes(f"old {name}".encode())
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_forced_export_replaces_the_folder_whole(tmp_path):
    out = tmp_path / "exports" / "export"
    _previous_export(out)
    export.check_out_dir(out, force=True)  # a previous export: forced replacement is allowed

    def fill(folder: Path) -> None:
        for name in export.FILES:
            (folder / name).write_text(f"new {name}")

    export.write_folder(out, fill)
    assert sorted(p.name for p in out.iterdir()) == sorted(export.FILES)  # no stale file left beside them
    assert (out / "metrics.json").read_text() == "new metrics.json"
    assert [p.name for p in out.parent.iterdir()] == ["export"]  # no temporary sibling left


def test_a_failure_midway_leaves_the_previous_export_intact(tmp_path):
    out = tmp_path / "exports" / "export"
    before = _previous_export(out)

    def fill(folder: Path) -> None:
        (folder / "model.keras").write_text("half")
        raise RuntimeError("killed while saving")

    with pytest.raises(RuntimeError):
        export.write_folder(out, fill)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in out.parent.iterdir()] == ["export"]

    def disk_full(folder: Path) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(UserError, match="No space left on device; any previous export there is unchanged"):
        export.write_folder(out, disk_full)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_out_folders_that_cannot_be_exported_to(tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(UserError, match="a-file/sub is not a folder: .*a-file is a file"):
        export.check_out_dir(tmp_path / "a-file" / "sub", force=False)
    with pytest.raises(UserError, match="a-file is not a folder"):
        export.check_out_dir(tmp_path / "a-file", force=True)
    home = tmp_path / "home"
    (home / "photos").mkdir(parents=True)
    (home / "model.keras").write_text("x")
    (home / "metrics.json").write_text("{}")
    with pytest.raises(UserError, match="not a previous export .* even with --force"):
        export.check_out_dir(home, force=True)  # a subfolder: not ours to delete
    export.check_out_dir(tmp_path / "new" / "deeper", force=False)  # missing folders are created later


def test_retraining_a_hand_aware_config_shows_both_hands_and_ships_a_ten_digit_model(dataset_dir):
    cfg = from_mapping({**TINY, "hand_aware": True, "epochs": 1})
    net, history, images = export.retrain_all(cfg, str(dataset_dir))
    assert len(history) == 1 and 0 <= history[0]["accuracy"] <= 1
    x = np.random.default_rng(0).uniform(0, 255, (2, 30, 30, 3)).astype("float32")
    assert np.asarray(net.predict_on_batch(x)).shape == (2, 10)


def test_retraining_with_backgrounds_composites_every_photo_and_ships_a_safe_mode_model(dataset_dir, tmp_path):
    from asl_sweep import model

    cfg = from_mapping({**TINY, "hand_aware": True, "background": 0.9, "epochs": 1})
    net, history, images = export.retrain_all(cfg, str(dataset_dir))
    assert len(history) == 1 and 0 <= history[0]["accuracy"] <= 1
    net.save(tmp_path / "m.keras")
    x = np.random.default_rng(0).uniform(0, 255, (2, 30, 30, 3)).astype("float32")
    assert np.allclose(model.load(str(tmp_path / "m.keras")).predict_on_batch(x), net.predict_on_batch(x), atol=1e-5)


@pytest.mark.slow
def test_a_stopped_winner_is_scored_on_the_same_suite_that_training_scores(monkeypatch, tmp_path):
    tiny = tiny_trained_sweep()
    isolate(monkeypatch, tmp_path)
    monkeypatch.setenv("ASL_SWEEP_LEDGER", str(tiny["ledger"]))
    record = json.loads(Path(load_sweep(tiny["sweep_id"]).best.record_path).read_text())
    cfg = from_mapping(record["config"], source="test")
    lazily = export.suite_scores(cfg, model_lib.load(record["paths"]["model"]), str(tiny["images"]))
    assert list(lazily) == list(record["robustness"])
    assert lazily == pytest.approx(record["robustness"], abs=1 / record["summary"]["val_images"] + 1e-9)


@pytest.mark.slow
def test_export_of_a_winner_the_sweep_stopped_scores_its_suite(monkeypatch, tmp_path):
    import shutil
    import sqlite3

    tiny = tiny_trained_sweep()
    isolate(monkeypatch, tmp_path)
    ledger = tmp_path / "ledger.db"
    shutil.copyfile(tiny["ledger"], ledger)
    monkeypatch.setenv("ASL_SWEEP_LEDGER", str(ledger))
    best = load_sweep(tiny["sweep_id"]).best
    scored = json.loads(Path(best.record_path).read_text())
    stopped = {**scored, "state": "stopped", "robustness": {}}  # as training now leaves a run hyperband stopped
    with sqlite3.connect(ledger) as db:
        db.execute("UPDATE runs SET record = ?, state = 'stopped' WHERE id = ?", (json.dumps(stopped), best.id))
    out = tmp_path / "export"
    assert cli.main(["export", tiny["sweep_id"], "--out", str(out), "--data-dir", str(tiny["images"])]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run_id"] == best.id and metrics["state"] == "stopped"
    assert metrics["robustness"] == pytest.approx(scored["robustness"], abs=1 / scored["summary"]["val_images"] + 1e-9)
    assert "## Robustness" in (out / "README.md").read_text()
