import pytest

from asl_sweep.config import Config, from_mapping, parse_overrides, read_yaml, write_yaml
from asl_sweep.errors import UserError


def test_defaults_are_the_seed_model():
    c = Config()
    assert (c.conv_blocks, c.filters, c.dense_units, c.epochs, c.image_size) == (2, [32, 64], 128, 15, 32)
    assert c.split == "signer" and c.color_mode == "grayscale"


def test_wandb_args_are_typed_and_validated():
    values = parse_overrides(["--learning_rate=0.01", "--batch_norm=True", "--conv_blocks=3", "--optimizer=sgd"])
    c = from_mapping(values)
    assert c.learning_rate == 0.01 and c.batch_norm is True and c.conv_blocks == 3 and c.optimizer == "sgd"
    assert c.filters == [32, 64, 128]


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"learnin_rate": 0.1}, "unknown config key 'learnin_rate'"),
        ({"epochs": "many"}, "'epochs'"),
        ({"epochs": 2.5}, "expected an integer"),
        ({"dropout": 0.95}, "'dropout'"),
        ({"learning_rate": 0}, "'learning_rate'"),
        ({"optimizer": "lion"}, "must be one of"),
        ({"batch_norm": "maybe"}, "'batch_norm'"),
        ({"warmup_epochs": 5, "epochs": 5}, "'warmup_epochs'"),
    ],
)
def test_bad_values_name_the_key(values, fragment):
    with pytest.raises(UserError, match=fragment):
        from_mapping(values)


def test_override_syntax_and_unknown_keys():
    with pytest.raises(UserError, match="--key=value"):
        parse_overrides(["--epochs", "3"])
    with pytest.raises(UserError, match="unknown config key 'lr'"):
        parse_overrides(["--lr=3"])


def test_wandb_internal_keys_are_ignored():
    assert from_mapping({"_wandb": {"x": 1}, "epochs": 3}).epochs == 3


def test_yaml_round_trip_and_config_defaults_form(tmp_path):
    c = Config().replace(epochs=7, dropout=0.25)
    write_yaml(c, tmp_path / "c.yaml")
    assert from_mapping(read_yaml(tmp_path / "c.yaml")) == c
    (tmp_path / "d.yaml").write_text("epochs:\n  value: 4\n  desc: W&B config-defaults form\n")
    assert from_mapping(read_yaml(tmp_path / "d.yaml")).epochs == 4
    (tmp_path / "bad.yaml").write_text("- a list\n")
    with pytest.raises(UserError, match="mapping"):
        read_yaml(tmp_path / "bad.yaml")


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400", float("inf"), float("nan")])
def test_infinite_or_nan_integers_name_the_key(value):
    with pytest.raises(UserError, match="'epochs'.*expected an integer"):
        from_mapping({"epochs": value})


@pytest.mark.parametrize(
    "content, fragment",
    [
        (bytes(range(256)) * 8, "is not a text file"),  # a binary file given as --config
        (b"epochs: 3\x00\x01", "is not a text file"),
        ("épochs: 3".encode("latin-1"), "is not a text file"),
        (b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
        (b"epochs: [1, 2", "is not valid YAML"),
        (b"- a list\n", "must be a mapping of key: value, not a list"),
        (b"just words\n", "must be a mapping of key: value, not a str"),
    ],
)
def test_bad_config_files_are_one_line_naming_the_file(tmp_path, content, fragment):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(UserError, match=fragment) as info:
        read_yaml(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_config_paths_that_are_not_files(tmp_path):
    with pytest.raises(UserError, match="is a folder, not a file"):
        read_yaml(tmp_path)
    (tmp_path / "f").write_text("epochs: 3")
    with pytest.raises(UserError, match="not found"):
        read_yaml(tmp_path / "f" / "c.yaml")
    with pytest.raises(UserError, match="over 10 MB"):
        read_yaml("/dev/zero")  # endless: read with a bound, not whole


def test_utf16_yaml_with_a_byte_order_mark_still_reads(tmp_path):
    (tmp_path / "c.yaml").write_bytes("epochs: 4\n".encode("utf-16"))
    assert read_yaml(tmp_path / "c.yaml") == {"epochs": 4}


def test_inactive_keys_are_the_parameters_a_run_does_not_use():
    from asl_sweep.config import inactive_keys

    assert inactive_keys({"conv_blocks": 2, "lr_schedule": "cosine"}) == ["filters_3", "filters_4"]
    assert inactive_keys({"conv_blocks": 4, "lr_schedule": "constant"}) == ["warmup_epochs"]
    assert inactive_keys({}) == ["filters_3", "filters_4", "warmup_epochs"]  # the defaults: 2 blocks, constant
