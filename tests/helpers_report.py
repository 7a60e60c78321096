"""Shared builders for the report/export/predict tests: synthetic ledgers, images and one tiny trained sweep.

Kept out of conftest.py (owned elsewhere); the trained sweep is built once per test session and reused.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tests import conftest

SWEEP_PARAMS = {
    "dropout": {"distribution": "uniform", "min": 0.1, "max": 0.5},
    "optimizer": {"values": ["adam", "sgd", "rmsprop"]},
    "learning_rate": {"distribution": "log_uniform_values", "min": 0.0001, "max": 0.01},
    "batch_norm": {"values": [True, False]},
    "epochs": {"value": 3},
}


def isolate(monkeypatch, tmp_path: Path) -> Path:
    """Offline wandb, a private ledger and cache, and the working directory in tmp."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("ASL_SWEEP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ASL_SWEEP_LEDGER", str(tmp_path / "ledger.db"))
    return tmp_path / "ledger.db"


def synthetic_sweep(ledger_path: Path, *, metric_name: str = "val_accuracy", goal: str = "maximize", runs: int = 12,
                    score: Callable[[dict[str, Any]], float] = lambda c: 0.2 + c["dropout"],
                    record_for: Callable[[dict[str, Any], float], str | None] | None = None,
                    extra_running: bool = False, run_cap: int | None = None) -> str:
    """A sweep whose finished runs score `score(config)` at their last (best) epoch, through the ledger's own API.

    With `extra_running`, one run is left running after one epoch and one running with no epoch at all.
    """
    from asl_sweep import controller
    from asl_sweep.ledger import Ledger

    ledger = Ledger(ledger_path)
    config = {"method": "random", "metric": {"name": metric_name, "goal": goal},
              "run_cap": runs + (2 if extra_running else 0), "parameters": SWEEP_PARAMS}
    if run_cap is not None:  # 0: no cap in the sweep, as the bench's lifted default sweep
        config["run_cap"] = run_cap or None
    sweep_id = ledger.create_sweep(config, "synthetic")
    for i in range(runs):
        run = controller.claim_next(ledger, sweep_id, "test")
        value = score(run.config)
        history = []
        for epoch in (1, 2, 3):
            # the metric's best epoch is the last one for either goal: maximize grows, minimize shrinks
            m = value * epoch / 3 if goal == "maximize" else value + (3 - epoch)
            row = {"epoch": epoch, "loss": 2.0 / epoch, "accuracy": 0.3 * epoch, "val_loss": 2.5 / epoch,
                   "val_accuracy": 0.25 * epoch, "learning_rate": 0.001, "epoch_time": 0.5, metric_name: m}
            ledger.append_epoch(run.id, row)
            history.append(row)
        state = "stopped" if i == 1 else "finished"
        record_path = record_for(run, value) if record_for else None
        ledger.finish_run(run.id, state, summary={"wall_time": 2.0 + i, metric_name: history[-1][metric_name]},
                          record_path=record_path)
    if extra_running:
        partial = controller.claim_next(ledger, sweep_id, "test")
        ledger.append_epoch(partial.id, {"epoch": 1, "loss": 2.0, "accuracy": 0.3, "val_loss": 2.6,
                                            "val_accuracy": 0.2, "learning_rate": 0.001, "epoch_time": 0.5})
        controller.claim_next(ledger, sweep_id, "test")
    ledger.close()
    return sweep_id


def write_images(root: Path, per_class: int = 8, size: int = 24) -> Path:
    """Ten learnable classes of patterned PNGs in `root/0..9`, named IMG_<n>.png, numbered per signer."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for digit in range(10):
        (root / str(digit)).mkdir(parents=True, exist_ok=True)
    for signer in range(per_class):
        for digit in range(10):
            img = np.zeros((size, size, 3), dtype=np.float32)
            img[..., digit % 3] = 60 + 19 * digit
            img[(digit * size) // 10:(digit * size) // 10 + 3, :, :] = 255  # a bar whose height encodes the digit
            img += rng.normal(0, 8, img.shape)
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / str(digit) / f"IMG_{signer * 10 + digit + 1000}.png")
    return root


TINY = {**conftest.TINY, "epochs": 2, "split": "random"}  # two epochs: the report draws curves
_TRAINED: dict[str, Any] = {}


def tiny_trained_sweep() -> dict[str, Any]:
    """A local sweep of two really trained tiny runs (built once per session): paths and ids.

    Returns {'dir', 'ledger', 'images', 'cache', 'sweep_id'}; tests point their env at these paths.
    """
    if _TRAINED:
        return _TRAINED
    from asl_sweep import controller
    from asl_sweep.data import DataCache
    from asl_sweep.ledger import Ledger
    from asl_sweep.train import execute

    base = Path(tempfile.mkdtemp(prefix="asl-sweep-tiny-"))
    atexit.register(shutil.rmtree, base, ignore_errors=True)
    images = write_images(base / "images")
    saved = {k: os.environ.get(k) for k in ("WANDB_MODE", "WANDB_DIR", "WANDB_SILENT", "ASL_SWEEP_CACHE_DIR")}
    os.environ.update({"WANDB_MODE": "offline", "WANDB_DIR": str(base), "WANDB_SILENT": "true",
                       "ASL_SWEEP_CACHE_DIR": str(base / "cache")})
    try:
        ledger = Ledger(base / "ledger.db")
        config = {"method": "grid", "metric": {"name": "val_accuracy", "goal": "maximize"},
                  "parameters": {**{k: {"value": v} for k, v in TINY.items()},
                                 "learning_rate": {"values": [0.01, 0.0001]}}}
        sweep_id = ledger.create_sweep(config, "tiny")
        cache = DataCache(str(images))
        while (run := controller.claim_next(ledger, sweep_id, "test")) is not None:
            reporter = controller.LedgerReporter(ledger, sweep_id, run)
            try:
                execute(run.config, cache, reporter=reporter, run_id=run.id, verbose=0)
            finally:
                reporter.close()
        ledger.close()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    _TRAINED.update(dir=base, ledger=base / "ledger.db", images=images, cache=base / "cache", sweep_id=sweep_id)
    return _TRAINED
