"""`asl-sweep export`: the sweep's best run as a folder a person can use without the sweep.

The folder holds the model (which embeds its preprocessing), the config that re-trains it with
`asl-sweep train --config`, its metrics, and a model card. `--retrain` fits the winning config on
train+validation together: the final model then has seen every image, and the card says so. A winner
that the sweep stopped early was not scored on the robustness suite in training; export scores it.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import shutil
from pathlib import Path
from typing import Any, Callable

from asl_sweep.config import Config, from_mapping, write_yaml
from asl_sweep.data import check_folder, fsync
from asl_sweep.errors import UserError

log = logging.getLogger(__name__)
FILES = ("model.keras", "config.yaml", "metrics.json", "README.md")


def is_export(folder: Path) -> bool:
    """A folder an earlier export wrote: plain files only, among them a model and its metrics."""
    entries = list(folder.iterdir())
    return (all(p.is_file() and not p.is_symlink() for p in entries)
            and {"model.keras", "metrics.json"} <= {p.name for p in entries})


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse to mix an export into a folder that already holds something, unless forced; even forced,
    replace only a previous export, never a folder of other things (`--out .` or `--out ~`)."""
    check_folder(out, "output folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        raise UserError(f"output folder {out} is not empty; pass --force to overwrite it (make export FORCE=1)")
    if not is_export(out):
        raise UserError(f"output folder {out} is not a previous export (model.keras and metrics.json, no "
                        "subfolders); refusing to replace it, even with --force")


def write_folder(out: Path, fill: Callable[[Path], None]) -> None:
    """Build the export in a new sibling folder (`fill` writes into it), flushed to disk, then swap it in
    whole: a failure midway leaves the previous export as it was, and a forced export leaves none of the
    previous export's files beside the new ones."""
    out = out.resolve()
    token = secrets.token_hex(4)
    new, old = out.parent / f".{out.name}.new-{token}", out.parent / f".{out.name}.old-{token}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        new.mkdir()
        fill(new)
        for p in new.iterdir():
            fsync(p)
        fsync(new)
        if out.exists():
            out.rename(old)
        new.rename(out)
    except BaseException as exc:
        if old.exists() and not out.exists():
            old.rename(out)
        shutil.rmtree(new, ignore_errors=True)
        if isinstance(exc, OSError):
            raise UserError(f"cannot write the export to {out}: {exc.strerror or exc}; "
                            "any previous export there is unchanged") from None
        raise
    fsync(out.parent)
    shutil.rmtree(old, ignore_errors=True)


def retrain_all(cfg: Config, data_dir: str | None) -> tuple[Any, list[dict[str, float]], int]:
    """Fit `cfg`'s model on every image (train+validation), same optimizer, loss and epochs as the sweep run.

    Returns (model, per-epoch history, number of images).
    """
    import keras

    from asl_sweep import feed
    from asl_sweep import model as model_lib
    from asl_sweep.data import DataCache

    cache = DataCache(data_dir)
    dataset = cache.get(cfg)
    net = model_lib.compiled_model(cfg, len(dataset.y))
    train_data = feed.training_data(cfg, cache.inputs(cfg, dataset), dataset.masks, dataset.y, cache.bank(cfg))
    fit = net.fit(**train_data, epochs=cfg.epochs, callbacks=[keras.callbacks.TerminateOnNaN()], verbose=0)
    history = [{"epoch": i + 1, **{k: float(v[i]) for k, v in fit.history.items()}}
               for i in range(len(fit.history.get("loss", [])))]
    if not history or not math.isfinite(history[-1]["loss"]):
        raise UserError("re-training on train+validation diverged (loss is not finite); export without --retrain")
    return model_lib.build(cfg, net), history, int(len(dataset.y))


def suite_scores(cfg: Config, served, data_dir: str | None) -> dict[str, float]:
    """The robustness suite on the run's own validation photos, for a winner that the sweep stopped:
    training skips the suite for stopped runs (it is for candidates), so export scores the one that wins."""
    from asl_sweep import robustness
    from asl_sweep.data import DataCache, decode

    cache = DataCache(data_dir)
    dataset = cache.get(cfg)
    _, va = cache.split(cfg, dataset)
    log.info("scoring the robustness suite for the winner, which the sweep stopped before scoring it")
    return robustness.served_accuracy(served, [decode(Path(dataset.paths[i])) for i in va],
                                      dataset.y[va])


def robustness_section(per_change: dict[str, float]) -> list[str]:
    """The model card's table: accuracy on the validation signers' photos under each everyday change."""
    from asl_sweep.robustness import SUITE, summarize

    if not per_change:
        return []
    s = summarize(per_change)
    return [
        "## Robustness: photos not taken like the dataset's",
        "",
        f"Validation photos under everyday changes (`asl-sweep evaluate --robustness` measures any labelled folder): "
        f"mean {s['val_robust_accuracy']:.4f}, worst {s['val_robust_worst']:.4f} ({s['val_robust_worst_change']})"
        + (f"; the hand in front of other backgrounds (`bg_*`): mean {s['val_background_accuracy']:.4f}, "
           f"worst {s['val_background_worst']:.4f}." if "val_background_accuracy" in s else "."),
        "",
        "| change | what a user meets | accuracy |",
        "|---|---|---|",
        *[f"| {name} | {SUITE[name][0] if name in SUITE else ''} | {acc:.4f} |" for name, acc in per_change.items()],
        "",
    ]


def model_card(meta: dict[str, Any], cfg: Config, swept: list[str]) -> str:
    """README.md for the export folder: what the model is, how it was chosen and trained, how to use it."""
    s = meta["summary"]
    m = meta["metric"]
    split = ("grouped by signer (no person's hand in both train and validation)" if cfg.split == "signer"
             else "random, stratified by digit")
    lines = [
        f"# ASL digit classifier — sweep {meta['sweep_id']}, run {meta['run_id']}",
        "",
        "A small Keras CNN that reads a photo of a hand signing a digit in American Sign Language "
        "and returns the digit 0-9 with a confidence.",
        "",
        "## Data",
        "",
        "Sign Language Digits dataset (ardamavi/Sign-Language-Digits-Dataset): colour photos of hands, "
        "one folder per digit `Dataset/0..9`.",
        f"Validation split: {split}, {cfg.val_fraction:.0%} of the images (seed {cfg.seed}, fold {cfg.fold}); "
        f"{s.get('train_images', '?')} training and {s.get('val_images', '?')} validation images"
        + (f", at most {cfg.max_per_class} per digit" if cfg.max_per_class else "") + ".",
        "",
        "## Selection and metrics",
        "",
        f"Chosen as the best of the sweep's runs by **{m['name']}** ({m['goal']}): "
        f"best {m['best']:.4f} at epoch {meta['best'].get('epoch', '?')}"
        + (f", final {m['final']:.4f}" if m["final"] is not None else "") + f" after {len(meta['history'])} epochs "
        f"({meta['state']}), wall time {meta['wall_time'] or 0:.1f} s. `model.keras` holds the best epoch's "
        "weights (restored at the end of the run), so it scores the best value; that value was selected on the "
        "validation set and is slightly optimistic. All numbers are in `metrics.json`.",
        "",
        *robustness_section(meta.get("robustness") or {}),
    ]
    if meta.get("retrain"):
        r = meta["retrain"]
        lines += [
            "**Re-trained on train+validation.** `model.keras` was fitted with the winning config on all "
            f"{r['images']} images for {r['epochs']} epochs (final training accuracy {r['final_accuracy']:.4f}), "
            "so it has no held-out score of its own: the validation numbers above are the sweep run's, "
            "the best estimate of how this config generalises.",
            "",
        ]
    lines += [
        "## Hyperparameters",
        "",
        "`config.yaml` holds every value; `asl-sweep train --config config.yaml` re-trains the sweep run "
        "(same split, same seed). Swept in this sweep (marked *):",
        "",
        "| key | value |",
        "|---|---|",
        *[f"| {k}{' *' if k in swept else ''} | {v} |" for k, v in cfg.to_dict().items()],
        "",
        "## How to use",
        "",
        "```sh",
        "asl-sweep predict . photo1.jpg photo2.png           # digit and confidence per file",
        "asl-sweep evaluate . --data-dir path/to/Dataset     # accuracy and confusion matrix on a labelled folder",
        "```",
        "",
        "```python",
        "import keras, numpy as np",
        "from PIL import Image",
        "model = keras.saving.load_model('model.keras', safe_mode=True, compile=False)",
        "x = np.asarray(Image.open('photo.jpg').convert('RGB'), dtype='float32')[None]  # any size, 0..255",
        "probs = model.predict(x)[0]; digit = int(probs.argmax())",
        "```",
        "",
        f"The model resizes to {cfg.image_size}x{cfg.image_size}"
        + (", converts to grayscale" if cfg.color_mode == "grayscale" else "")
        + " and rescales itself: feed raw RGB arrays (float, 0..255) of the photo's own size; images in one "
        "batch must share a size. It uses only built-in Keras layers and loads in safe mode.",
        "",
        "## Limitations",
        "",
        "Trained on about two thousand studio-like photos of a few hundred students' right hands on a plain "
        "background; other backgrounds, lighting, skin tones and left hands are not represented, and any "
        "image is forced into one of the ten digits (there is no 'not a digit' answer).",
        "",
    ]
    return "\n".join(lines)


def export_best(sweep_id: str, out: str | Path, *, force: bool = False, retrain: bool = False,
                data_dir: str | None = None, link: str | None = None) -> dict[str, Any]:
    """`asl-sweep export`: write the sweep's best run to `out`; returns what `metrics.json` holds, and with
    `link` (a W&B sweep) where in W&B's model registry the winner's model artifact was linked."""
    from asl_sweep import artifacts
    from asl_sweep import model as model_lib
    from asl_sweep.ledger import is_local_sweep
    from asl_sweep.ranking import best_epoch, best_value
    from asl_sweep.results import load_sweep, read_record, swept_params
    from asl_sweep.state import RunState

    out = Path(out)
    check_out_dir(out, force)
    on_wandb = not is_local_sweep(sweep_id)  # its winner's model comes from its artifact
    if link and not on_wandb:
        raise UserError(f"--link puts a W&B run's model in W&B's registry, and {sweep_id} is a local sweep: upload it "
                        f"first (asl-sweep sync {sweep_id}), then export its W&B sweep with --link")
    data = load_sweep(sweep_id, with_model=not on_wandb)
    if data.best is None:
        if data.passed_over:
            first = data.passed_over[0]
            raise UserError(f"no run of sweep {sweep_id} saved a model: its best, run #{first.number} {first.id}, "
                            f"{first.state} before saving one ({first.error or 'no reason recorded'})")
        raise UserError(f"sweep {sweep_id} has no run with {data.metric_name} yet; nothing to export")
    best = data.best
    record = read_record(best)
    if record is None and best.state == RunState.RUNNING:
        raise UserError(f"best run {best.id} (#{best.number}) is still running on {best.agent or 'an agent'}; "
                        f"export it when it ends (asl-sweep status {sweep_id})")
    if record is None:
        raise UserError(f"best run {best.id} (#{best.number}, {best.state}) has no result record yet: not in "
                        f"{data.source}, nor a result.json on this machine")
    if on_wandb:
        record["paths"]["model"] = artifacts.winner_model(best.remote, Path(best.record_path).parent)
    model_path = (record.get("paths") or {}).get("model")
    if not model_path or not Path(model_path).is_file():
        raise UserError(f"best run {best.id} has no saved model (expected at {model_path})")
    cfg = from_mapping(record["config"], source=f"run {best.id}'s record")
    served = model_lib.load(model_path)  # refuse to export a file that would not load in safe mode

    history = record.get("history") or best.history
    best_row = best_epoch(history, data.metric_name, data.goal) or {}
    last = history[-1] if history else {}
    meta: dict[str, Any] = {
        "sweep_id": data.sweep_id, "run_id": best.id, "state": record.get("state", best.state),
        "source": data.source,
        "metric": {"name": data.metric_name, "goal": data.goal, "best": best_row.get(data.metric_name),
                   "final": last.get(data.metric_name)},
        "best": best_row, "final": last, "summary": record.get("summary") or {},
        "wall_time": (record.get("summary") or {}).get("wall_time"), "history": history, "retrain": None,
        "robustness": record.get("robustness") or (suite_scores(cfg, served, data_dir)
                                                    if record.get("state", best.state) == RunState.STOPPED else {}),
        "passed_over": [{"run_id": r.id, "number": r.number, "state": str(r.state), "reason": r.error,
                         "value": best_value(r, data.metric_name, data.goal)} for r in data.passed_over],
    }
    retrained = None
    if retrain:
        retrained, re_history, images = retrain_all(cfg, data_dir)
        meta["retrain"] = {"images": images, "epochs": len(re_history), "history": re_history,
                           "final_accuracy": re_history[-1].get("accuracy"), "final_loss": re_history[-1]["loss"]}

    def fill(folder: Path) -> None:
        if retrained is not None:
            retrained.save(folder / "model.keras")
        else:
            shutil.copyfile(model_path, folder / "model.keras")
        write_yaml(cfg, folder / "config.yaml")
        (folder / "metrics.json").write_text(json.dumps(meta, indent=1))
        (folder / "README.md").write_text(model_card(meta, cfg, swept_params(data.config)))

    write_folder(out, fill)
    if link:
        meta["linked"] = artifacts.link_model(best.remote, link)
    return meta
