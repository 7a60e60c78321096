"""What `fit` trains on: the preprocessed photos as arrays, or, with `background`, batches in which a
share of the photos shows the masked hand in front of a new background every epoch.

Compositing works on the classifier's inputs, after preprocessing: resize (identity at the model's own
size), grayscale and rescale are linear per pixel and so is pasting (alpha * hand + (1 - alpha) *
background, bilinear placement), so compositing preprocessed photos onto preprocessed backgrounds gives
exactly what preprocessing the composite would, with no per-batch model call. A whole epoch is composited
at once (vectorized), when the epoch begins.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np

from asl_sweep import backgrounds
from asl_sweep.config import Config
from asl_sweep.model import targets
from asl_sweep.preprocessing import preprocess

BANK_SIZE = 3000  # backgrounds per agent and input setting (made once: its cost is measured in docs/backgrounds.md); each epoch draws from it


class Composited(keras.utils.PyDataset):
    """Batches of (pixels, one-hot targets), re-composited each epoch; the order is shuffled each epoch."""

    def __init__(self, cfg: Config, pixels: np.ndarray, masks: np.ndarray, y: np.ndarray, bank: np.ndarray) -> None:
        super().__init__()
        self.cfg, self.bank = cfg, bank
        self.pixels, self.targets = targets(cfg, pixels, y)
        self.masks = targets(cfg, masks, y)[0]
        self.rng = np.random.default_rng([cfg.seed, 1])
        self.composite()
        self.fresh = True  # Keras reads a batch for shapes before the first epoch: epoch 0 is made here

    def composite(self) -> None:
        order = self.rng.permutation(len(self.pixels))
        self.x = backgrounds.composite(self.pixels[order], self.masks[order], self.bank, self.rng, self.cfg.background,
                                       backgrounds.MIN_SCALE)
        self.t = self.targets[order]

    def __len__(self) -> int:
        return math.ceil(len(self.pixels) / self.cfg.batch_size)

    def on_epoch_begin(self) -> None:
        if not self.fresh:
            self.composite()
        self.fresh = False

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        part = slice(i * self.cfg.batch_size, (i + 1) * self.cfg.batch_size)
        return self.x[part], self.t[part]


def training_data(cfg: Config, pixels: np.ndarray, masks: np.ndarray, y: np.ndarray,
                  bank: np.ndarray | None) -> dict[str, Any]:
    """`fit`'s keyword arguments for the training data: arrays (photos as both hands with `hand_aware`),
    or a `Composited` sequence when `cfg.background` > 0 (`bank`: preprocessed backgrounds)."""
    if cfg.background > 0:
        return {"x": Composited(cfg, pixels, masks, y, bank)}
    x, t = targets(cfg, pixels, y)
    return {"x": x, "y": t, "batch_size": cfg.batch_size, "shuffle": True}


def bank(cfg: Config) -> np.ndarray:
    """The preprocessed background bank for `cfg`'s input size and colour (fixed seed: shared by runs)."""
    return preprocess(cfg, backgrounds.bank(BANK_SIZE, cfg.image_size, seed=0))
