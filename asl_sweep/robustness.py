"""The photo changes a user meets in practice, applied to validation photos with a fixed seed: how a
model holds up on a real person's photo, not only on photos taken like the dataset's.

Background changes put the photo's masked hand (`masks`) in front of scenes training never shows
(`backgrounds.SCENES`), and one of them also frames it differently: the hand at 60% of the frame,
off-centre, in front of a photograph.

The suite works on the original photos (full resolution, RGB 0..255) and each changed photo then goes
through the model's own preprocessing, exactly as `asl-sweep predict` would feed it. Every run
scores its saved model on the whole suite (`val_robust_accuracy`, its mean, and `val_robust_worst`);
during training each validation photo is shown under one change of the suite (a fixed assignment),
so every epoch logs an estimate of the suite's mean at the cost of one extra validation pass.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Callable

import numpy as np
from PIL import Image, ImageFilter

from asl_sweep import backgrounds
from asl_sweep import masks as masks_lib
from asl_sweep.preprocessing import batches_by_shape, preprocess

if TYPE_CHECKING:
    from asl_sweep.config import Config

SEED = 20261130
Change = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]  # (photo, hand mask, rng) -> photo


def _pil(img: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _exposure(factor: float) -> Change:
    return lambda img, mask, rng: np.clip(img.astype(np.float32) * factor, 0, 255)


def _contrast(factor: float) -> Change:
    def change(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = img.astype(np.float32)
        return np.clip(x.mean() + (x - x.mean()) * factor, 0, 255)
    return change


def _cast(rgb: tuple[float, float, float]) -> Change:
    return lambda img, mask, rng: np.clip(img.astype(np.float32) * np.array(rgb, dtype=np.float32), 0, 255)


def _scale_in_frame(scale: float) -> Change:
    """The hand smaller (<1: the photo shrunk onto a frame of its own edge colours) or larger (>1: cropped)."""
    def change(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = img.shape[:2]
        if scale >= 1:
            ch, cw = round(h / scale), round(w / scale)
            top, left = (h - ch) // 2, (w - cw) // 2
            return np.asarray(_pil(img[top:top + ch, left:left + cw]).resize((w, h), Image.BILINEAR), np.float32)
        small = np.asarray(_pil(img).resize((round(w * scale), round(h * scale)), Image.BILINEAR), np.float32)
        top, left = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
        return np.pad(small, ((top, h - small.shape[0] - top), (left, w - small.shape[1] - left), (0, 0)), mode="edge")
    return change


def _shift(fraction: float) -> Change:
    def change(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = img.shape[:2]
        dy, dx = round(h * fraction), round(w * fraction)
        padded = np.pad(img.astype(np.float32), ((dy, 0), (dx, 0), (0, 0)), mode="edge")
        return padded[:h, :w]
    return change


def _rotate(degrees: float) -> Change:
    """Rotate about the centre; the corners take the nearest edge colours (no black wedges)."""
    def change(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = img.shape[:2]
        pad = max(h, w) // 2
        big = _pil(np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="edge")).rotate(degrees, resample=Image.BILINEAR)
        return np.asarray(big, np.float32)[pad:pad + h, pad:pad + w]
    return change


def _mirror(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return img[:, ::-1].astype(np.float32)


def _blur(radius: float) -> Change:
    return lambda img, mask, rng: np.asarray(_pil(img).filter(ImageFilter.GaussianBlur(radius)), np.float32)


def _noise(sigma: float) -> Change:
    return lambda img, mask, rng: np.clip(img.astype(np.float32) + rng.normal(0, sigma, img.shape), 0, 255)


def _jpeg(quality: int) -> Change:
    def change(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        buf = io.BytesIO()
        _pil(img).save(buf, format="JPEG", quality=quality)
        with Image.open(buf) as out:
            return np.asarray(out.convert("RGB"), np.float32)
    return change


def _resolution(size: int) -> Change:
    return lambda img, mask, rng: np.asarray(_pil(img).resize((size, size), Image.BICUBIC), np.float32)


def _background(family: backgrounds.Family, scale: float = 1.0) -> Change:
    """The masked hand in front of a scene of `family`; with `scale` < 1 also shrunk and moved off-centre
    (10-20% of the frame in each direction)."""
    def change(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = img.shape[:2]
        scene = family(1, max(h, w), rng)[0, :h, :w]
        corner = (0.5, 0.5) if scale >= 1 else tuple(rng.choice([rng.uniform(0, 0.25), rng.uniform(0.75, 1)])
                                                       for _ in range(2))
        return np.clip(backgrounds.in_front(img, mask, scene, scale, corner), 0, 255)
    return change


# name -> (what a user meets, the change). Settings are fixed: results compare across runs and commits.
SUITE: dict[str, tuple[str, Change]] = {
    "darker": ("half the exposure (a dim room)", _exposure(0.5)),
    "much_darker": ("a third of the exposure", _exposure(0.33)),
    "brighter": ("1.6x the exposure (clipped highlights)", _exposure(1.6)),
    "low_contrast": ("half the contrast (haze, a cheap webcam)", _contrast(0.5)),
    "warm_cast": ("tungsten light: red up, blue down", _cast((1.2, 1.0, 0.75))),
    "cool_cast": ("shade or daylight white balance: blue up", _cast((0.8, 0.95, 1.2))),
    "hand_smaller": ("hand at 75% of the frame (camera further away)", _scale_in_frame(0.75)),
    "hand_larger": ("hand at 125% (camera closer, edges cropped)", _scale_in_frame(1.25)),
    "shifted": ("hand off-centre by 12% of the frame", _shift(0.12)),
    "rotated_left": ("camera tilted +15 degrees", _rotate(15)),
    "rotated_right": ("camera tilted -15 degrees", _rotate(-15)),
    "mirrored": ("a left-handed signer (the mirror image)", _mirror),
    "blur": ("out of focus (Gaussian blur, 1.5% of the width)", _blur(1.5)),
    "noise": ("sensor noise in low light (sigma 12 of 255)", _noise(12)),
    "jpeg": ("strong JPEG compression (quality 15)", _jpeg(15)),
    "low_resolution": ("a small photo (40x40)", _resolution(40)),
    "high_resolution": ("a large photo (200x200)", _resolution(200)),
    **{name: (what, _background(family)) for name, (what, family) in backgrounds.SCENES.items()},
    "bg_small_offcentre": ("hand at 60% of the frame, off-centre, in front of a photo",
                           _background(backgrounds.SCENES["bg_photo"][1], backgrounds.SMALL_SCALE)),
}
BACKGROUND_CHANGES = tuple(name for name in SUITE if name.startswith("bg_"))


def changed(images: list[np.ndarray], name: str, masks: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """Every photo under one change of the suite (deterministic), float32 RGB 0..255 at its new size;
    `masks`: the photos' hand masks when already at hand (made here otherwise)."""
    _, change = SUITE[name]
    rng = np.random.default_rng([SEED, list(SUITE).index(name)])
    if masks is None:
        masks = masks_lib.masks(images) if name in BACKGROUND_CHANGES else [np.empty(0)] * len(images)
    return [change(img, mask, rng).astype(np.float32) for img, mask in zip(images, masks)]


def preprocessed_suite(cfg: "Config", images: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The classifier's inputs for every photo under every change: the model's own preprocessing, run
    once per image shape, so training scores the suite with the classifier alone."""
    out: dict[str, np.ndarray] = {}
    masks = masks_lib.masks(images)
    for name in SUITE:
        photos = changed(images, name, masks)
        parts = {}
        for idx, batch in batches_by_shape(photos, 256):
            parts.update(zip(idx, preprocess(cfg, batch)))
        out[name] = np.stack([parts[i] for i in range(len(photos))])
    return out


def mixed_set(suite: dict[str, np.ndarray]) -> np.ndarray:
    """One changed version of each validation photo (the fixed assignment): the per-epoch estimate's input."""
    names = list(SUITE)
    return np.stack([suite[names[k]][i] for i, k in enumerate(assignment(len(next(iter(suite.values())))))])


def accuracy_per_change(predict: Callable[[np.ndarray], np.ndarray], inputs: dict[str, list[np.ndarray] | np.ndarray],
                        labels: np.ndarray) -> dict[str, float]:
    """Accuracy under each change; `predict` maps a batch (one shape) to class probabilities."""
    out = {}
    for name, batch in inputs.items():
        preds = np.empty(len(labels), dtype=np.int64)
        for idx, part in batches_by_shape(list(batch), 256):
            preds[idx] = np.asarray(predict(part)).argmax(axis=1)
        out[name] = float((preds == labels).mean())
    return out


def served_accuracy(net, images: list[np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """Accuracy of a saved (servable) model under each change, on raw photos of any size."""
    masks = masks_lib.masks(images)
    return accuracy_per_change(net.predict_on_batch, {name: changed(images, name, masks) for name in SUITE}, labels)


def assignment(count: int) -> np.ndarray:
    """Which change each of `count` validation photos shows during training: balanced, fixed order."""
    rng = np.random.default_rng(SEED)
    return rng.permutation(np.arange(count) % len(SUITE))


def summarize(per_change: dict[str, float]) -> dict[str, float | str]:
    """Mean and worst case over the suite, as a run logs them."""
    worst = min(per_change, key=per_change.get)
    scenes = [per_change[name] for name in BACKGROUND_CHANGES if name in per_change]
    return {"val_robust_accuracy": float(np.mean(list(per_change.values()))),
            "val_robust_worst": per_change[worst], "val_robust_worst_change": worst,
            **({"val_background_accuracy": float(np.mean(scenes)), "val_background_worst": min(scenes)} if scenes else {})}
