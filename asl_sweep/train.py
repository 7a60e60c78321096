"""Train one run: `wandb.init(config=...)`, build from `wandb.config`, fit, log, save, record.

This module is also the program a W&B sweep's `command` launches:
`python -m asl_sweep.train --key=value ...` (W&B's `${args}`), with the agent's environment
(`WANDB_SWEEP_ID` from W&B's agent, `WANDB_RUN_ID`, `WANDB_SWEEP_PARAM_PATH`, `WANDB_PROJECT`)
read by `wandb.init` itself. A local sweep's runs get `ASL_SWEEP_SWEEP_ID` instead of
`WANDB_SWEEP_ID`: W&B's servers do not know a local id, and `wandb sync` would be refused.
Offline `.wandb` files are binary, so every run also writes `result.json` beside its model.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

from asl_sweep import artifacts, controller, runtime
from asl_sweep.config import Config, from_mapping, inactive_keys, parse_overrides, read_yaml
from asl_sweep.data import DataCache
from asl_sweep.preprocessing import CLASSES, preprocess
from asl_sweep.records import INTERRUPTED, STOP_REASON, RunRecord
from asl_sweep.state import RunState

EXAMPLE_IMAGES = 24  # each wandb.Image costs ~2 ms to make and log, per run
RESULT_FILE = "result.json"
MODEL_FILE = "model.keras"
log = logging.getLogger(__name__)


class Reporter(Protocol):
    """Receives a run's progress (the local sweep ledger implements it)."""

    def epoch(self, row: dict[str, float]) -> bool:
        """Record one epoch; return True when the run should stop early."""

    def finish(self, record: RunRecord) -> None:
        """Record the run's final state and summary."""


class StopOnSigterm:
    """A run under W&B's agent: its hyperband stop is SIGTERM (then SIGKILL once `WANDB_AGENT_KILL_DELAY`,
    30 s, has passed). Killed mid-epoch the run records nothing and W&B marks it crashed, which the engine
    scores as the worst value; ended at the epoch boundary with exit code 0 it is `finished` (and
    `stopped`) with its best value so far, which is what the local controller tells the engine too."""

    sweep_id = None

    def __init__(self) -> None:
        controller.watch_sigterm()

    def epoch(self, row: dict[str, float]) -> bool:
        return controller.PREEMPTED.is_set()

    def finish(self, record: RunRecord) -> None:
        """Nothing to record: W&B's run is the record."""


def example_indices(correct, count: int, seed: int):
    """Which validation images to show, in table order: mistakes first (what a user looks for; a
    random sample when there are more than `count`), then a random sample of correct ones."""
    import numpy as np

    rng = np.random.default_rng(seed)
    wrong, right = np.flatnonzero(~correct), np.flatnonzero(correct)
    wrong = np.sort(rng.choice(wrong, size=min(count, len(wrong)), replace=False))
    fill = np.sort(rng.choice(right, size=min(count - len(wrong), len(right)), replace=False))
    return np.concatenate([wrong, fill]).astype(int)


def probabilities(net, x, batch: int = 256):
    """Digit probabilities (a hand-aware network's 20 outputs folded to 10) from eager calls in batches:
    `net.predict` would trace a new tf.function per run (~0.3 s of overhead)."""
    import numpy as np

    from asl_sweep.model import digits

    return digits(np.concatenate([np.asarray(net(x[i:i + batch], training=False)) for i in range(0, len(x), batch)]))


def _epoch_callback(run, reporter: Reporter | None, history: list[dict[str, float]], robust: tuple[Any, Any] | None):
    """Per epoch: time it, read the learning rate, score the robustness estimate (`robust`: the mixed
    set and its labels; None without `robust_estimate`) and `val_score`, log plain keys for the sweep,
    ask to stop."""
    import keras

    class EpochCallback(keras.callbacks.Callback):
        stopped = False
        robust_time = 0.0

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs if logs is not None else {}
            epoch_time = time.perf_counter() - self._t0
            if robust is not None:  # into `logs`, so that best-epoch restore can monitor val_score
                t0 = time.perf_counter()
                mixed, labels = robust
                logs["val_robust_accuracy"] = float((probabilities(self.model, mixed).argmax(axis=1) == labels).mean())
                logs["val_score"] = (float(logs.get("val_accuracy", 0.0)) + logs["val_robust_accuracy"]) / 2
                self.robust_time += time.perf_counter() - t0
            row = {k: float(v) for k, v in logs.items() if k != "learning_rate"}
            row["epoch"] = epoch + 1
            row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            row["epoch_time"] = epoch_time
            history.append(row)
            run.log(row, commit=False)
            if reporter is not None and reporter.epoch(row):
                self.stopped = True
                self.model.stop_training = True

    return EpochCallback()


def fit(cfg: Config, net, train_data: dict[str, Any], x_va, y_va, run, reporter: Reporter | None,
        verbose: int | str, robust: tuple[Any, Any] | None) -> tuple[list[dict[str, float]], bool, float, float, bool]:
    """Fit on `train_data` (`feed.training_data`) with per-epoch logging and stop requests; returns (history,
    stopped early, fit seconds, of which the robustness estimate took seconds, interrupted by Ctrl-C).

    The best epoch's weights by `cfg.checkpoint_metric` are kept (EarlyStopping with patience=epochs never
    stops a run), so the saved model is the one that metric describes, not a noisier last epoch. Ctrl-C
    after at least one epoch ends the fit with those weights too, so that the run can still be saved."""
    import keras
    import numpy as np
    from wandb.integration.keras import WandbMetricsLogger

    from asl_sweep.model import outputs

    history: list[dict[str, float]] = []
    epoch_cb = _epoch_callback(run, reporter, history, robust)
    best_weights = keras.callbacks.EarlyStopping(monitor=cfg.checkpoint_metric, mode="max", patience=cfg.epochs,
                                                 restore_best_weights=True)
    t_va = np.eye(outputs(cfg), dtype=np.float32)[y_va]  # the photos as photographed
    t_fit = time.perf_counter()
    interrupted = False
    try:
        net.fit(
            **train_data, validation_data=(x_va, t_va), epochs=cfg.epochs, verbose=verbose,
            callbacks=[epoch_cb, keras.callbacks.TerminateOnNaN(), best_weights, WandbMetricsLogger()],
        )
    except KeyboardInterrupt:
        if not history:  # no epoch ended: nothing worth saving
            raise
        interrupted = True
        best_weights.on_train_end()  # what fit would have done at its end: the best epoch's weights
        log.warning("%s after epoch %d: saving run %s's best-so-far model and record (Ctrl-C again aborts "
                    "the save)", INTERRUPTED, len(history), run.id)
    return history, epoch_cb.stopped, time.perf_counter() - t_fit, epoch_cb.robust_time, interrupted


def final_state(history: list[dict[str, float]], stopped: bool) -> RunState:
    """Failed when the loss diverged, stopped when the sweep stopped it, else finished."""
    if history and not math.isfinite(history[-1].get("loss", float("nan"))):
        return RunState.FAILED
    return RunState.STOPPED if stopped else RunState.FINISHED


def validation_probabilities(net, x_va, state: RunState):
    """Digit probabilities for the validation images (zeros for a failed run)."""
    import numpy as np

    return np.zeros((len(x_va), len(CLASSES))) if state == RunState.FAILED else probabilities(net, x_va)


def log_robustness(run, per_change: dict[str, float]) -> None:
    """The suite's table as W&B media (its mean and worst case go in the summary)."""
    import wandb

    from asl_sweep.robustness import SUITE

    table = wandb.Table(columns=["change", "what a user meets", "accuracy"])
    for name, acc in per_change.items():
        table.add_data(name, SUITE[name][0], acc)
    run.log({"robustness": table})


def run_summary(cfg: Config, state: RunState, history: list[dict[str, float]], correct, net, fit_time: float,
                train_images: int) -> dict[str, Any]:
    """The run's summary (W&B's run.summary and the ledger's): the best validation accuracy, the epoch the
    saved model comes from (best by `cfg.checkpoint_metric`), final numbers."""
    from asl_sweep.ranking import best_epoch

    best = best_epoch(history, "val_accuracy", "maximize")
    saved = best_epoch(history, cfg.checkpoint_metric, "maximize") or best
    last = history[-1].get("val_accuracy") if history else None
    return {
        "state": state.value,
        "epochs_run": len(history),
        "best_val_accuracy": best["val_accuracy"] if best else None,
        "best_epoch": saved["epoch"] if saved else None,
        "val_accuracy": float(correct.mean()) if state != RunState.FAILED else None,
        "last_epoch_val_accuracy": last if last is not None and math.isfinite(last) else None,
        "val_loss": history[-1].get("val_loss") if history else None,
        "param_count": int(net.count_params()),
        "fit_time": fit_time,
        "train_images": train_images,
        "val_images": len(correct),
        # the config keys this run's model does not depend on: report and importance do not credit them
        "inactive_params": ",".join(inactive_keys(cfg.to_dict())),
    }


def log_examples(run, dataset, va, y_va, preds, conf, seed: int) -> None:
    """The example table (mistakes first) and the confusion matrix, as W&B media."""
    import wandb

    table = wandb.Table(columns=["image", "true", "predicted", "confidence", "file"])
    for i in example_indices(preds == y_va, EXAMPLE_IMAGES, seed):
        table.add_data(wandb.Image(dataset.x[va[i]].astype("uint8")), int(y_va[i]), int(preds[i]), float(conf[i]),
                       Path(dataset.paths[va[i]]).name)
    run.log({
        "val_predictions": table,
        "confusion_matrix": wandb.plot.confusion_matrix(
            y_true=y_va.tolist(), preds=preds.tolist(), class_names=list(CLASSES)),
    })


def train(cfg: Config, dataset, run, *, reporter: Reporter | None = None, verbose: int | str = "auto",
          split: tuple[Any, Any] | None = None, inputs=None, suite: dict[str, Any] | None = None,
          bank=None) -> RunRecord:
    """Fit `cfg`'s model on `dataset` (split as configured, or by the given indices; `inputs` are the
    preprocessed images, `suite` the preprocessed robustness suite and `bank` the preprocessed backgrounds
    when already at hand), log to `run`, score the robustness suite, save the servable model; return the record."""
    from sklearn.metrics import confusion_matrix

    from asl_sweep import data, feed, robustness
    from asl_sweep import model as model_lib

    t_start = time.perf_counter()
    tr, va = split if split is not None else data.split(dataset, cfg.split, cfg.val_fraction, cfg.seed, cfg.fold)
    pixels = inputs if inputs is not None else preprocess(cfg, dataset.x)
    y_va = dataset.y[va]
    t_suite = time.perf_counter()
    if suite is None:
        suite = robustness.preprocessed_suite(cfg, [data.decode(Path(dataset.paths[i])) for i in va])
    robust = (robustness.mixed_set(suite), y_va) if cfg.robust_estimate else None
    robust_time = time.perf_counter() - t_suite
    if bank is None and cfg.background > 0:
        bank = feed.bank(cfg)
    net = model_lib.compiled_model(cfg, len(tr))
    train_data = feed.training_data(cfg, pixels[tr], dataset.masks[tr], dataset.y[tr], bank)
    history, stopped, fit_time, epoch_robust_time, interrupted = fit(cfg, net, train_data, pixels[va], y_va, run,
                                                                      reporter, verbose, robust)
    state = final_state(history, stopped or interrupted)
    probs = validation_probabilities(net, pixels[va], state)
    preds, conf = probs.argmax(axis=1), probs.max(axis=1)
    summary = run_summary(cfg, state, history, preds == y_va, net, fit_time, len(tr))
    files = Path(run.dir)
    model_path = files / MODEL_FILE
    per_change: dict[str, float] = {}
    if state != RunState.FAILED:
        if not stopped or interrupted:  # the suite is for candidates: a run the sweep stopped is scored by export if it wins
            t0 = time.perf_counter()
            per_change = robustness.accuracy_per_change(lambda batch: probabilities(net, batch), suite, y_va)
            summary.update(robustness.summarize(per_change))
            robust_time += time.perf_counter() - t0
            log_robustness(run, per_change)
        model_lib.build(cfg, net).save(model_path)
        log_examples(run, dataset, va, y_va, preds, conf, cfg.seed)
    summary["robust_time"] = robust_time + epoch_robust_time
    summary["wall_time"] = time.perf_counter() - t_start
    if interrupted:
        summary[STOP_REASON] = INTERRUPTED
    run.summary.update({k: v for k, v in summary.items() if v is not None})
    record: RunRecord = {
        "run_id": run.id,
        "sweep_id": (getattr(reporter, "sweep_id", None) or os.environ.get(controller.LOCAL_SWEEP_ENV)
                     or os.environ.get("WANDB_SWEEP_ID")),
        "state": state,
        "config": cfg.to_dict(),
        "history": history,
        "summary": summary,
        "confusion_matrix": confusion_matrix(y_va, preds, labels=list(range(len(CLASSES)))).tolist(),
        "robustness": per_change,
        "val_predictions": [
            {"path": dataset.paths[j], "true": int(t), "pred": int(p), "confidence": round(float(c), 4)}
            for j, t, p, c in zip(va, y_va, preds, conf)
        ],
        "paths": {
            "run_dir": str(files.parent),
            "model": str(model_path) if state != RunState.FAILED else None,
            "record": str(files / RESULT_FILE),
        },
    }
    (files / RESULT_FILE).write_text(json.dumps(record, indent=1))
    artifacts.log_model(run, record)
    if reporter is not None:
        reporter.finish(record)
    if interrupted:  # saved: now end as Ctrl-C ends a run (wandb exit code 255, exit 130, the agent stops)
        log.warning("run %s saved: %s", run.id, files / RESULT_FILE)
        raise KeyboardInterrupt
    return record


@functools.cache
def installed_packages() -> str:
    """`requirements.txt` as wandb writes it (name==version per line), read once per process."""
    from wandb.util import working_set

    return "".join(sorted(f"{d.key}=={d.version}\n" for d in working_set()))


def execute(
    values: Mapping[str, Any],
    data_cache: DataCache,
    *,
    reporter: Reporter | None = None,
    run_id: str | None = None,
    verbose: int | str = "auto",
    project: str | None = None,
    entity: str | None = None,
) -> RunRecord:
    """One run's whole life: `wandb.init(config=values)` -> Config from `wandb.config` -> train -> finish.
    `project`/`entity` default to W&B's environment variables, as a run launched by `wandb agent` reads them."""
    import wandb

    from asl_sweep.sweepfile import wandb_target

    initial = from_mapping(values, source="config")
    project, entity = wandb_target({}, project, entity)
    run = wandb.init(
        project=project,
        entity=entity,
        config=initial.to_dict(),
        id=run_id,
        group=getattr(reporter, "sweep_id", None) or os.environ.get(controller.LOCAL_SWEEP_ENV),
        dir=os.environ.get("WANDB_DIR"),
        reinit="finish_previous",
        # wandb lists the installed packages on every init (~0.1 s of metadata parsing); the list
        # cannot change within a process, so it is read once and written to each run below.
        settings=wandb.Settings(x_save_requirements=False),
    )
    try:
        (Path(run.dir) / "requirements.txt").write_text(installed_packages())
        cfg = from_mapping(dict(run.config), source="wandb.config")
        dataset = data_cache.get(cfg)
        tr_va = data_cache.split(cfg, dataset)
        record = train(cfg, dataset, run, reporter=reporter, verbose=verbose, split=tr_va,
                       inputs=data_cache.inputs(cfg, dataset), suite=data_cache.suite(cfg, dataset, tr_va[1]),
                       bank=data_cache.bank(cfg))
    except KeyboardInterrupt:
        run.finish(exit_code=255)
        raise
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish(exit_code=1 if record["state"] == RunState.FAILED else 0)
    return record


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file of config values (flat, or W&B config-defaults form)")
    parser.add_argument("--data-dir", help="dataset folder (default: $ASL_SWEEP_DATA_DIR, else the download cache)")
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show TensorFlow/wandb logs and full tracebacks")


def run_from_args(args: argparse.Namespace, overrides: Sequence[str]) -> RunRecord:
    """`asl-sweep train` and `python -m asl_sweep.train`: defaults <- --config <- --key=value."""
    values: dict[str, Any] = read_yaml(args.config) if args.config else {}
    values.update(parse_overrides(overrides))
    cfg = from_mapping(values, source=args.config or "command line")
    runtime.setup(debug=getattr(args, "debug", False), tensorflow=True)
    from asl_sweep import data, model

    data.locate(args.data_dir)  # what can be checked before a W&B run starts is checked first
    model.check_memory(cfg)

    reporter = controller.reporter_from_env() or (StopOnSigterm() if os.environ.get("WANDB_SWEEP_ID") else None)
    with reporter if isinstance(reporter, contextlib.AbstractContextManager) else contextlib.nullcontext():
        record = execute(values, DataCache(args.data_dir), reporter=reporter,
                         run_id=os.environ.get("WANDB_RUN_ID"), verbose="auto")
    return record


def main(argv: Sequence[str] | None = None) -> int:
    from asl_sweep import console

    parser = console.OneLineParser(prog="python -m asl_sweep.train", description="Train one run.", allow_abbrev=False)
    add_train_arguments(parser)
    args, rest = parser.parse_known_args(argv)
    console.install(debug=getattr(args, "debug", False))
    return console.guarded(lambda: console.report_run(run_from_args(args, rest)), debug=getattr(args, "debug", False))


if __name__ == "__main__":
    sys.exit(main())
