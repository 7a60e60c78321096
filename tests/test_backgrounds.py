"""Backgrounds and compositing: the masked hand in front of anything, its pixels and its label kept."""

import numpy as np
import pytest
from scipy import ndimage

from asl_sweep import backgrounds
from tests.conftest import hand_photo, skip_unless_ci


def hands(n: int = 6, size: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Resized synthetic hand photos (float32 RGB) and their hard masks (n, size, size, 1)."""
    from PIL import Image

    pairs = [hand_photo(seed=s) for s in range(n)]
    x = np.stack([np.asarray(Image.fromarray(p).resize((size, size), Image.NEAREST), np.float32) for p, _ in pairs])
    m = np.stack([np.asarray(Image.fromarray(t).resize((size, size), Image.NEAREST), np.float32) for _, t in pairs])
    return x, m[..., None]


def test_the_bank_mixes_every_training_family_deterministically():
    bank = backgrounds.bank(70, 16, seed=3)
    assert bank.shape == (70, 16, 16, 3) and bank.dtype == np.float32
    assert bank.min() >= 0 and bank.max() <= 255
    assert np.array_equal(bank, backgrounds.bank(70, 16, seed=3))
    assert not np.array_equal(bank, backgrounds.bank(70, 16, seed=4))
    flat = (bank.std(axis=(1, 2)) < 1e-3).all(axis=-1)  # plain colours are flat, every other family is not
    assert 0 < flat.sum() < len(bank) / 2


@pytest.mark.parametrize("family", [*backgrounds.TRAINING.values(), *(f for _, f in backgrounds.SCENES.values())])
def test_every_family_makes_images_in_range(family):
    out = family(3, 20, np.random.default_rng(0))
    assert out.shape == (3, 20, 20, 3) and out.min() >= 0 and out.max() <= 255.001


def test_placing_at_full_scale_in_the_corner_changes_nothing():
    x, m = hands()
    n = len(x)
    img, mask = backgrounds.place(x, m, np.ones(n, np.float32), np.zeros(n), np.zeros(n))
    assert np.allclose(img, x, atol=1e-3) and np.allclose(mask, m, atol=1e-5)


def test_placing_at_half_scale_shrinks_the_hand_into_the_frame():
    x, m = hands()
    n, size = len(x), x.shape[1]
    _, mask = backgrounds.place(x, m, np.full(n, 0.5, np.float32), np.full(n, size / 2), np.zeros(n))
    assert not mask[:, : size // 2].any()  # the top half is free: the shrunk photo sits in the bottom left
    assert not mask[:, :, size // 2 + 1:].any()
    assert np.allclose(mask.sum(axis=(1, 2, 3)), m.sum(axis=(1, 2, 3)) / 4, rtol=0.25)


def test_compositing_keeps_the_hands_pixels_and_replaces_the_wall():
    x, m = hands()
    bank = backgrounds.bank(20, x.shape[1], seed=0)
    out = backgrounds.composite(x, m, bank, np.random.default_rng(0), probability=1.0, min_scale=1.0)
    hand, wall = m[..., 0] == 1, m[..., 0] == 0
    assert np.allclose(out[hand], x[hand], atol=1e-3)
    assert not np.allclose(out[wall], x[wall], atol=1.0)
    for i in range(len(x)):  # every wall pixel comes from one background of the bank, or its mirror image
        assert any(np.allclose(out[i][wall[i]], b[wall[i]], atol=1e-3) for bg in bank for b in (bg, bg[:, ::-1]))


def test_compositing_keeps_the_order_so_labels_stay_with_their_photos():
    x, m = hands()
    bank = backgrounds.bank(20, x.shape[1], seed=0)
    out = backgrounds.composite(x, m, bank, np.random.default_rng(1), probability=1.0, min_scale=1.0)
    for i in range(len(x)):  # photo i's hand is still at position i
        hand = m[i, ..., 0] == 1
        assert np.allclose(out[i][hand], x[i][hand], atol=1e-3)


def test_probability_zero_leaves_every_photo_as_it_was():
    x, m = hands()
    out = backgrounds.composite(x, m, backgrounds.bank(5, x.shape[1], 0), np.random.default_rng(0), probability=0.0)
    assert np.array_equal(out, x)


def test_probability_is_the_share_of_photos_changed():
    x, m = hands(n=40)
    out = backgrounds.composite(x, m, backgrounds.bank(20, x.shape[1], 0), np.random.default_rng(0), probability=0.5)
    changed = (np.abs(out - x) > 1).any(axis=(1, 2, 3))
    assert 10 <= changed.sum() <= 30


def test_in_front_works_on_a_photo_of_any_shape():
    img, truth = hand_photo(size=60)
    img = img[:, 5:55]
    truth = truth[:, 5:55]
    scene = backgrounds.SCENES["bg_wood"][1](1, 60, np.random.default_rng(0))[0, :60, :50]
    out = backgrounds.in_front(img, truth.astype(np.float32), scene)
    assert out.shape == img.shape
    inner = ndimage.binary_erosion(truth, iterations=4)
    assert np.allclose(out[inner], img[inner], atol=2)  # the soft edge only touches the outline
    small = backgrounds.in_front(img, truth.astype(np.float32), scene, scale=0.6, corner=(0, 0))
    assert np.allclose(small[-20:, -15:], scene[-20:, -15:], atol=1e-3)  # the far corner is all background


def test_training_and_suite_photos_are_not_the_reserved_ones():
    sources = {pkg for pkg, _ in backgrounds.TRAINING_PHOTOS + backgrounds.SUITE_PHOTOS}
    assert "skimage" not in sources
    assert not set(backgrounds.TRAINING_PHOTOS) & set(backgrounds.SUITE_PHOTOS)
    assert not set(backgrounds.TRAINING.values()) & {family for _, family in backgrounds.SCENES.values()}


def test_every_training_photograph_is_installed_here():
    found = backgrounds.available(backgrounds.TRAINING_PHOTOS)
    if len(found) < len(backgrounds.TRAINING_PHOTOS):
        skip_unless_ci("install mate-backgrounds, plasma-workspace-wallpapers and opencv-doc (Debian) for the training photographs")
    for source in found:  # wallpapers read small (a tenth of the short side still has PHOTO_SIDE/10 pixels)
        img = backgrounds.photo(*source)
        assert min(img.shape[:2]) <= 2 * backgrounds.PHOTO_SIDE and img.shape[2] == 3 and img.dtype == np.uint8
    assert backgrounds.photo(*backgrounds.SUITE_PHOTOS[0]).shape == (600, 512, 3)  # the suite's scenes stay as they were


def test_a_missing_photograph_is_left_out_with_a_warning_naming_its_package(caplog, tmp_path):
    sources = (("sklearn", "datasets/images/china.jpg"), ("no-such-wallpapers", str(tmp_path / "gone.jpg")))
    with caplog.at_level("WARNING", logger="asl_sweep.backgrounds"):
        assert backgrounds.available(sources) == sources[:1]
    assert "1 of 2 photographs found; install no-such-wallpapers" in caplog.text
    with pytest.raises(FileNotFoundError, match="install no-such-wallpapers"):
        backgrounds.available(sources[1:])
