"""Training batches with backgrounds: composited after preprocessing exactly as before it, labels kept."""

import numpy as np
import pytest

from asl_sweep import backgrounds, feed, model
from asl_sweep.config import Config
from asl_sweep.preprocessing import preprocess
from tests.test_backgrounds import hands


@pytest.mark.parametrize("color_mode", ["grayscale", "rgb"])
def test_compositing_preprocessed_photos_equals_preprocessing_the_composite(color_mode):
    cfg = Config(image_size=24, color_mode=color_mode)
    x, m = hands(size=24)
    bank = backgrounds.bank(10, 24, seed=0)
    after = preprocess(cfg, backgrounds.composite(x, m, bank, np.random.default_rng(5), 0.8))
    before = backgrounds.composite(preprocess(cfg, x), m, preprocess(cfg, bank), np.random.default_rng(5), 0.8)
    assert np.allclose(after, before, atol=1e-5)


def test_each_epoch_is_composited_anew_and_every_photo_keeps_its_label(monkeypatch):
    monkeypatch.setattr(backgrounds, "MIN_SCALE", 1.0)  # hands stay in place, so each can be found again
    cfg = Config(image_size=24, hand_aware=True, background=1.0, batch_size=4)
    x, m = hands(n=6, size=24)
    pixels, y = preprocess(cfg, x), np.arange(6)
    seq = feed.Composited(cfg, pixels, m, y, preprocess(cfg, backgrounds.bank(10, 24, seed=0)))
    assert len(seq) == 3  # 12 photos (both hands) in batches of 4

    def epoch() -> tuple[np.ndarray, np.ndarray]:
        seq.on_epoch_begin()
        parts = [seq[i] for i in range(len(seq))]
        seq.on_epoch_end()
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    shown, targets = epoch()
    both, both_masks = np.concatenate([pixels, pixels[:, :, ::-1]]), np.concatenate([m, m[:, :, ::-1]])
    classes = np.concatenate([y, y + 10])
    for img, target in zip(shown, targets):
        hand = [k for k in range(12) if np.allclose(img[both_masks[k, ..., 0] == 1], both[k][both_masks[k, ..., 0] == 1],
                                                    atol=1e-4)]
        assert hand and classes[hand[0]] == target.argmax()  # the photo's own class, its hand included
    assert sorted(targets.argmax(axis=1)) == sorted(classes)
    again, _ = epoch()
    assert not np.allclose(np.sort(shown.ravel()), np.sort(again.ravel()))  # new backgrounds this epoch


def test_without_background_fit_gets_plain_arrays():
    cfg = Config(image_size=24, hand_aware=True)
    x, m = hands(n=3, size=24)
    kwargs = feed.training_data(cfg, x, m, np.arange(3), None)
    assert kwargs["x"].shape == (6, 24, 24, 3) and kwargs["y"].shape == (6, model.outputs(cfg))
    assert kwargs["batch_size"] == cfg.batch_size and kwargs["shuffle"]
