"""Foreground masks of the dataset's photos: which pixels are the hand (and arm), which the wall.

Every photo was taken in front of a plain, light, grey wall, so colour separates the two: skin is
warm (red well above blue) and the wall is neutral or slightly blue, under any exposure and vignette.
Per photo, a threshold on that warmth is chosen by Otsu's method (the wall and the hand are two
clusters), specks are opened away, the largest connected part is kept and small holes filled. Holes
larger than a fingertip stay open (the wall seen through a thumb-and-finger circle is background too),
and there is no closing: it bridges the narrow gaps between fingers with wall (measured: IoU with the
reference 0.931 with a 2-pixel closing, 0.959 without).

Pure numpy and scipy.ndimage, no model and no download; ~1 ms a photo, computed once with the
decoded-image cache (`data.load`). `bench/masks.py` checks it against a slower reference.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

VERSION = 1  # part of the decoded-image cache's key: change it with the method, so no stale mask is read
SMOOTH_SIGMA = 1.0  # pixels of a 100x100 photo: JPEG noise, not the hand's outline
HOLE_FRACTION = 0.004  # holes below 0.4% of the photo (40 px of 100x100) are speckle inside the hand
OTSU_BINS = 128


def warmth(img: np.ndarray) -> np.ndarray:
    """(red - blue) relative to brightness: high on skin, near zero on a grey wall, whatever the exposure
    (the +20 keeps near-black pixels from looking warm)."""
    x = img.astype(np.float32)
    return (x[..., 0] - x[..., 2]) / (x.mean(axis=-1) + 20.0)


def otsu(values: np.ndarray) -> float:
    """Otsu's threshold: the cut that maximizes the between-class variance of two clusters (hand-written:
    ten lines of numpy instead of a scikit-image dependency for one function)."""
    hist, edges = np.histogram(values, bins=OTSU_BINS)
    mids = (edges[:-1] + edges[1:]) / 2
    below = np.cumsum(hist)
    above = below[-1] - below
    mass = np.cumsum(hist * mids)
    mean_below = mass / np.maximum(below, 1)
    mean_above = (mass[-1] - mass) / np.maximum(above, 1)
    return float(mids[np.argmax(below * above * (mean_below - mean_above) ** 2)])


def hand_mask(img: np.ndarray) -> np.ndarray:
    """Boolean mask (H, W) of the hand in an RGB photo taken in front of a plain wall."""
    w = ndimage.gaussian_filter(warmth(img), SMOOTH_SIGMA)
    fg = ndimage.binary_opening(w > otsu(w))
    labels, count = ndimage.label(fg)
    if count == 0:
        return fg
    sizes = ndimage.sum_labels(fg, labels, index=np.arange(1, count + 1))
    fg = labels == 1 + int(np.argmax(sizes))
    holes, count = ndimage.label(ndimage.binary_fill_holes(fg) & ~fg)
    if count:
        small = ndimage.sum_labels(holes > 0, holes, index=np.arange(1, count + 1)) < HOLE_FRACTION * fg.size
        fg |= np.isin(holes, 1 + np.flatnonzero(small))
    return fg


def masks(images: list[np.ndarray]) -> list[np.ndarray]:
    """`hand_mask` of every photo, as float32 0/1 arrays (ready to be resized like the photos)."""
    return [hand_mask(img).astype(np.float32) for img in images]
