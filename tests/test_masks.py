"""Hand masks: the hand on a plain wall, found by colour alone, whatever the exposure."""

import numpy as np
import pytest

from asl_sweep import masks
from tests.conftest import hand_photo


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("exposure", [0.4, 1.0, 1.2])
def test_the_mask_is_the_hand_under_any_exposure(exposure):
    for seed in range(3):
        img, truth = hand_photo(seed=seed)
        found = masks.hand_mask(np.clip(img * exposure, 0, 255).astype(np.uint8))
        assert found.shape == truth.shape and found.dtype == bool
        assert iou(found, truth) > 0.9, (seed, exposure)


def test_a_large_hole_stays_open_and_specks_are_dropped():
    img, truth = hand_photo(ring=True)
    img[5:8, 5:8] = [205, 150, 110]  # a skin-coloured speck on the wall, away from the hand
    found = masks.hand_mask(img)
    assert not found[62, 50]  # the wall seen through the ring is background
    assert not found[5:8, 5:8].any()
    assert iou(found, truth) > 0.9


def test_a_small_hole_in_the_hand_is_filled():
    img, truth = hand_photo()
    img[60:63, 49:52] = [200, 200, 205]  # a wall-grey glint on the palm: 9 pixels
    assert masks.hand_mask(img)[60:63, 49:52].all()


def test_otsu_splits_two_clusters_between_them():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.1, 0.02, 500), rng.normal(0.6, 0.05, 300)])
    assert 0.15 < masks.otsu(values) < 0.5


def test_masks_are_float_arrays_ready_to_resize():
    out = masks.masks([hand_photo(seed=s)[0] for s in range(2)])
    assert len(out) == 2 and all(m.dtype == np.float32 and set(np.unique(m)) <= {0.0, 1.0} for m in out)
