"""Shared fixtures: every test runs offline in its own working directory, cache and ledger."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from asl_sweep import console

# The same TensorFlow kernels as the product (asl_sweep.runtime.setup), before anything imports TensorFlow.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

# Absolute at import: tests chdir into tmp folders, and `make` may pass a relative (or empty) path.
REAL_DATA = Path(os.environ.get("ASL_SWEEP_DATA_DIR")
                 or Path(__file__).resolve().parents[2] / "shared/data/sign-language-digits").expanduser().resolve()
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
TINY = {"image_size": 16, "filters_1": 4, "filters_2": 8, "dense_units": 16, "epochs": 1, "batch_size": 16}


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Offline wandb, cache, ledger and wandb files all under this test's tmp dir."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("ASL_SWEEP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ASL_SWEEP_LEDGER", str(work / "asl-sweep.db"))
    monkeypatch.delenv("ASL_SWEEP_DATA_DIR", raising=False)
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(work))
    for var, sub in (("WANDB_CACHE_DIR", ".cache"), ("WANDB_CONFIG_DIR", ".config"), ("WANDB_DATA_DIR", ".data")):
        monkeypatch.setenv(var, str(work / "wandb" / sub))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    console.install()  # the library's logs on the terminal, as every entry point shows them
    return work


def make_dataset(root: Path, signers: int = 6, size: int = 24, seed: int = 0, *, layout: str = "Dataset") -> Path:
    """Synthetic signers: each photographs digits 0..9 in order (consecutive numbers), a learnable pattern per digit."""
    rng = np.random.default_rng(seed)
    base = root / layout if layout else root
    for d in range(10):
        (base / str(d)).mkdir(parents=True, exist_ok=True)
    number = 1000
    for _ in range(signers):
        tint = rng.integers(0, 60, size=3)
        for d in range(10):
            img = rng.integers(0, 40, size=(size, size, 3)) + tint
            r, c = divmod(d, 4)
            img[r * 6 + 2: r * 6 + 7, c * 6 + 1: c * 6 + 6] = 230
            Image.fromarray(img.clip(0, 255).astype("uint8")).save(base / str(d) / f"IMG_{number}.png")
            number += 1
        number += int(rng.integers(0, 5))
    return root


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data")


def skip_unless_ci(reason: str) -> None:
    """Skip a test whose tool or data is missing here; in CI (`CI` set) fail instead, so a lost dependency
    can never turn into a silent skip there."""
    if IN_CI:
        pytest.fail(f"{reason}; CI must run this test")
    pytest.skip(reason)


@pytest.fixture
def real_data_dir() -> Path:
    if not (REAL_DATA / "Dataset").is_dir():
        skip_unless_ci(f"real dataset not found at {REAL_DATA} (set ASL_SWEEP_DATA_DIR)")
    return REAL_DATA


def start_postgres(password: str | None = None):
    """A PostgreSQL server started for the tests; in CI a server that cannot start fails them."""
    from tests.pg import PostgresServer

    try:
        return PostgresServer(password)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        skip_unless_ci(f"cannot start PostgreSQL: {exc}")


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL server for the session, trusting loopback clients."""
    server = start_postgres()
    yield server
    server.close()


# a password with every character a URL must encode, and words no other file holds, to grep for
PASSWORD = "Hunter2%Sweep/K@y:42"


@pytest.fixture(scope="session")
def password_server():
    """A PostgreSQL server that asks every client for PASSWORD (scram-sha-256), as a shared one does."""
    server = start_postgres(PASSWORD)
    yield server
    server.close()


def database_name(request) -> str:
    """A name of its own for this test's database."""
    return "t_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:40] + f"_{next(DB_NUMBERS)}"


@pytest.fixture
def postgres_url(postgres_server, request) -> str:
    """A fresh database of its own for this test."""
    return postgres_server.create_database(database_name(request))


DB_NUMBERS = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_location(request, monkeypatch, isolated) -> str:
    """The ledger contract, run against both backends: ASL_SWEEP_LEDGER is set to the one under test."""
    location = str(isolated / "asl-sweep.db") if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    monkeypatch.setenv("ASL_SWEEP_LEDGER", location)
    return location


def hand_photo(size: int = 100, seed: int = 0, *, ring: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A hand-like blob on a plain light wall, as the dataset photographs it: a skin-coloured palm, four
    fingers and an arm to the bottom edge, a vignetted grey wall, JPEG-like noise. Returns (RGB uint8 photo,
    the true boolean mask). With `ring`, thumb and finger close a large hole through which the wall shows."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    truth = ((yy - 0.62) ** 2 / 0.05 + (xx - 0.5) ** 2 / 0.035 < 1) | ((yy > 0.7) & (np.abs(xx - 0.5) < 0.14))
    for k in range(4):
        centre = 0.32 + 0.12 * k
        truth |= (yy > 0.12 + 0.04 * abs(k - 1.5)) & (yy < 0.6) & (np.abs(xx - centre) < 0.04)
    if ring:
        truth &= ~(((yy - 0.62) ** 2 + (xx - 0.5) ** 2) < 0.012)
    wall = 205 * (1 - 0.3 * ((yy - 0.5) ** 2 + (xx - 0.5) ** 2))[..., None] * np.array([0.97, 0.98, 1.0])
    skin = np.array([205, 150, 110]) * rng.uniform(0.8, 1.1)
    img = np.where(truth[..., None], skin, wall) + rng.normal(0, 4, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8), truth
