"""`asl-sweep predict` and `asl-sweep evaluate`: use an exported model on raw image files.

The model resizes and converts colour itself, so images go in as decoded RGB float arrays of their
own size; images that share a size are predicted together, in bounded batches.
"""

from __future__ import annotations

import argparse
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


def predict_files(net, paths: list[Path]) -> np.ndarray:
    """Class probabilities (len(paths) x 10), decoding each file and batching images of the same size."""
    from asl_sweep.data import batches_by_shape, decode

    images = [decode(Path(p)) for p in paths]
    probs = np.zeros((len(images), net.output_shape[-1]), dtype=np.float32)
    for idx, batch in batches_by_shape(images, BATCH):
        probs[idx] = np.asarray(net.predict_on_batch(batch))
    return probs


def predict_cmd(args: argparse.Namespace) -> int:
    """`asl-sweep predict DIR IMAGE...`: one line per file, digit and confidence."""
    for p in map(Path, args.images):
        if p.is_dir():
            raise UserError(f"image {p} is a folder, not a file")
        if not p.is_file():
            raise UserError(f"image file not found: {p}")
    net = load_model(args.model_dir)
    probs = predict_files(net, [Path(p) for p in args.images])
    width = max(len(p) for p in args.images)
    for path, row in zip(args.images, probs):
        print(f"{path:<{width}}  digit {int(row.argmax())}  confidence {float(row.max()):.3f}")
    return 0


def evaluate(net, data_dir: str | Path) -> dict[str, Any]:
    """Accuracy, per-class accuracy and confusion matrix on a folder in the dataset's layout."""
    from sklearn.metrics import confusion_matrix

    from asl_sweep.data import CLASSES, class_root, data_folder, list_images

    root = class_root(data_folder(data_dir))
    items = list_images(root)
    y = np.array([label for _, label in items])
    pred = predict_files(net, [p for p, _ in items]).argmax(axis=1)
    cm = confusion_matrix(y, pred, labels=list(range(len(CLASSES))))
    per_class = {c: (float(cm[i, i] / cm[i].sum()) if cm[i].sum() else None) for i, c in enumerate(CLASSES)}
    return {"data_dir": str(root), "images": int(len(y)), "accuracy": float((pred == y).mean()),
            "per_class_accuracy": per_class, "confusion_matrix": cm.tolist(),
            "errors": [{"path": str(p), "true": int(t), "pred": int(q)}
                       for (p, t), q in zip(items, pred) if t != q]}


def evaluate_cmd(args: argparse.Namespace) -> int:
    """`asl-sweep evaluate DIR --data-dir PATH [--out FILE]`: print the scores and write them as JSON.

    Where the JSON goes is checked before the model is loaded or any image predicted, and the file is
    replaced atomically, so a bad `--out` costs nothing and an earlier evaluation is never half-overwritten."""
    from asl_sweep.data import atomic_file, check_folder

    out = Path(args.out) if args.out else model_file(args.model_dir).parent / "evaluation.json"
    check_folder(out.parent, f"output file {out}: folder")
    if out.is_dir():
        raise UserError(f"output file {out} is a folder; give a file name such as {out / 'evaluation.json'}")
    net = load_model(args.model_dir)
    result = evaluate(net, args.data_dir)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(out) as fh:
            fh.write(json.dumps({"model": str(model_file(args.model_dir)), **result}, indent=1).encode())
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    print(f"{result['images']} images in {result['data_dir']}: accuracy {result['accuracy']:.4f}")
    print("per class: " + "  ".join(f"{c}:{'-' if v is None else f'{v:.2f}'}"
                                    for c, v in result["per_class_accuracy"].items()))
    print("confusion matrix (rows true 0-9, columns predicted 0-9):")
    for i, row in enumerate(result["confusion_matrix"]):
        print(f"  {i} " + " ".join(f"{v:4d}" for v in row))
    print(f"written: {out}")
    return 0
