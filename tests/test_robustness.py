"""The robustness suite: fixed, deterministic photo changes, scored the same way in training and on an
exported model."""

import numpy as np
import pytest

from asl_sweep import robustness
from asl_sweep.config import Config


@pytest.fixture
def photos():
    rng = np.random.default_rng(3)
    return [rng.uniform(0, 255, (60, 50, 3)).astype(np.float32) for _ in range(4)]


def test_every_change_is_deterministic_and_changes_the_photo(photos):
    for name in robustness.SUITE:
        once, again = robustness.changed(photos, name), robustness.changed(photos, name)
        assert all(np.array_equal(a, b) for a, b in zip(once, again)), name
        assert all(a.dtype == np.float32 and a.min() >= 0 and a.max() <= 255 for a in once), name
        assert once[0].shape != photos[0].shape or not np.allclose(once[0], photos[0]), name


def test_changes_do_what_their_names_say(photos):
    assert np.array_equal(robustness.changed(photos, "mirrored")[0], photos[0][:, ::-1])
    assert np.allclose(robustness.changed(photos, "darker")[0], photos[0] * 0.5)
    assert robustness.changed(photos, "low_resolution")[0].shape == (40, 40, 3)
    assert robustness.changed(photos, "high_resolution")[0].shape == (200, 200, 3)
    for name in ("hand_smaller", "hand_larger", "shifted", "rotated_left", "blur", "jpeg", "noise"):
        assert robustness.changed(photos, name)[0].shape == photos[0].shape, name
    low = robustness.changed(photos, "low_contrast")[0]
    assert low.std() == pytest.approx(photos[0].std() * 0.5, rel=0.01)


def test_each_photo_shows_one_change_during_training_balanced():
    picks = robustness.assignment(len(robustness.SUITE) * 5 + 3)
    counts = np.bincount(picks, minlength=len(robustness.SUITE))
    assert counts.min() >= 5 and counts.max() <= 6
    assert np.array_equal(picks, robustness.assignment(len(picks)))


def test_preprocessed_suite_and_mixed_set_have_the_classifiers_input_shape(photos):
    cfg = Config().replace(image_size=16)
    suite = robustness.preprocessed_suite(cfg, photos)
    assert list(suite) == list(robustness.SUITE)
    assert all(x.shape == (4, 16, 16, 1) for x in suite.values())
    mixed = robustness.mixed_set(suite)
    names = list(robustness.SUITE)
    for i, k in enumerate(robustness.assignment(4)):
        assert np.array_equal(mixed[i], suite[names[k]][i])


def test_accuracy_per_change_and_summary():
    labels = np.array([0, 1, 2, 3])
    inputs = {"a": np.zeros((4, 2, 2, 1)), "b": np.ones((4, 2, 2, 1))}

    def predict(batch):  # right on the zeros, always class 0 on the ones
        return np.eye(10)[labels] if batch.max() == 0 else np.eye(10)[np.zeros(len(batch), int)]

    per_change = robustness.accuracy_per_change(predict, inputs, labels)
    assert per_change == {"a": 1.0, "b": 0.25}
    assert robustness.summarize(per_change) == {"val_robust_accuracy": 0.625, "val_robust_worst": 0.25,
                                                "val_robust_worst_change": "b"}


def test_background_changes_keep_the_hand_and_replace_the_wall():
    from scipy import ndimage

    from tests.conftest import hand_photo

    img, truth = hand_photo(size=80)
    photos = [img.astype(np.float32)]
    inner = ndimage.binary_erosion(truth, iterations=4)
    for name in robustness.BACKGROUND_CHANGES:
        out = robustness.changed(photos, name)[0]
        assert out.shape == img.shape and np.array_equal(out, robustness.changed(photos, name)[0]), name
        assert np.abs(out - img)[~ndimage.binary_dilation(truth, iterations=6)].mean() > 10, name  # a new wall
        if name != "bg_small_offcentre":
            assert np.abs(out - img)[inner].max() < 3, name  # the hand as photographed
    small = robustness.changed(photos, "bg_small_offcentre")[0]
    assert not np.allclose(small[inner], img[inner], atol=3)  # moved and shrunk


def test_summary_counts_the_background_changes_apart():
    per_change = {name: 1.0 for name in robustness.SUITE}
    per_change["bg_wood"], per_change["darker"] = 0.5, 0.75
    s = robustness.summarize(per_change)
    assert s["val_robust_worst"] == 0.5 and s["val_robust_worst_change"] == "bg_wood"
    n = len(robustness.BACKGROUND_CHANGES)
    assert s["val_background_accuracy"] == pytest.approx((n - 0.5) / n) and s["val_background_worst"] == 0.5
