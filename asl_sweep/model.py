"""Build the CNN from a Config, in two parts: a fixed preprocessor (resize, grayscale, rescale)
and the trainable classifier. Training fits the classifier on images preprocessed once; the saved
model chains both, so a `.keras` file takes raw RGB images of any size, and only built-in layers
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


def preprocessor(cfg: Config) -> keras.Model:
    """Raw RGB (any size, 0..255) -> the classifier's input: resized, grayscale if configured, 0..1.

    Deterministic, so training runs it once per dataset (`preprocess`) and serving runs it per image."""
    inputs = keras.Input(shape=(None, None, 3), name="image")
    x = resize_layer(cfg.image_size)(inputs)
    if cfg.color_mode == "grayscale":
        luma = keras.initializers.Constant([[[[c] for c in LUMA]]])
        x = layers.Conv2D(1, 1, use_bias=False, kernel_initializer=luma, trainable=False, name="grayscale")(x)
    x = layers.Rescaling(1.0 / 255, name="rescale")(x)
    return keras.Model(inputs, x, name="preprocess")


def preprocess(cfg: Config, images, batch: int = 512):
    """Run the preprocessor over a whole image array once, in batches (float32 array out)."""
    import numpy as np

    pre = preprocessor(cfg)
    return np.concatenate([np.asarray(pre(images[i:i + batch])) for i in range(0, len(images), batch)])


def classifier(cfg: Config) -> keras.Model:
    """Preprocessed images -> digit probabilities: augmentation, conv blocks, head.

    ReLU comes after max-pooling: the two commute exactly (max is monotone), and activating the
    pooled map costs a quarter of the work in both passes."""
    if cfg.image_size < 2**cfg.conv_blocks:
        raise UserError(f"image_size {cfg.image_size} is too small for {cfg.conv_blocks} pooling blocks")
    channels = 1 if cfg.color_mode == "grayscale" else 3
    inputs = keras.Input(shape=(cfg.image_size, cfg.image_size, channels), name="pixels")
    x = inputs
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
            if c == cfg.convs_per_block:
                x = layers.MaxPooling2D(name=f"pool{b}")(x)
            x = layers.Activation("relu", name=f"relu{b}_{c}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x) if cfg.pooling == "global_avg" else layers.Flatten(name="flatten")(x)
    if cfg.dense_units:
        x = layers.Dense(cfg.dense_units, activation="relu", name="dense")(x)
    if cfg.dropout:
        x = layers.Dropout(cfg.dropout, seed=cfg.seed, name="dropout")(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", name="digit")(x)
    return keras.Model(inputs, outputs, name="classifier")


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
    return keras.Model(pre.input, x, name="asl_digits_cnn")


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
