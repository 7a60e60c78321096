"""The classes and the fixed preprocessing every other module shares: a leaf that imports no other module
of the package, so data, model, robustness and training all depend on it and not on each other.

One resize (Keras' own `Resizing` layer) serves the data cache, training and the saved model, so a photo
fed to `asl-sweep predict` goes through exactly what training saw. Keras is imported inside the functions
that build layers: commands that only read the ledger never pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

if TYPE_CHECKING:
    from asl_sweep.config import Config

CLASSES = tuple(str(d) for d in range(10))
LUMA = (0.299, 0.587, 0.114)


def resize_layer(image_size: int) -> Any:
    """The one resize used everywhere (data cache and model), so training and serving agree."""
    from keras import layers

    return layers.Resizing(image_size, image_size, interpolation="bilinear", antialias=True, name="resize")


def preprocessor(cfg: Config) -> Any:
    """Raw RGB (any size, 0..255) -> the classifier's input: resized, grayscale if configured, 0..1.

    Deterministic, so training runs it once per dataset (`preprocess`) and serving runs it per image."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=(None, None, 3), name="image")
    x = resize_layer(cfg.image_size)(inputs)
    if cfg.color_mode == "grayscale":
        luma = keras.initializers.Constant([[[[c] for c in LUMA]]])
        x = layers.Conv2D(1, 1, use_bias=False, kernel_initializer=luma, trainable=False, name="grayscale")(x)
    x = layers.Rescaling(1.0 / 255, name="rescale")(x)
    return keras.Model(inputs, x, name="preprocess")


def preprocess(cfg: Config, images: np.ndarray, batch: int = 512) -> np.ndarray:
    """Run the preprocessor over a whole image array once, in batches (float32 array out)."""
    pre = preprocessor(cfg)
    return np.concatenate([np.asarray(pre(images[i:i + batch])) for i in range(0, len(images), batch)])


def batches_by_shape(images: list[np.ndarray], size: int) -> Iterator[tuple[list[int], np.ndarray]]:
    """(indices, float32 batch) of at most `size` images that share a shape: images of any size, few calls."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        by_shape.setdefault(img.shape, []).append(i)
    for same_shape in by_shape.values():
        for start in range(0, len(same_shape), size):
            idx = same_shape[start:start + size]
            yield idx, np.stack([images[i] for i in idx]).astype(np.float32)
