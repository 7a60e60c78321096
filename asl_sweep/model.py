"""Build the CNN from a Config, in two parts: a fixed preprocessor (`preprocessing`: resize, grayscale,
rescale) and the trainable classifier. Training fits the classifier on images preprocessed once; the saved
model chains both, so a `.keras` file takes raw RGB images of any size, and only built-in layers
are used, so it loads in Keras' safe mode with no custom objects."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers

from asl_sweep.config import Config
from asl_sweep.errors import UserError, one_line
from asl_sweep.preprocessing import CLASSES, preprocessor
from asl_sweep.runtime import MEMORY_LIMIT_ENV, available_memory, size_text

NUM_CLASSES = len(CLASSES)
# Keras' default 0.99 leaves the moving variance ~1e2 too large after the few hundred steps a run
# on this small dataset takes (measured: val accuracy 0.36 vs train 0.96); 0.9 settles in ~50 steps.
BN_MOMENTUM = 0.9
FLOAT_BYTES = 4
COPIES_PER_PARAMETER = 4  # weights, gradients and Adam's two moment slots
ACTIVATION_FACTOR = 3  # feature maps kept for the backward pass, plus their gradients and workspace


def memory_estimate(cfg: Config) -> tuple[int, int]:
    """(parameters, bytes) that training `cfg` needs, from the config alone: float32 weights, gradients
    and Adam slots, plus one batch's conv feature maps (x3 for the backward pass). Rough, but within a
    small factor, which is enough to refuse a model that could never fit before it is built."""
    channels = 1 if cfg.color_mode == "grayscale" else 3
    size, params, maps = cfg.image_size, 0, 0
    for filters in cfg.filters:
        for _ in range(cfg.convs_per_block):
            params += channels * cfg.kernel_size**2 * filters + (4 if cfg.batch_norm else 1) * filters
            maps += size * size * filters
            channels = filters
        size //= 2
    features = channels if cfg.pooling == "global_avg" else size * size * channels
    if cfg.dense_units:
        params += (features + 1) * cfg.dense_units
        features = cfg.dense_units
    params += (features + 1) * outputs(cfg)
    need = params * FLOAT_BYTES * COPIES_PER_PARAMETER + maps * cfg.batch_size * FLOAT_BYTES * ACTIVATION_FACTOR
    return params, need


def check_memory(cfg: Config) -> None:
    """Refuse, as one line, a config whose model cannot fit in this machine's memory, before building it
    (a 128x128x512 flatten into dense 4096 alone is 34 G parameters: minutes of swapping, then a kill)."""
    params, need = memory_estimate(cfg)
    have = available_memory()
    if have is not None and need > have:
        raise UserError(
            f"model too large for this machine: training it needs about {size_text(need)} ({params / 1e6:,.1f} M "
            f"parameters, batch_size {cfg.batch_size}) but {size_text(have)} of memory is available; lower filters, "
            f"dense_units, image_size or batch_size, or use global_avg pooling ({MEMORY_LIMIT_ENV} sets the limit)")


def classifier(cfg: Config) -> keras.Model:
    """Preprocessed images -> digit probabilities: augmentation, conv blocks, head.

    ReLU comes after max-pooling: the two commute exactly (max is monotone), and activating the
    pooled map costs a quarter of the work in both passes."""
    if cfg.image_size < 2**cfg.conv_blocks:
        raise UserError(f"image_size {cfg.image_size} is too small for {cfg.conv_blocks} pooling blocks")
    check_memory(cfg)
    channels = 1 if cfg.color_mode == "grayscale" else 3
    inputs = keras.Input(shape=(cfg.image_size, cfg.image_size, channels), name="pixels")
    x = inputs
    if cfg.flip:  # a left-handed signer signs the mirror image
        x = layers.RandomFlip("horizontal", seed=cfg.seed, name="aug_flip")(x)
    if cfg.brightness > 0:
        x = layers.RandomBrightness(cfg.brightness, value_range=(0.0, 1.0), seed=cfg.seed, name="aug_brightness")(x)
    if cfg.contrast > 0:
        x = layers.RandomContrast(cfg.contrast, seed=cfg.seed, name="aug_contrast")(x)
    turns = cfg.rotate / 360 if cfg.rotate else cfg.augment / 4  # `rotate` (degrees) overrides augment's rotation
    if turns > 0:
        x = layers.RandomRotation(turns, fill_mode="nearest", seed=cfg.seed, name="aug_rotate")(x)
    if cfg.augment > 0:
        x = layers.RandomZoom(cfg.augment, fill_mode="nearest", seed=cfg.seed, name="aug_zoom")(x)
        x = layers.RandomTranslation(cfg.augment, cfg.augment, fill_mode="nearest", seed=cfg.seed, name="aug_shift")(x)
    if cfg.normalize == "image":  # per-photo standardization: exposure and contrast no longer matter
        x = layers.LayerNormalization(axis=[1, 2, 3], center=False, scale=False, epsilon=1e-5, name="standardize")(x)
    for b, filters in enumerate(cfg.filters, start=1):
        for c in range(1, cfg.convs_per_block + 1):
            x = layers.Conv2D(
                filters, cfg.kernel_size, padding="same", use_bias=not cfg.batch_norm, name=f"conv{b}_{c}"
            )(x)
            if cfg.batch_norm:
                x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"bn{b}_{c}")(x)
            if c == cfg.convs_per_block:
                x = layers.MaxPooling2D(name=f"pool{b}")(x)
            x = layers.Activation("relu", name=f"relu{b}_{c}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x) if cfg.pooling == "global_avg" else layers.Flatten(name="flatten")(x)
    if cfg.dense_units:
        x = layers.Dense(cfg.dense_units, activation="relu", name="dense")(x)
    if cfg.dropout:
        x = layers.Dropout(cfg.dropout, seed=cfg.seed, name="dropout")(x)
    probs = layers.Dense(outputs(cfg), activation="softmax", name="digit_hand" if cfg.hand_aware else "digit")(x)
    return keras.Model(inputs, probs, name="classifier")


def outputs(cfg: Config) -> int:
    """The classifier's classes: the 10 digits, or with `hand_aware` each digit as photographed (0-9) and
    mirrored (10-19).

    A network trained on both hands through random flips must guess which hand it sees, and it guesses from
    the tilt: a clockwise-tilted right hand reads as a left hand, and the finger it reads swaps (measured:
    7/8 and 6/9 confused, `rotated_right` 0.85-0.90). Told the hand in its labels it learns the hand itself."""
    return 2 * NUM_CLASSES if cfg.hand_aware else NUM_CLASSES


def copies(cfg: Config) -> int:
    """How many times an epoch shows each training photo: twice (as photographed, mirrored) with `hand_aware`."""
    return outputs(cfg) // NUM_CLASSES


def digits(probs: Any) -> Any:
    """Digit probabilities from the classifier's output: a hand-aware network's two hands summed, others
    unchanged (numpy arrays and Keras tensors alike, so metrics and predictions agree). Told apart by the
    output's width, because Keras metrics and the eager predictions see only the tensor."""
    return probs[..., :NUM_CLASSES] + probs[..., NUM_CLASSES:] if probs.shape[-1] == 2 * NUM_CLASSES else probs


def targets(cfg: Config, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Training inputs and one-hot targets for the classifier: with `hand_aware`, every photo twice, as
    photographed (class d) and mirrored (class d + 10), so an epoch shows each photo as both hands."""
    if not cfg.hand_aware:
        return x, np.eye(NUM_CLASSES, dtype=np.float32)[y]
    return (np.concatenate([x, x[:, :, ::-1]]),
            np.eye(2 * NUM_CLASSES, dtype=np.float32)[np.concatenate([y, y + NUM_CLASSES])])


def hand_sum(x: Any) -> Any:
    """The served model's digit probabilities from a hand-aware classifier: a frozen built-in Dense that
    adds the two hands' probabilities (safe-mode loadable; the kernel is set in `build`)."""
    return layers.Dense(NUM_CLASSES, use_bias=False, trainable=False, name="digit")(x)


def build(cfg: Config, trained: keras.Model | None = None) -> keras.Model:
    """The servable model, raw RGB (any size, 0..255) -> digit probabilities: the preprocessor's layers
    then the classifier's (`trained`, or a fresh one from `cfg`), as one flat graph.

    Flat, not nested: Keras 3.15 runs a nested model's Dropout in training mode when the outer model
    is called without `training=` (measured), so `model(x)` would not be deterministic."""
    core = trained if trained is not None else classifier(cfg)
    pre = preprocessor(cfg)
    x = pre.output
    for layer in core.layers[1:]:  # the classifier is a chain: each layer feeds the next
        x = layer(x)
    if not cfg.hand_aware:
        return keras.Model(pre.input, x, name="asl_digits_cnn")
    served = keras.Model(pre.input, hand_sum(x), name="asl_digits_cnn")
    served.get_layer("digit").set_weights([np.tile(np.eye(NUM_CLASSES, dtype=np.float32), (2, 1))])
    return served


def load(path: str) -> keras.Model:
    """Load a saved model in safe mode; a missing, truncated or foreign file is one clear error."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"model file not found: {p}")
    try:
        return keras.saving.load_model(p, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises many types for bad files; all mean "not a usable model".
        raise UserError(f"cannot load model {p}: {type(exc).__name__}: {one_line(exc, 200)}") from None


def make_optimizer(cfg: Config, steps_per_epoch: int):
    """Optimizer with the configured schedule (warmup applies to the cosine schedule)."""
    lr: Any = cfg.learning_rate
    if cfg.lr_schedule == "cosine":
        warmup = cfg.warmup_epochs * steps_per_epoch
        lr = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else cfg.learning_rate,
            decay_steps=max(1, (cfg.epochs - cfg.warmup_epochs) * steps_per_epoch),
            warmup_target=cfg.learning_rate if warmup else None,
            warmup_steps=warmup,
        )
    wd = cfg.weight_decay or None
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(lr, weight_decay=wd)
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True, weight_decay=wd)
    return keras.optimizers.RMSprop(lr, weight_decay=wd)


def true_class_probability(y_true, y_pred):
    """Per image, the probability the model gives the true digit (`soft_accuracy` is its mean).

    Unlike accuracy it does not saturate: on a few hundred validation images many runs tie at
    val_accuracy 1.000, and this still ranks them by how sure they are of the right answer. A model
    that is always sure and right scores 1, chance scores 0.1, like accuracy."""
    return keras.ops.sum(digits(y_true) * digits(y_pred), axis=-1)


def correct_digit(y_true, y_pred):
    """Per image, 1 when the most probable digit is the true one (`accuracy`; a hand-aware network's
    answer counts whichever hand it names)."""
    same = keras.ops.argmax(digits(y_true), axis=-1) == keras.ops.argmax(digits(y_pred), axis=-1)
    return keras.ops.cast(same, "float32")


def compiled_model(cfg: Config, train_images: int):
    """Seed, build and compile `cfg`'s classifier: the one recipe shared by sweep runs and re-training
    (`train_images`: photos, which `targets` doubles for a hand-aware network)."""
    keras.utils.set_random_seed(cfg.seed)
    net = classifier(cfg)
    net.compile(
        optimizer=make_optimizer(cfg, math.ceil(train_images * copies(cfg) / cfg.batch_size)),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=[keras.metrics.MeanMetricWrapper(correct_digit, name="accuracy"),
                 keras.metrics.MeanMetricWrapper(true_class_probability, name="soft_accuracy")],
    )
    return net
