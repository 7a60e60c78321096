"""The one config object: defaults, and strict validation of values from any source.

Values arrive from `wandb.config`, a YAML file, or `--key=value` arguments (W&B's `${args}`),
so every key is checked against the known fields and coerced to the field's type; a bad key or
value is one `UserError` that names it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from asl_sweep.errors import UserError, one_line


def _range(lo: float, hi: float, *, lo_open: bool = False) -> dict:
    return {"range": (lo, hi, lo_open)}


def _choices(*values: str) -> dict:
    return {"choices": values}


MAX_BLOCKS = 4
MAX_YAML_BYTES = 10_000_000  # a config or sweep file is a few kB; a bigger one is a wrong path


@dataclass(frozen=True)
class Config:
    """Everything a run depends on. Defaults reproduce the seed article's CNN."""

    # data
    image_size: int = field(default=32, metadata=_range(8, 128))
    color_mode: str = field(default="grayscale", metadata=_choices("grayscale", "rgb"))
    split: str = field(default="signer", metadata=_choices("signer", "random"))
    val_fraction: float = field(default=0.2, metadata=_range(0.05, 0.5))
    fold: int = field(default=0, metadata=_range(0, 19))
    max_per_class: int = field(default=0, metadata=_range(0, 10_000))
    # model
    conv_blocks: int = field(default=2, metadata=_range(1, MAX_BLOCKS))
    filters_1: int = field(default=32, metadata=_range(1, 512))
    filters_2: int = field(default=64, metadata=_range(1, 512))
    filters_3: int = field(default=128, metadata=_range(1, 512))
    filters_4: int = field(default=128, metadata=_range(1, 512))
    convs_per_block: int = field(default=1, metadata=_range(1, 3))
    kernel_size: int = field(default=3, metadata=_range(1, 7))
    batch_norm: bool = False
    pooling: str = field(default="flatten", metadata=_choices("flatten", "global_avg"))
    dense_units: int = field(default=128, metadata=_range(0, 4096))
    dropout: float = field(default=0.5, metadata=_range(0.0, 0.9))
    # training
    optimizer: str = field(default="adam", metadata=_choices("adam", "adamw", "sgd", "rmsprop"))
    learning_rate: float = field(default=1e-3, metadata=_range(0.0, 1.0, lo_open=True))
    weight_decay: float = field(default=0.0, metadata=_range(0.0, 0.5))
    lr_schedule: str = field(default="constant", metadata=_choices("constant", "cosine"))
    warmup_epochs: int = field(default=0, metadata=_range(0, 100))
    label_smoothing: float = field(default=0.0, metadata=_range(0.0, 0.5))
    augment: float = field(default=0.0, metadata=_range(0.0, 0.5))
    rotate: float = field(default=0.0, metadata=_range(0.0, 45.0))
    flip: bool = False
    hand_aware: bool = False
    background: float = field(default=0.0, metadata=_range(0.0, 1.0))
    brightness: float = field(default=0.0, metadata=_range(0.0, 0.9))
    contrast: float = field(default=0.0, metadata=_range(0.0, 0.9))
    normalize: str = field(default="none", metadata=_choices("none", "image"))
    robust_estimate: bool = True
    checkpoint_metric: str = field(default="val_accuracy", metadata=_choices("val_accuracy", "val_score", "val_soft_accuracy"))
    batch_size: int = field(default=32, metadata=_range(1, 4096))
    epochs: int = field(default=15, metadata=_range(1, 1000))
    seed: int = field(default=0, metadata=_range(0, 2**31 - 1))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "Config":
        return from_mapping({**self.to_dict(), **changes}, source="override")

    @property
    def filters(self) -> list[int]:
        """Filters of the active conv blocks, in order."""
        return [getattr(self, f"filters_{i + 1}") for i in range(self.conv_blocks)]


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Config)}
KNOWN_KEYS: frozenset[str] = frozenset(FIELDS)


def inactive_keys(values: Mapping[str, Any]) -> list[str]:
    """Keys that cannot change a run with these values (a conditional search space): the filters of conv
    blocks the model does not have, and warm-up without the cosine schedule (model.make_optimizer).
    Missing keys take their defaults, so a W&B run's partial config works too."""
    def value(key: str) -> Any:
        return values.get(key, FIELDS[key].default)

    try:
        blocks = int(value("conv_blocks"))
    except (TypeError, ValueError):
        return []
    out = [f"filters_{i}" for i in range(blocks + 1, MAX_BLOCKS + 1)]
    if value("lr_schedule") != "cosine":
        out.append("warmup_epochs")
    return out


def _coerce(key: str, value: Any, source: str) -> Any:
    """Turn `value` into the type of field `key`, or raise naming the key and the source."""
    f = FIELDS[key]
    kind = f.type if isinstance(f.type, str) else f.type.__name__

    def bad(why: str) -> UserError:
        return UserError(f"config key '{key}' from {source}: {why}, got {value!r}")

    if kind == "bool":
        if isinstance(value, bool):
            out: Any = value
        elif isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
            out = value.strip().lower() in ("true", "1", "yes")
        elif isinstance(value, int) and value in (0, 1):
            out = bool(value)
        else:
            raise bad("expected true or false")
    elif kind == "int":
        if isinstance(value, bool):
            raise bad("expected an integer")
        try:
            num = float(value) if isinstance(value, str) else value
        except ValueError:
            raise bad("expected an integer") from None
        if not isinstance(num, (int, float)) or not math.isfinite(num) or num != int(num):
            raise bad("expected an integer")
        out = int(num)
    elif kind == "float":
        if isinstance(value, bool):
            raise bad("expected a number")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise bad("expected a number") from None
        if not math.isfinite(out):
            raise bad("expected a finite number")
    else:
        if not isinstance(value, str):
            raise bad("expected a string")
        out = value.strip()

    if "choices" in f.metadata and out not in f.metadata["choices"]:
        raise bad(f"must be one of {', '.join(f.metadata['choices'])}")
    if "range" in f.metadata:
        lo, hi, lo_open = f.metadata["range"]
        if out < lo or out > hi or (lo_open and out == lo):
            raise bad(f"must be in {'(' if lo_open else '['}{lo}, {hi}]")
    return out


def folds(val_fraction: float) -> int:
    """How many signer folds the data is cut into: each fold in turn is a validation set of that fraction."""
    return max(2, round(1 / val_fraction))


def from_mapping(values: Mapping[str, Any], source: str = "config", base: Config | None = None) -> Config:
    """Validate `values` (unknown keys rejected) and apply them over `base` (or the defaults).

    Keys that start with `_` are wandb's own bookkeeping (`_wandb`) and are ignored.
    """
    unknown = sorted(k for k in values if k not in KNOWN_KEYS and not str(k).startswith("_"))
    if unknown:
        raise UserError(
            f"unknown config key '{unknown[0]}' from {source}"
            + (f" (also: {', '.join(unknown[1:])})" if unknown[1:] else "")
            + f"; known keys: {', '.join(sorted(KNOWN_KEYS))}"
        )
    merged = (base or Config()).to_dict()
    merged.update({k: _coerce(k, v, source) for k, v in values.items() if k in KNOWN_KEYS})
    config = Config(**merged)
    if config.warmup_epochs >= config.epochs and config.warmup_epochs > 0:
        raise UserError(f"config key 'warmup_epochs' from {source}: must be less than epochs ({config.epochs})")
    if config.fold and config.split != "signer":
        raise UserError(f"config key 'fold' from {source}: needs split=signer (a random split has no folds)")
    if config.fold >= folds(config.val_fraction):
        raise UserError(f"config key 'fold' from {source}: must be less than {folds(config.val_fraction)}, the number "
                        f"of signer folds val_fraction={config.val_fraction} makes")
    if config.checkpoint_metric == "val_score" and not config.robust_estimate:
        raise UserError(f"config key 'robust_estimate' from {source}: checkpoint_metric=val_score is computed from "
                        "the per-epoch robustness estimate; set robust_estimate=true or checkpoint on another metric")
    if config.hand_aware and config.flip:
        raise UserError(f"config key 'hand_aware' from {source}: trains on every photo and its mirror image already; "
                        "set flip=false")
    return config


def parse_overrides(args: Iterable[str]) -> dict[str, str]:
    """Parse W&B `${args}`-style `--key=value` arguments (strings; typed by `from_mapping`)."""
    out: dict[str, str] = {}
    for arg in args:
        if not arg.startswith("--") or "=" not in arg:
            raise UserError(f"unexpected argument '{arg}': overrides are written --key=value")
        key, value = arg[2:].split("=", 1)
        if key not in KNOWN_KEYS:
            raise UserError(f"unknown config key '{key}' from command line; known keys: {', '.join(sorted(KNOWN_KEYS))}")
        out[key] = value
    return out


def load_yaml_file(path: str | Path, what: str) -> Any:
    """Parse a YAML file; a missing, unreadable, binary, huge or malformed file is one line naming
    the `what` and the path (the same reader serves config files and sweep files)."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_YAML_BYTES + 1)  # bounded: a wrong path may be a huge file or /dev/zero
    except (FileNotFoundError, NotADirectoryError):
        raise UserError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a folder, not a file") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_YAML_BYTES:
        raise UserError(f"{what} {path} is over {MAX_YAML_BYTES // 1_000_000} MB: too large to be a YAML file")
    try:
        return yaml.safe_load(raw)  # bytes: YAML's own encoding detection (UTF-8, or UTF-16 with a BOM)
    except yaml.reader.ReaderError as exc:
        raise UserError(f"{what} {path} is not a text file (binary, or not UTF-8): "
                        f"{exc.reason} at byte {exc.position}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{what} {path} is not valid YAML: {one_line(exc)}") from None
    except RecursionError:
        raise UserError(f"{what} {path} is nested too deeply to be a config") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a config YAML: flat `key: value`, or W&B's config-defaults form `key: {value: v}`."""
    raw = load_yaml_file(path, "config file")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"config file {path} must be a mapping of key: value, not a {type(raw).__name__}")
    return {k: (v["value"] if isinstance(v, dict) and "value" in v else v) for k, v in raw.items()}


def write_yaml(config: Config, path: str | Path) -> None:
    """Write a flat YAML that `asl-sweep train --config` reads back to the same Config."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
