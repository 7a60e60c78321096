"""`asl-sweep predict` and `asl-sweep evaluate`: use an exported model on raw image files.

The model resizes and converts colour itself, so images go in as decoded RGB float arrays of their
own size; images that share a size are predicted together, in bounded batches.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from asl_sweep.errors import UserError

BATCH = 64


def model_file(model_dir: str | Path) -> Path:
    """An export folder's `model.keras`, or a `.keras` file given directly."""
    p = Path(model_dir)
    return p / "model.keras" if p.is_dir() else p


def load_model(model_dir: str | Path):
    from asl_sweep import model as model_lib

    return model_lib.load(str(model_file(model_dir)))


def predict_arrays(net, images: list[np.ndarray]) -> np.ndarray:
    """Class probabilities (len(images) x 10) for decoded photos, batching images of the same size."""
    from asl_sweep.preprocessing import batches_by_shape

    probs = np.zeros((len(images), net.output_shape[-1]), dtype=np.float32)
    for idx, batch in batches_by_shape(images, BATCH):
        probs[idx] = np.asarray(net.predict_on_batch(batch))
    return probs


def predict_files(net, paths: list[Path]) -> np.ndarray:
    """Class probabilities (len(paths) x 10), decoding each file."""
    from asl_sweep.data import decode

    return predict_arrays(net, [decode(Path(p)) for p in paths])


def predict_images(model_dir: str | Path, images: list[str]) -> list[tuple[str, int, float]]:
    """`asl-sweep predict`: (file, digit, confidence) per image file."""
    for p in map(Path, images):
        if p.is_dir():
            raise UserError(f"image {p} is a folder, not a file")
        if not p.is_file():
            raise UserError(f"image file not found: {p}")
    probs = predict_files(load_model(model_dir), [Path(p) for p in images])
    return [(path, int(row.argmax()), float(row.max())) for path, row in zip(images, probs)]


def evaluate(net, data_dir: str | Path, *, robustness: bool = False) -> dict[str, Any]:
    """Accuracy, per-class accuracy and confusion matrix on a folder in the dataset's layout; with
    `robustness`, also the accuracy under each change of the robustness suite, its mean and worst case."""
    from sklearn.metrics import confusion_matrix

    from asl_sweep.data import class_root, data_folder, decode, list_images
    from asl_sweep.preprocessing import CLASSES

    root = class_root(data_folder(data_dir))
    items = list_images(root)
    y = np.array([label for _, label in items])
    images = [decode(p) for p, _ in items]
    pred = predict_arrays(net, images).argmax(axis=1)
    cm = confusion_matrix(y, pred, labels=list(range(len(CLASSES))))
    per_class = {c: (float(cm[i, i] / cm[i].sum()) if cm[i].sum() else None) for i, c in enumerate(CLASSES)}
    extra: dict[str, Any] = {}
    if robustness:  # the same suite every sweep run is scored on, on this folder's photos
        from asl_sweep import robustness as suite

        extra["robustness"] = suite.served_accuracy(net, images, y)
        extra.update(suite.summarize(extra["robustness"]))
    return {**extra, "data_dir": str(root), "images": int(len(y)), "accuracy": float((pred == y).mean()),
            "per_class_accuracy": per_class, "confusion_matrix": cm.tolist(),
            "errors": [{"path": str(p), "true": int(t), "pred": int(q)}
                       for (p, t), q in zip(items, pred) if t != q]}


def evaluate_to_file(model_dir: str | Path, data_dir: str | Path, out: str | Path | None = None, *,
                     robustness: bool = False) -> tuple[dict[str, Any], Path]:
    """`asl-sweep evaluate`: the scores on a labelled folder, also written as JSON (default
    <model_dir>/evaluation.json); returns them and where they were written.

    Where the JSON goes is checked before the model is loaded or any image predicted, and the file is
    replaced atomically, so a bad `--out` costs nothing and an earlier evaluation is never half-overwritten."""
    from asl_sweep.data import atomic_file, check_folder

    out = Path(out) if out else model_file(model_dir).parent / "evaluation.json"
    check_folder(out.parent, f"output file {out}: folder")
    if out.is_dir():
        raise UserError(f"output file {out} is a folder; give a file name such as {out / 'evaluation.json'}")
    net = load_model(model_dir)
    result = evaluate(net, data_dir, robustness=robustness)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(out) as fh:
            fh.write(json.dumps({"model": str(model_file(model_dir)), **result}, indent=1).encode())
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    return result, out
