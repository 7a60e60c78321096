"""`asl-sweep predict` / `evaluate`: raw files of any size in, digits out; bad model files are one clear error."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from asl_sweep import cli, predict
from asl_sweep.errors import UserError
from tests.helpers_report import isolate, tiny_trained_sweep, write_images


@pytest.fixture
def model_dir(monkeypatch, tmp_path) -> Path:
    """An export-shaped folder holding the tiny sweep's best model."""
    tiny = tiny_trained_sweep()
    isolate(monkeypatch, tmp_path)
    monkeypatch.setenv("ASL_SWEEP_LEDGER", str(tiny["ledger"]))
    from asl_sweep.results import load_sweep, read_record

    record = read_record(load_sweep(tiny["sweep_id"]).best)
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copyfile(record["paths"]["model"], folder / "model.keras")
    return folder


def test_safe_mode_rejects_garbage_truncated_and_foreign_files(tmp_path):
    import keras

    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"not a model at all" * 100)
    plain_zip = tmp_path / "plain.keras"
    with zipfile.ZipFile(plain_zip, "w") as zf:
        zf.writestr("hello.txt", "a zip, not a Keras archive")
    inputs = keras.Input(shape=(4,))
    lambda_model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    foreign = tmp_path / "lambda.keras"
    lambda_model.save(foreign)  # arbitrary Python code inside: safe mode must refuse it
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(foreign.read_bytes()[: foreign.stat().st_size // 2])
    for path in (garbage, plain_zip, foreign, truncated):
        with pytest.raises(UserError, match=f"cannot load model {path}") as info:
            predict.load_model(path)
        assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="model file not found"):
        predict.load_model(tmp_path / "absent")


@pytest.mark.slow
def test_predict_prints_digit_and_confidence_for_any_size(model_dir, tmp_path, capsys):
    images = write_images(tmp_path / "imgs", per_class=1)
    big = tmp_path / "big.jpg"
    Image.open(images / "4" / "IMG_1004.png").resize((137, 90)).save(big)
    files = [str(images / "4" / "IMG_1004.png"), str(images / "7" / "IMG_1007.png"), str(big)]
    assert cli.main(["predict", str(model_dir), *files]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    for line, name in zip(lines, files):
        assert line.startswith(name) and " digit " in line and " confidence " in line
        conf = float(line.rsplit(" ", 1)[1])
        assert 0.0 < conf <= 1.0

    net = predict.load_model(model_dir)
    probs = predict.predict_files(net, [Path(f) for f in files])
    assert probs.shape == (3, 10) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    alone = np.asarray(net.predict_on_batch(np.asarray(Image.open(big).convert("RGB"), dtype=np.float32)[None]))
    assert np.allclose(probs[2], alone[0], atol=1e-5)


@pytest.mark.slow
def test_evaluate_on_a_folder_without_dataset_subfolder(model_dir, tmp_path, capsys):
    data = write_images(tmp_path / "flat", per_class=2)  # 0..9 directly, no Dataset/
    assert not (data / "Dataset").exists()
    out = tmp_path / "eval.json"
    assert cli.main(["evaluate", str(model_dir), "--data-dir", str(data), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    cm = np.array(result["confusion_matrix"])
    assert result["images"] == 20 and cm.shape == (10, 10) and cm.sum() == 20 and (cm.sum(axis=1) == 2).all()
    assert result["accuracy"] == pytest.approx(np.trace(cm) / 20)
    assert result["per_class_accuracy"]["3"] == pytest.approx(cm[3, 3] / 2)
    assert len(result["errors"]) == 20 - np.trace(cm)
    assert f"accuracy {result['accuracy']:.4f}" in capsys.readouterr().out

    default = cli.main(["evaluate", str(model_dir), "--data-dir", str(data)])
    assert default == 0 and (model_dir / "evaluation.json").is_file()


def test_evaluate_rejects_a_folder_without_the_layout(tmp_path):
    (tmp_path / "model.keras").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    net = object()
    with pytest.raises(UserError, match="no dataset layout"):
        predict.evaluate(net, tmp_path / "empty")
    with pytest.raises(UserError, match="does not exist"):
        predict.evaluate(net, tmp_path / "missing")


def test_evaluate_checks_where_it_writes_before_any_work(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("x")
    monkeypatch.setattr(predict, "load_model", lambda d: pytest.fail("model loaded before --out was checked"))
    for out, fragment in ((tmp_path / "a-file" / "e.json", "e.json: folder .*a-file is not a folder"),
                          (tmp_path, "is a folder; give a file name")):
        with pytest.raises(UserError, match=fragment):
            predict.evaluate_to_file(tmp_path / "model", tmp_path, out)


def test_predict_names_a_folder_given_as_an_image(tmp_path):
    with pytest.raises(UserError, match="is a folder, not a file"):
        predict.predict_images(tmp_path, [str(tmp_path)])


@pytest.mark.slow
def test_evaluate_robustness_scores_the_suite_on_any_labelled_folder(model_dir, tmp_path, capsys):
    from asl_sweep.robustness import SUITE

    data = write_images(tmp_path / "flat", per_class=1)
    out = tmp_path / "eval.json"
    assert cli.main(["evaluate", str(model_dir), "--data-dir", str(data), "--out", str(out), "--robustness"]) == 0
    result = json.loads(out.read_text())
    assert list(result["robustness"]) == list(SUITE)
    assert result["val_robust_worst"] == min(result["robustness"].values())
    printed = capsys.readouterr().out
    assert "robustness: mean" in printed and all(name in printed for name in SUITE)
