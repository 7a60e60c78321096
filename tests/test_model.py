import re

import keras
import numpy as np
import pytest

from asl_sweep import model, preprocessing, runtime
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
    assert np.allclose(np.asarray(gray.kernel).ravel(), preprocessing.LUMA)


@pytest.mark.parametrize("color_mode", ["grayscale", "rgb"])
def test_training_inputs_are_the_serving_models_own_preprocessing(color_mode):
    """Training fits the classifier on `preprocess` output; the saved model must see the same numbers."""
    cfg = Config().replace(image_size=16, color_mode=color_mode)
    core = model.classifier(cfg)
    raw = np.random.uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    pixels = preprocessing.preprocess(cfg, raw, batch=3)
    assert pixels.shape == (4, 16, 16, 1 if color_mode == "grayscale" else 3)
    assert 0.0 <= pixels.min() and pixels.max() <= 1.0
    served = model.build(cfg, core)
    assert not any(isinstance(layer, keras.Model) for layer in served.layers)  # flat: see model.build
    assert np.allclose(np.asarray(core(pixels)), np.asarray(served(raw)), atol=1e-6)
    assert np.array_equal(np.asarray(served(raw)), np.asarray(served(raw)))


def test_relu_after_pooling_gives_the_textbook_block_exactly():
    """conv -> pool -> relu is computed instead of conv -> relu -> pool; they must agree."""
    cfg = Config().replace(image_size=16, conv_blocks=1, convs_per_block=2, dense_units=0, dropout=0.0)
    core = model.classifier(cfg)
    x = np.random.uniform(0, 1, (3, 16, 16, 1)).astype("float32")
    h = core.get_layer("relu1_1")(core.get_layer("conv1_1")(x))
    h = core.get_layer("pool1")(keras.activations.relu(core.get_layer("conv1_2")(h)))
    expected = core.get_layer("digit")(core.get_layer("flatten")(h))
    assert np.allclose(np.asarray(core(x)), np.asarray(expected), atol=1e-6)


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


@pytest.mark.parametrize("changes", [{}, {"color_mode": "rgb", "batch_norm": True, "conv_blocks": 4,
                                          "convs_per_block": 2, "kernel_size": 5},
                                     {"pooling": "global_avg", "dense_units": 0},
                                     {"hand_aware": True}])
def test_memory_estimate_counts_the_parameters_keras_builds(changes):
    cfg = Config().replace(**changes)
    params, need = model.memory_estimate(cfg)
    assert params == model.classifier(cfg).count_params()
    assert need > params * 16  # weights, gradients, two Adam slots, plus activations


def test_a_model_far_too_large_is_refused_before_it_is_built(monkeypatch):
    monkeypatch.setattr(model.layers, "Conv2D", lambda *a, **k: pytest.fail("built before the memory check"))
    huge = Config().replace(image_size=128, filters_1=512, filters_2=512, dense_units=4096, batch_size=4096)
    with pytest.raises(UserError, match=r"model too large for this machine: .* GiB .* GiB of memory") as info:
        model.classifier(huge)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("limit_mb, shown", [
    ("1", "but 1.0 MiB of memory is available"),  # the seed CNN needs ~26 MiB: shown in MiB, not "0.0 GiB"
    ("0.5", "but 0.5 MiB of memory is available"),
])
def test_memory_message_shows_mib_below_one_gib(limit_mb, shown, monkeypatch):
    monkeypatch.setenv("ASL_SWEEP_MEMORY_LIMIT_MB", limit_mb)
    with pytest.raises(UserError) as info:
        model.check_memory(Config())
    assert shown in str(info.value) and "0.0 GiB" not in str(info.value)
    assert re.search(r"needs about [1-9][\d.]* MiB", str(info.value))


def test_memory_sizes_read_in_mib_then_gib():
    assert [runtime.size_text(n) for n in (2**20, 512 * 2**20, 2**30, 3.5 * 2**30)] == [
        "1.0 MiB", "512.0 MiB", "1.0 GiB", "3.5 GiB"]


def test_memory_limit_comes_from_the_environment_then_the_machine(monkeypatch, tmp_path):
    monkeypatch.setenv("ASL_SWEEP_MEMORY_LIMIT_MB", "1")
    assert runtime.available_memory() == 2**20
    with pytest.raises(UserError, match="ASL_SWEEP_MEMORY_LIMIT_MB"):
        model.classifier(Config())  # the seed CNN needs ~26 MiB
    monkeypatch.setenv("ASL_SWEEP_MEMORY_LIMIT_MB", "lots")
    with pytest.raises(UserError, match="environment variable ASL_SWEEP_MEMORY_LIMIT_MB must be a number, got 'lots'"):
        model.classifier(Config())
    monkeypatch.delenv("ASL_SWEEP_MEMORY_LIMIT_MB")
    monkeypatch.setattr(runtime, "CGROUP", tmp_path)  # a container allowed 512 MiB, 100 MiB of it in use
    (tmp_path / "memory.max").write_text(f"{512 * 2**20}\n")
    (tmp_path / "memory.current").write_text(f"{100 * 2**20}\n")
    assert runtime.available_memory() == 412 * 2**20
    (tmp_path / "memory.max").write_text("max\n")
    assert runtime.available_memory() > 412 * 2**20


def test_per_photo_standardization_makes_exposure_and_contrast_irrelevant():
    net = model.classifier(Config().replace(image_size=16, normalize="image", dense_units=8))
    x = np.random.default_rng(0).uniform(0.2, 0.8, (2, 16, 16, 1)).astype("float32")
    base = net.predict_on_batch(x)
    for changed in (x * 0.5, (x - x.mean()) * 0.5 + x.mean(), x + 0.1):
        assert np.allclose(net.predict_on_batch(changed.astype("float32")), base, atol=1e-4)


def test_robustness_augmentations_are_built_in_layers_and_train_only():
    cfg = Config().replace(image_size=16, flip=True, brightness=0.3, contrast=0.3, rotate=20, normalize="image")
    net = model.build(cfg)
    names = {layer.name for layer in net.layers}
    assert {"aug_flip", "aug_brightness", "aug_contrast", "aug_rotate", "standardize"} <= names
    x = np.random.default_rng(1).uniform(0, 255, (2, 40, 40, 3)).astype("float32")
    assert np.allclose(net.predict_on_batch(x), net.predict_on_batch(x))  # serving is deterministic


def test_soft_accuracy_is_the_mean_probability_of_the_true_digit_and_ranks_runs_that_tie_on_accuracy():
    cfg = Config().replace(image_size=16, conv_blocks=2)
    net = model.compiled_model(cfg, train_images=8)
    x = np.random.default_rng(0).uniform(0, 1, (8, 16, 16, 1)).astype("float32")
    y = np.arange(8) % 10
    onehot = np.eye(10, dtype="float32")[y]
    scores = net.evaluate(x, onehot, return_dict=True, verbose=0)
    probs = np.asarray(net(x, training=False))
    assert scores["soft_accuracy"] == pytest.approx(probs[np.arange(8), y].mean(), rel=1e-5)
    sure, unsure = np.eye(10)[[3, 5]] * 0.99 + 0.001, np.eye(10)[[3, 5]] * 0.5 + 0.05
    right = np.eye(10)[[3, 5]]
    assert np.asarray(model.true_class_probability(right, sure)).mean() > \
        np.asarray(model.true_class_probability(right, unsure)).mean()  # both 100% accurate; still ranked


def test_hand_aware_trains_on_both_hands_as_labelled_classes_and_serves_their_sum(tmp_path):
    cfg = Config().replace(image_size=16, conv_blocks=2, hand_aware=True, augment=0.1, normalize="image")
    x = np.random.default_rng(0).uniform(0, 1, (3, 16, 16, 1)).astype("float32")
    doubled, t = model.targets(cfg, x, np.array([7, 8, 0]))
    assert np.array_equal(doubled[3:], x[:, :, ::-1]) and np.array_equal(doubled[:3], x)
    assert list(t.argmax(axis=1)) == [7, 8, 0, 17, 18, 10]
    net = model.compiled_model(cfg, train_images=3)
    net.fit(doubled, t, epochs=1, verbose=0)
    hands = np.asarray(net(x, training=False))
    assert hands.shape == (3, 20)
    served = model.build(cfg, net)
    assert served.get_layer("digit").trainable is False
    served.save(tmp_path / "m.keras")
    raw = np.random.default_rng(1).uniform(0, 255, (2, 40, 30, 3)).astype("float32")
    again = model.load(str(tmp_path / "m.keras"))
    probs = np.asarray(again.predict_on_batch(raw))  # inference mode: no random augmentation
    inner = np.asarray(net(preprocessing.preprocessor(cfg)(raw), training=False))
    assert probs.shape == (2, 10) and np.allclose(probs, inner[:, :10] + inner[:, 10:], atol=1e-5)
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    scores = net.evaluate(doubled, t, return_dict=True, verbose=0)  # accuracy counts the digit, either hand
    folded = model.digits(np.asarray(net(doubled, training=False)))
    assert scores["accuracy"] == pytest.approx((folded.argmax(axis=1) == [7, 8, 0] * 2).mean())
    assert scores["soft_accuracy"] == pytest.approx(folded[np.arange(6), [7, 8, 0] * 2].mean(), rel=1e-5)
