"""Build the CNN from a Config. The model carries its own preprocessing (resize, grayscale,
rescale), so a saved `.keras` file takes raw RGB images of any size, and only built-in layers
are used, so it loads in Keras' safe mode with no custom objects."""

from __future__ import annotations

import keras
from keras import layers

from asl_sweep.config import Config
from asl_sweep.errors import UserError

NUM_CLASSES = 10
LUMA = (0.299, 0.587, 0.114)
# Keras' default 0.99 leaves the moving variance ~1e2 too large after the few hundred steps a run
# on this small dataset takes (measured: val accuracy 0.36 vs train 0.96); 0.9 settles in ~50 steps.
BN_MOMENTUM = 0.9


def resize_layer(image_size: int) -> layers.Resizing:
    """The one resize used everywhere (data cache and model), so training and serving agree."""
    return layers.Resizing(image_size, image_size, interpolation="bilinear", antialias=True, name="resize")


def build(cfg: Config) -> keras.Model:
    """Raw RGB (any size, 0..255) -> digit probabilities, following `cfg`."""
    if cfg.image_size < 2**cfg.conv_blocks:
        raise UserError(f"image_size {cfg.image_size} is too small for {cfg.conv_blocks} pooling blocks")
    inputs = keras.Input(shape=(None, None, 3), name="image")
    x = resize_layer(cfg.image_size)(inputs)
    if cfg.color_mode == "grayscale":
        luma = keras.initializers.Constant([[[[c] for c in LUMA]]])
        x = layers.Conv2D(1, 1, use_bias=False, kernel_initializer=luma, trainable=False, name="grayscale")(x)
    x = layers.Rescaling(1.0 / 255, name="rescale")(x)
    if cfg.augment > 0:
        x = layers.RandomRotation(cfg.augment / 4, fill_mode="nearest", seed=cfg.seed, name="aug_rotate")(x)
        x = layers.RandomZoom(cfg.augment, fill_mode="nearest", seed=cfg.seed, name="aug_zoom")(x)
        x = layers.RandomTranslation(cfg.augment, cfg.augment, fill_mode="nearest", seed=cfg.seed, name="aug_shift")(x)
    for b, filters in enumerate(cfg.filters, start=1):
        for c in range(1, cfg.convs_per_block + 1):
            x = layers.Conv2D(
                filters, cfg.kernel_size, padding="same", use_bias=not cfg.batch_norm, name=f"conv{b}_{c}"
            )(x)
            if cfg.batch_norm:
                x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"bn{b}_{c}")(x)
            x = layers.Activation("relu", name=f"relu{b}_{c}")(x)
        x = layers.MaxPooling2D(name=f"pool{b}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x) if cfg.pooling == "global_avg" else layers.Flatten(name="flatten")(x)
    if cfg.dense_units:
        x = layers.Dense(cfg.dense_units, activation="relu", name="dense")(x)
    if cfg.dropout:
        x = layers.Dropout(cfg.dropout, seed=cfg.seed, name="dropout")(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", name="digit")(x)
    return keras.Model(inputs, outputs, name="asl_digits_cnn")


def load(path: str) -> keras.Model:
    """Load a saved model in safe mode; a missing, truncated or foreign file is one clear error."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise UserError(f"model file not found: {p}")
    try:
        return keras.saving.load_model(p, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises many types for bad files; all mean "not a usable model".
        raise UserError(f"cannot load model {p}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
