import numpy as np
import pytest

from asl_sweep import model
from asl_sweep.config import Config
from asl_sweep.errors import UserError


@pytest.mark.parametrize("changes", [{}, {"color_mode": "rgb", "batch_norm": True, "pooling": "global_avg",
                                          "conv_blocks": 3, "convs_per_block": 2, "augment": 0.1}])
def test_raw_rgb_images_of_any_size_give_ten_probabilities(changes):
    net = model.build(Config().replace(image_size=16, **changes))
    for h, w in ((100, 100), (37, 61)):
        out = np.asarray(net(np.random.uniform(0, 255, (3, h, w, 3)).astype("float32")))
        assert out.shape == (3, 10)
        assert np.allclose(out.sum(axis=1), 1.0, atol=1e-5)


def test_grayscale_is_inside_the_model():
    net = model.build(Config().replace(image_size=8))
    gray = net.get_layer("grayscale")
    assert not gray.trainable
    assert np.allclose(np.asarray(gray.kernel).ravel(), model.LUMA)


def test_too_many_blocks_for_the_image_is_an_error():
    with pytest.raises(UserError, match="too small"):
        model.build(Config().replace(image_size=8, conv_blocks=4))


def test_saved_model_loads_in_safe_mode(tmp_path):
    net = model.build(Config().replace(image_size=16, augment=0.1))
    net.save(tmp_path / "m.keras")
    again = model.load(str(tmp_path / "m.keras"))
    x = np.random.uniform(0, 255, (2, 50, 50, 3)).astype("float32")
    assert np.allclose(np.asarray(net(x)), np.asarray(again(x)), atol=1e-5)


def test_bad_model_files_are_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        model.load(str(tmp_path / "missing.keras"))
    (tmp_path / "junk.keras").write_bytes(b"definitely not a zip")
    with pytest.raises(UserError, match="cannot load model"):
        model.load(str(tmp_path / "junk.keras"))
