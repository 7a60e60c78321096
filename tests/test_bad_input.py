"""Every mistake a user can make is one clear line, before it costs a run (issue 10).

One row per mistake: the command, a setup that plants the mistake in a fresh world (a dataset, a
warm cache, a previous export, a ledger with a sweep), and words the error line must contain. Every
row checks the same contract: exit code 2, no traceback, at most 3 lines on stderr, the words,
nothing already recorded lost or changed (the export folder's and the cache's files byte for byte,
the ledger's rows), and no W&B run started. Rows marked `subprocess` run the real `python -m ...`
(the contract end to end, ~5 s each for TensorFlow's import); the others call the same entry point
in this process.

To add a case, append a `Case` to CASES; `World` has the paths and a few helpers to plant mistakes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml

from asl_sweep.records import Run
from tests.conftest import make_dataset
from tests.helpers_report import synthetic_sweep
from tests.test_data import bomb_png

REPO = Path(__file__).resolve().parents[1]
EXPORT_FILES = ("model.keras", "config.yaml", "metrics.json", "README.md")


@dataclass
class World:
    """A user's machine after some work: what a mistake must not damage, and where to plant one."""

    root: Path
    work: Path  # the working directory commands run in
    data: Path  # a valid dataset (Dataset/0..9)
    cache: Path  # ASL_SWEEP_CACHE_DIR, holding a decoded-array entry
    export: Path  # a previous export folder
    ledger: Path  # ASL_SWEEP_LEDGER, holding `sweep_id`
    sweep_id: str
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the command

    @property
    def classes(self) -> Path:
        return self.data / "Dataset"

    def file(self, name: str, content: bytes = b"just a file\n") -> str:
        """A file in the working directory (to stand where a folder, or a YAML, is expected)."""
        path = self.work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return str(path)

    def folder(self, name: str) -> str:
        path = self.work / name
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

    def bare_sweep(self) -> str:
        """A second sweep whose runs have no result record (still running, or lost)."""
        return synthetic_sweep(self.ledger, runs=2)


@dataclass(frozen=True)
class Case:
    name: str
    argv: Callable[[World], list[str]]  # the command's arguments
    expect: tuple[str, ...]  # words the error output must contain
    plant: Callable[[World], object] | None = None  # plants the mistake before the command runs
    subprocess: bool = False  # run `python -m <module>` for real, not the entry point in-process
    module: str = "asl_sweep"  # or "asl_sweep.train": the program a sweep's `command` launches


def bad_png(w: World, digit: str = "4") -> Path:
    path = w.classes / digit / "IMG_9999.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return path


def empty_class(w: World) -> None:
    for p in (w.classes / "7").iterdir():
        p.unlink()


def arrays_is_a_file(w: World) -> None:
    shutil.rmtree(w.cache / "arrays")
    (w.cache / "arrays").write_text("x")


def data(w: World, *more: str) -> list[str]:
    return ["data", "--data-dir", str(w.data), *more]


def image(w: World) -> str:
    return str(w.classes / "0" / "IMG_1000.png")


def binary(w: World, name: str) -> str:
    return w.file(name, bytes(range(256)) * 64)


HUGE = ["--image_size=128", "--filters_1=512", "--filters_2=512", "--dense_units=4096", "--batch_size=4096"]
SMOKE = yaml.safe_load((REPO / "sweeps/smoke.yaml").read_text())


def sweep_file(w: World, **changes) -> str:
    """sweeps/smoke.yaml with `changes` (a None value removes the key), as a file in the working folder."""
    config = {**SMOKE, **changes}
    return w.file("sweep.yaml", yaml.safe_dump({k: v for k, v in config.items() if v is not None}).encode())


def other_ledger(w: World, path: Path) -> None:
    """Point ASL_SWEEP_LEDGER at `path`: the world's own ledger must stay as it is."""
    w.env["ASL_SWEEP_LEDGER"] = str(path)


def smoke_sweep(w: World) -> str:
    """A sweep of sweeps/smoke.yaml in the world's ledger, with no run yet."""
    from asl_sweep.ledger import Ledger

    with Ledger(w.ledger) as ledger:
        return ledger.create_sweep(SMOKE, "smoke")


def running_sweep(w: World) -> str:
    """A sweep in the world's ledger with a run still running."""
    from asl_sweep import controller
    from asl_sweep.ledger import Ledger

    sid = smoke_sweep(w)
    with Ledger(w.ledger) as ledger:
        controller.claim_next(ledger, sid, "elsewhere")
    return sid


def program_sweep(w: World) -> str:
    """A sweep in the world's ledger whose `program` is not there."""
    from asl_sweep.ledger import Ledger

    with Ledger(w.ledger) as ledger:
        return ledger.create_sweep({**{k: v for k, v in SMOKE.items() if k != "command"}, "program": "train_nope.py"},
                                   "program")


HELD: list = []  # sockets a row plants, kept open until the test session ends


def port_in_use(w: World) -> int:
    """A port some other program listens on."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    HELD.append(sock)
    return sock.getsockname()[1]


def unreachable_wandb(w: World) -> None:
    """An API key, no WANDB_MODE (empty, as `export WANDB_MODE=` leaves it) and W&B's URL on a closed port."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    w.env.update(WANDB_MODE="", WANDB_API_KEY="x" * 40, WANDB_BASE_URL=f"http://127.0.0.1:{port}")


CASES: list[Case] = [
    # ---- data: where the images come from
    Case("data-dir missing", lambda w: ["data", "--data-dir", str(w.work / "nope")], ("does not exist", "nope"),
         subprocess=True),
    Case("data-dir is a file", lambda w: ["data", "--data-dir", w.file("photos.zip")],
         ("--data-dir", "is a file, not a folder")),
    Case("ASL_SWEEP_DATA_DIR is a file", lambda w: ["data"], ("ASL_SWEEP_DATA_DIR", "is a file"),
         plant=lambda w: w.env.update(ASL_SWEEP_DATA_DIR=w.file("data.txt"))),
    Case("data-dir without the layout", lambda w: ["data", "--data-dir", w.folder("empty")], ("no dataset layout",)),
    Case("class folder missing", data, ("missing class folder", "3"), plant=lambda w: shutil.rmtree(w.classes / "3")),
    Case("class folder empty", data, ("class folder is empty", "7"), plant=empty_class),
    Case("non-image file in a class folder", data, ("not an image file", "notes.txt"),
         plant=lambda w: (w.classes / "2" / "notes.txt").write_text("hi")),
    Case("corrupt image", data, ("cannot decode image", "IMG_9999.png"), plant=bad_png, subprocess=True),
    Case("broken symbolic link in a class folder", data, ("broken symbolic link", "IMG_8888.png"),
         plant=lambda w: (w.classes / "5" / "IMG_8888.png").symlink_to(w.root / "gone.png")),
    Case("decompression bomb", data, ("IMG_7777.png", "too large to decode", "decompression bomb"),
         plant=lambda w: bomb_png(w.classes / "6" / "IMG_7777.png", 30_000), subprocess=True),
    Case("image size out of range", lambda w: data(w, "--image-size", "0"), ("image_size", "[8, 128]")),
    Case("image size not a number", lambda w: data(w, "--image-size", "big"), ("--image-size", "invalid int value")),
    # ---- the cache
    Case("cache folder is a file", data, ("ASL_SWEEP_CACHE_DIR", "cache-file is a file"),
         plant=lambda w: w.env.update(ASL_SWEEP_CACHE_DIR=w.file("cache-file"))),
    Case("cache arrays folder is a file", data, ("cache folder", "arrays is not a folder"), plant=arrays_is_a_file,
         subprocess=True),
    # ---- our environment variables
    Case("ASL_SWEEP_THREADS not a number (train entry point)", lambda w: ["--epochs=1", "--data-dir", str(w.data)],
         ("ASL_SWEEP_THREADS", "whole number", "'abc'"), plant=lambda w: w.env.update(ASL_SWEEP_THREADS="abc"),
         subprocess=True, module="asl_sweep.train"),
    Case("ASL_SWEEP_THREADS fractional", lambda w: ["--epochs=1"], ("ASL_SWEEP_THREADS", "whole number", "'2.5'"),
         plant=lambda w: w.env.update(ASL_SWEEP_THREADS="2.5"), module="asl_sweep.train"),
    Case("ASL_SWEEP_THREADS not a number (asl-sweep command)", data, ("ASL_SWEEP_THREADS", "whole number"),
         plant=lambda w: w.env.update(ASL_SWEEP_THREADS="abc"), subprocess=True),
    # ---- train: config file and --key=value
    Case("config file is binary", lambda w: ["train", "--config", binary(w, "model.bin")],
         ("config file", "model.bin", "not a text file"), subprocess=True),
    Case("config file missing", lambda w: ["train", "--config", str(w.work / "nope.yaml")],
         ("config file not found", "nope.yaml")),
    Case("config file is a folder", lambda w: ["train", "--config", w.folder("configs")],
         ("config file", "configs", "is a folder")),
    Case("config file below a file", lambda w: ["train", "--config", w.file("a-file") + "/c.yaml"],
         ("config file not found",)),
    Case("config file is a list", lambda w: ["train", "--config", w.file("list.yaml", b"- epochs: 3\n")],
         ("list.yaml", "must be a mapping", "not a list")),
    Case("config file is not YAML", lambda w: ["train", "--config", w.file("bad.yaml", b"epochs: [1, 2\n")],
         ("bad.yaml", "not valid YAML")),
    Case("config file too deep", lambda w: ["train", "--config", w.file("deep.yaml", b"[" * 50_000 + b"]" * 50_000)],
         ("deep.yaml", "nested too deeply")),
    Case("config file with an unknown key", lambda w: ["train", "--config", w.file("c.yaml", b"learnin_rate: 0.1\n")],
         ("unknown config key 'learnin_rate'", "c.yaml")),
    Case("config file with a bad value", lambda w: ["train", "--config", w.file("c.yaml", b"epochs: many\n")],
         ("'epochs'", "c.yaml", "expected an integer")),
    Case("override not a number", lambda w: ["train", "--epochs=abc"], ("'epochs'", "expected an integer")),
    Case("override infinite", lambda w: ["train", "--epochs=inf"], ("'epochs'", "expected an integer"),
         subprocess=True),
    Case("override nan", lambda w: ["train", "--learning_rate=nan"], ("'learning_rate'", "finite")),
    Case("override unknown key", lambda w: ["train", "--lr=3"], ("unknown config key 'lr'",)),
    Case("override without =", lambda w: ["train", "--epochs", "3"], ("--key=value",)),
    Case("override out of range", lambda w: ["train", "--dropout=2"], ("'dropout'", "must be in")),
    Case("robustness: unknown normalize", lambda w: ["train", "--normalize=batch"], ("'normalize'", "none, image")),
    Case("robustness: rotate out of range", lambda w: ["train", "--rotate=90"], ("'rotate'", "must be in")),
    Case("robustness: checkpoint on a metric that is not kept", lambda w: ["train", "--checkpoint_metric=val_loss"],
         ("'checkpoint_metric'", "val_accuracy, val_score, val_soft_accuracy")),
    Case("fold past the last signer fold", lambda w: ["train", "--fold=5"], ("'fold'", "must be less than 5")),
    Case("fold of a random split", lambda w: ["train", "--fold=1", "--split=random"], ("'fold'", "needs split=signer")),
    Case("robustness: checkpoint on val_score without its estimate",
         lambda w: ["train", "--checkpoint_metric=val_score", "--robust_estimate=false"],
         ("'robust_estimate'", "checkpoint_metric=val_score", "set robust_estimate=true")),
    Case("robust_estimate not a bool", lambda w: ["train", "--robust_estimate=sometimes"], ("'robust_estimate'",)),
    Case("robustness: hand_aware with random flips", lambda w: ["train", "--hand_aware=true", "--flip=true"],
         ("'hand_aware'", "set flip=false")),
    Case("background share above 1", lambda w: ["train", "--background=1.5"], ("'background'", "must be in [0.0, 1.0]")),
    Case("background share negative", lambda w: ["train", "--background=-0.1"], ("'background'", "must be in")),
    Case("background not a number", lambda w: ["train", "--background=wood"], ("'background'", "expected a number")),
    Case("background in a config file as a list", lambda w: ["train", "--config", w.file("c.yaml", b"background: [0.5]\n")],
         ("'background'", "expected a number")),
    Case("override not a choice", lambda w: ["train", "--optimizer=lion"], ("'optimizer'", "must be one of")),
    Case("train data-dir is a file", lambda w: ["train", "--epochs=1", "--data-dir", w.file("photos.zip")],
         ("--data-dir", "is a file, not a folder"), subprocess=True),
    Case("model far too large for memory", lambda w: ["train", *HUGE, "--data-dir", str(w.data)],
         ("model too large for this machine", "GiB", "batch_size 4096"), subprocess=True,),
    # ---- export
    Case("export out below a file", lambda w: ["export", w.sweep_id, "--out", w.file("a-file") + "/sub"],
         ("a-file is a file",), subprocess=True),
    Case("export out is a file", lambda w: ["export", w.sweep_id, "--out", w.file("a-file")], ("is not a folder",)),
    Case("export over a previous export without --force", lambda w: ["export", w.sweep_id, "--out", str(w.export)],
         ("not empty", "--force")),
    Case("export --force over the working folder", lambda w: ["export", w.sweep_id, "--out", ".", "--force"],
         ("not a previous export", "even with --force")),
    Case("export unknown sweep", lambda w: ["export", "zzzz9999", "--out", str(w.work / "new")],
         ("unknown sweep id 'zzzz9999'",)),
    Case("export sweep without records", lambda w: ["export", w.bare_sweep(), "--out", str(w.work / "new")],
         ("no result record yet",)),
    Case("export sweep whose model is damaged", lambda w: ["export", w.sweep_id, "--out", str(w.work / "new")],
         ("cannot load model",), plant=lambda w: (w.root / "runs" / "model.keras").write_bytes(b"not a model")),
    Case("export --retrain with a missing data-dir",
         lambda w: ["export", w.sweep_id, "--out", str(w.export), "--force", "--retrain", "--data-dir", "nope"],
         ("--data-dir", "does not exist")),
    # ---- predict
    Case("predict with no model", lambda w: ["predict", str(w.work / "nowhere"), image(w)], ("model file not found",)),
    Case("predict with a damaged model", lambda w: ["predict", str(w.export), image(w)], ("cannot load model",),
         plant=lambda w: (w.export / "model.keras").write_bytes(b"PK garbage"), subprocess=True),
    Case("predict a missing image", lambda w: ["predict", str(w.export), str(w.work / "nope.jpg")],
         ("image file not found", "nope.jpg")),
    Case("predict a folder", lambda w: ["predict", str(w.export), w.folder("photos")], ("photos", "is a folder")),
    Case("predict a corrupt image", lambda w: ["predict", str(w.export), str(bad_png(w))],
         ("cannot decode image", "IMG_9999.png")),
    Case("predict a decompression bomb",
         lambda w: ["predict", str(w.export), str(bomb_png(w.work / "huge.png", 30_000))],
         ("huge.png", "too large to decode")),
    # ---- evaluate
    Case("evaluate out below a file",
         lambda w: ["evaluate", str(w.export), "--data-dir", str(w.data), "--out", w.file("a-file") + "/e.json"],
         ("a-file is not a folder",), subprocess=True),
    Case("evaluate out is a folder",
         lambda w: ["evaluate", str(w.export), "--data-dir", str(w.data), "--out", w.folder("results")],
         ("results is a folder",)),
    Case("evaluate data-dir missing", lambda w: ["evaluate", str(w.export), "--data-dir", str(w.work / "nope")],
         ("does not exist",)),
    Case("evaluate data-dir is a file", lambda w: ["evaluate", str(w.export), "--data-dir", w.file("photos.zip")],
         ("is a file, not a folder",)),
    Case("evaluate a folder with a corrupt image", lambda w: ["evaluate", str(w.export), "--data-dir", str(w.data)],
         ("cannot decode image", "IMG_9999.png"), plant=lambda w: bad_png(w, "1")),
    # ---- sweep files go through the same YAML reader as config files
    Case("sweep file is binary", lambda w: ["sweep", binary(w, "sweep.bin")],
         ("sweep file", "sweep.bin", "not a text file")),
    Case("sweep file is a folder", lambda w: ["sweep", w.folder("sweeps")], ("sweep file", "is a folder")),
    # ---- sweep files the schema accepts but nothing here can run: refused when the sweep is created
    Case("sweep: bayes without a metric", lambda w: ["sweep", sweep_file(w, method="bayes", metric=None)],
         ("the search engine cannot run this sweep", "metric")),
    Case("sweep: grid over a continuous range", lambda w: ["sweep", sweep_file(w, method="grid")],
         ("the search engine cannot run this sweep", "learning_rate")),
    Case("sweep: hyperband without a metric",
         lambda w: ["sweep", sweep_file(w, metric=None, early_terminate={"type": "hyperband", "min_iter": 1})],
         ("the search engine cannot run this sweep",)),
    Case("sweep: a metric training never logs",
         lambda w: ["sweep", sweep_file(w, metric={"name": "val_acc", "goal": "maximize"})],
         ("metric 'val_acc' is never logged", "val_accuracy")),
    Case("sweep: ranked by val_score with the estimate that computes it off",
         lambda w: ["sweep", sweep_file(w, metric={"name": "val_score", "goal": "maximize"},
                                        parameters={**SMOKE["parameters"], "robust_estimate": {"values": [False, True]}})],
         ("metric 'val_score'", "parameter 'robust_estimate' can be false")),
    Case("sweep: method custom", lambda w: ["sweep", sweep_file(w, method="custom")], ("'method: custom'",)),
    Case("sweep: a Launch scheduler", lambda w: ["sweep", sweep_file(w, scheduler={"engine": "wandb"})],
         ("'scheduler'", "needs W&B's servers")),
    Case("sweep: ${program} without a program",
         lambda w: ["sweep", sweep_file(w, command=["${env}", "${interpreter}", "${program}", "${args}"])],
         ("uses ${program}", "no 'program'")),
    Case("sweep: unknown parameter", lambda w: ["sweep", sweep_file(w, parameters={"dropuot": {"value": 0.1}})],
         ("unknown parameter 'dropuot'",)),
    Case("sweep: bayes over two values its engine encodes alike",
         lambda w: ["sweep", sweep_file(w, method="bayes", parameters={
             **SMOKE["parameters"], "augment": {"values": [0, 0.0, 0.1]}})],
         ("parameter 'augment'", "cannot tell 0 from 0.0")),
    Case("sweep: bayes over 1 and true",
         lambda w: ["sweep", sweep_file(w, method="bayes", parameters={
             **SMOKE["parameters"], "batch_norm": {"values": [1, True]}})],
         ("parameter 'batch_norm'", "cannot tell 1 from true")),
    Case("sweep: bayes with probabilities",
         lambda w: ["sweep", sweep_file(w, method="bayes", parameters={
             **SMOKE["parameters"], "pooling": {"values": ["flatten", "global_avg"], "probabilities": [0.5, 0.5]}})],
         ("parameter 'pooling'", "'probabilities'")),
    Case("sweep: online without an API key", lambda w: ["sweep", sweep_file(w)], ("no API key",),
         plant=lambda w: w.env.update(WANDB_MODE="online", WANDB_API_KEY="", HOME=w.folder("home"))),
    Case("sweep --resume a running sweep", lambda w: ["sweep", "--resume", w.sweep_id], ("cannot resume", "running")),
    Case("sweep --pause an unknown id", lambda w: ["sweep", "--pause", "zzzz9999"], ("unknown sweep id 'zzzz9999'",)),
    Case("sweep --pause and --cancel together", lambda w: ["sweep", "--pause", "--cancel", w.sweep_id],
         ("not allowed with argument",)),
    # ---- the ledger: one line naming the file and what to do, never a sqlite traceback
    Case("ledger is not a database", lambda w: ["sweeps"], ("not an asl-sweep ledger", "notes.txt"),
         plant=lambda w: other_ledger(w, Path(w.file("notes.txt", b"shopping list\n" * 100)))),
    Case("ledger is a folder", lambda w: ["status", w.sweep_id], ("is a folder, not a file",),
         plant=lambda w: other_ledger(w, Path(w.folder("ledger.db")))),
    Case("ledger folder does not exist", lambda w: ["sweep", sweep_file(w), "--local"], ("does not exist", "gone"),
         plant=lambda w: other_ledger(w, w.work / "gone" / "asl-sweep.db")),
    Case("status without a ledger", lambda w: ["status", "abcd1234"], ("no ledger at",),
         plant=lambda w: other_ledger(w, w.work / "none.db")),
    Case("status of an unknown sweep", lambda w: ["status", "zzzz9999"], ("unknown sweep id 'zzzz9999'",)),
    # ---- agents: everything checkable is checked before a run is claimed
    Case("agent: unknown sweep id", lambda w: ["agent", "zzzz9999"], ("unknown sweep id 'zzzz9999'",),
         subprocess=True),
    Case("agent: typo in --data-dir", lambda w: ["agent", smoke_sweep(w), "--data-dir", str(w.work / "dta")],
         ("does not exist", "dta")),
    Case("agent: --count 0", lambda w: ["agent", w.sweep_id, "--count", "0"], ("must be at least 1",)),
    Case("agent: --minutes -1", lambda w: ["agent", w.sweep_id, "--minutes", "-1"], ("must be more than 0",)),
    Case("agent: --max-consecutive-failed-runs 0", lambda w: ["agent", w.sweep_id, "--max-consecutive-failed-runs", "0"],
         ("must be at least 1",)),
    Case("agent: heartbeat not a number", lambda w: ["agent", smoke_sweep(w), "--data-dir", str(w.data)],
         ("ASL_SWEEP_HEARTBEAT_S", "must be a number"), plant=lambda w: w.env.update(ASL_SWEEP_HEARTBEAT_S="5s")),
    Case("agent: heartbeat timeout negative", lambda w: ["agent", smoke_sweep(w), "--data-dir", str(w.data)],
         ("ASL_SWEEP_HEARTBEAT_TIMEOUT_S",), plant=lambda w: w.env.update(ASL_SWEEP_HEARTBEAT_TIMEOUT_S="-1")),
    Case("agent: online without an API key", lambda w: ["agent", "ent/proj/abc123"], ("no API key",),
         plant=lambda w: w.env.update(WANDB_MODE="online", WANDB_API_KEY="", HOME=w.folder("home"))),
    # ---- sync: offline it changes nothing
    Case("sync offline", lambda w: ["sync", w.sweep_id], ("W&B is not reachable",),
         plant=lambda w: w.env.update(WANDB_API_KEY="", HOME=w.folder("home"))),
    Case("sync a sweep with a running run", lambda w: ["sync", running_sweep(w)], ("still running",)),
    Case("sync an unknown sweep", lambda w: ["sync", "zzzz9999"], ("unknown sweep id 'zzzz9999'",)),
    Case("report out below a file", lambda w: ["report", w.sweep_id, "--out", w.file("a-file") + "/r"],
         ("output folder", "is a file")),
    # ---- ledgers on other machines, and moving sweeps between ledgers
    Case("export: the model is on no machine this one reaches", lambda w: ["export", w.sweep_id, "--out", str(w.work / "new")],
         ("is not on this machine", "has no copy of it"), plant=lambda w: (w.root / "runs" / "model.keras").unlink()),
    Case("--ledger: another database's URL", lambda w: ["status", w.sweep_id, "--ledger", "mysql://db/sweeps"],
         ("only postgresql:// URLs or a file path",)),
    Case("--ledger: PostgreSQL not answering", lambda w: ["sweeps", "--ledger", "postgresql://ann:pw@127.0.0.1:1/sweeps"],
         ("cannot connect to ledger postgresql://ann:***@127.0.0.1:1/sweeps",)),
    Case("agent: --gpus with an empty id", lambda w: ["agent", w.sweep_id, "--gpus", "0,,1"], ("expected GPU ids",)),
    Case("ledger copy: unknown sweep", lambda w: ["ledger", "copy", "zzzz9999", str(w.ledger), str(w.work / "to.db")],
         ("unknown sweep id 'zzzz9999'",)),
    Case("ledger copy: no ledger at the source", lambda w: ["ledger", "copy", w.sweep_id, str(w.work / "none.db"),
                                                            str(w.work / "to.db")], ("no ledger at",)),
    Case("ledger copy: the destination has the sweep", lambda w: ["ledger", "copy", w.sweep_id, str(w.ledger), str(w.ledger)],
         ("already has sweep", "nothing copied")),
    Case("ledger copy: a sweep with a running run", lambda w: ["ledger", "copy", running_sweep(w), str(w.ledger),
                                                               str(w.work / "to.db")], ("running run", "--pause")),
    Case("ledger without a subcommand", lambda w: ["ledger"], ("required",)),
    # ---- ledger locations: one line naming what is wrong, the password masked, from every command (issue 22)
    Case("--ledger: scheme typo", lambda w: ["agent", w.sweep_id, "--ledger", "postgresq://ann:pw@db/sweeps"],
         ("'postgresq:' is not a ledger's scheme", "postgresq://ann:***@db/sweeps")),
    Case("ASL_SWEEP_LEDGER: scheme typo", lambda w: ["agent", w.sweep_id], ("'postgresq:' is not a ledger's scheme",),
         plant=lambda w: w.env.update(ASL_SWEEP_LEDGER="postgresq://ann:pw@db/sweeps"), subprocess=True),
    Case("--ledger: one slash", lambda w: ["status", w.sweep_id, "--ledger", "postgresql:/ann:pw@db/sweeps"],
         ("two slashes", "postgresql:/ann:***@db/sweeps")),
    Case("--ledger: unclosed IPv6 bracket", lambda w: ["sweep", sweep_file(w), "--local", "--ledger",
                                                       "postgresql://ann:pw@[::1/sweeps"], ("unclosed '['",)),
    Case("--ledger: unclosed IPv6 bracket (status)", lambda w: ["status", w.sweep_id, "--ledger",
                                                                "postgresql://ann:pw@[::1/sweeps"],
         ("unclosed '['", "postgresql://ann:***@[::1/sweeps"), subprocess=True),
    Case("--ledger: stray % in the password", lambda w: ["sweeps", "--ledger", "postgresql://ann:p%w@db/sweeps"],
         ("'%' in the user name or password", "%25")),
    Case("--ledger: port not a number", lambda w: ["status", w.sweep_id, "--ledger", "postgresql://ann:pw@db:54x2/s"],
         ("port '54x2' is not a number",)),
    Case("--ledger: unencoded / in the password", lambda w: ["export", w.sweep_id, "--out", str(w.work / "new"),
                                                             "--ledger", "postgresql://ann:p/w@db/sweeps"],
         ("'@' after the host", "%2F")),
    Case("--ledger on a command that takes none", lambda w: ["data", "--ledger", "postgresql://ann:s3cret@db/sweeps"],
         ("unrecognized arguments", "postgresql://ann:***@db/sweeps")),
    Case("--ledger before the command", lambda w: ["--ledger", "postgresql://ann:s3cret@db/sweeps", "sweeps"],
         ("invalid choice", "postgresql://ann:***@db/sweeps")),
    Case("--ledger= on a command that takes none", lambda w: ["ledger", "copy", w.sweep_id, str(w.ledger), "b.db",
                                                             "--ledger=postgresql://ann:s3cret@db/s?password=s3cret"],
         ("unrecognized arguments", "postgresql://ann:***@db/s?password=***")),
    Case("--ledger: database name with a /", lambda w: ["status", w.sweep_id, "--ledger", "postgresql://db/s/2024"],
         ("database 's/2024' has a '/'",)),
    # ---- a newcomer's first hour (issue 21): the message names the near miss, the fix, the ledger
    Case("sweep: 'metrics' for 'metric'",
         lambda w: ["sweep", sweep_file(w, metric=None, metrics={"name": "val_accuracy", "goal": "maximize"})],
         ("'metrics'", "did you mean 'metric'?")),
    Case("sweep: distribution 'loguniform'", lambda w: ["sweep", sweep_file(w, parameters={
        "learning_rate": {"distribution": "loguniform", "min": 0.001, "max": 0.01}})],
         ("parameter 'learning_rate'", "unknown distribution 'loguniform'", "did you mean 'log_uniform_values'")),
    Case("sweep: a parameter one letter off", lambda w: ["sweep", sweep_file(w, parameters={"dense_unit": {"value": 16}})],
         ("unknown parameter 'dense_unit'", "did you mean 'dense_units'?")),
    Case("sweep: a top-level key misspelt", lambda w: ["sweep", sweep_file(w, run_cap=None, runcap=3)],
         ("unknown key 'runcap'", "did you mean 'run_cap'?")),
    Case("sweep: a program that does not exist", lambda w: ["sweep", sweep_file(w, command=None, program="train_nope.py")],
         ("program 'train_nope.py' does not exist", "remove 'program' and 'command'")),
    Case("agent --subprocess: a program that does not exist",
         lambda w: ["agent", program_sweep(w), "--subprocess", "--data-dir", str(w.data)],
         ("program 'train_nope.py' does not exist",)),
    Case("WANDB_MODE not a mode", lambda w: ["sweep", sweep_file(w)], ("WANDB_MODE='offlin'", "not a W&B mode"),
         plant=lambda w: w.env.update(WANDB_MODE="offlin")),
    Case("W&B unreachable with an API key (sweep)", lambda w: ["sweep", sweep_file(w)],
         ("W&B is not reachable at http://127.0.0.1:", "--local", "WANDB_MODE=offline"), plant=unreachable_wandb,
         subprocess=True),
    Case("W&B unreachable with an API key (agent of a W&B id)", lambda w: ["agent", "ent/proj/abc123"],
         ("W&B is not reachable at", "agent ent/proj/abc123", "WANDB_MODE=offline"), plant=unreachable_wandb,
         subprocess=True),
    Case("report of an unknown sweep names how to choose the ledger", lambda w: ["report", "zzzz9999"],
         ("unknown sweep id 'zzzz9999'", "--ledger FILE|URL or ASL_SWEEP_LEDGER chooses another")),
    Case("--ledger: password as a parameter, PostgreSQL not answering",
         lambda w: ["sweep", sweep_file(w), "--local", "--ledger", "postgresql://ann@127.0.0.1:1/sweeps?password=pw"],
         ("cannot connect to ledger postgresql://ann:***@127.0.0.1:1/sweeps",)),
    # ---- the dashboard (issue 25): every mistake found before it serves anything
    Case("dashboard: port in use", lambda w: ["dashboard", "--port", str(port_in_use(w))],
         ("port", "is in use", "--port 0")),
    Case("dashboard: port out of range", lambda w: ["dashboard", "--port", "70000"], ("must be from 0 to 65535",)),
    Case("dashboard: an address not of this machine", lambda w: ["dashboard", "--host", "192.0.2.1"],
         ("cannot listen on 192.0.2.1:8765",)),
    Case("dashboard: unknown sweep id", lambda w: ["dashboard", "zzzz9999"], ("unknown sweep id 'zzzz9999'",)),
    Case("dashboard: no ledger", lambda w: ["dashboard"], ("no ledger at",),
         plant=lambda w: other_ledger(w, w.work / "none.db")),
    Case("dashboard: PostgreSQL not answering", lambda w: ["dashboard", "--ledger", "postgresql://ann:pw@127.0.0.1:1/s"],
         ("cannot connect to ledger postgresql://ann:***@127.0.0.1:1/s",), subprocess=True),
]


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory) -> bytes:
    """A real (tiny, untrained) servable model file, built once."""
    from asl_sweep import model
    from asl_sweep.config import Config

    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.build(Config().replace(image_size=16, filters_1=4, filters_2=8, dense_units=16)).save(path)
    return path.read_bytes()


@pytest.fixture
def world(tmp_path: Path, isolated: Path, model_bytes: bytes) -> World:
    """A fresh world per row; conftest's `isolated` already points the cache and ledger at tmp_path."""
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "model.keras").write_bytes(model_bytes)

    def record(run: Run, value: float) -> str:
        path = runs / f"{run.id}.json"
        path.write_text(json.dumps({"config": run.config, "state": "finished", "summary": {},
                                    "history": [{"epoch": 1, "val_accuracy": value}],
                                    "paths": {"model": str(runs / "model.keras")}}))
        return str(path)

    ledger = Path(os.environ["ASL_SWEEP_LEDGER"])
    cache = Path(os.environ["ASL_SWEEP_CACHE_DIR"])
    (cache / "arrays").mkdir(parents=True)
    np.savez(cache / "arrays" / "0123abcd.npz", x=np.zeros((2, 8, 8, 3), dtype=np.float32))
    export = tmp_path / "previous-export"
    export.mkdir()
    (export / "model.keras").write_bytes(model_bytes)
    for name in EXPORT_FILES[1:]:
        (export / name).write_text(f"previous {name}\n")
    return World(root=tmp_path, work=isolated, data=make_dataset(tmp_path / "data"), cache=cache,
                 export=export, ledger=ledger, sweep_id=synthetic_sweep(ledger, runs=2, record_for=record))


def recorded(w: World) -> dict[str, str]:
    """What a failed command must not lose or change: export folder and cache (bytes), ledger (rows)."""
    state: dict[str, str] = {}
    for base in (w.export, w.cache):
        for p in ([base] if base.is_file() else sorted(base.rglob("*"))):
            state[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
    if w.ledger.exists():
        with contextlib.closing(sqlite3.connect(w.ledger)) as con:
            state["ledger rows"] = "\n".join(con.iterdump())
    return state


def run_subprocess(case: Case, argv: list[str], w: World) -> tuple[int, str]:
    env = {**os.environ, **w.env, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", case.module, *argv], cwd=w.work, env=env, capture_output=True,
                          text=True, timeout=300)
    return proc.returncode, proc.stderr


def run_in_process(case: Case, argv: list[str], w: World, monkeypatch, capsys) -> tuple[int, str]:
    """The same entry point as `python -m`, minus interpreter start-up; an exception escaping it is what a
    user would see as a traceback, so it is reported as one."""
    from asl_sweep import cli, train

    for key, value in w.env.items():
        monkeypatch.setenv(key, value)
    entry = train.main if case.module == "asl_sweep.train" else cli.main
    capsys.readouterr()
    try:
        code = entry(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        return 1, capsys.readouterr().err + traceback.format_exc()
    return code, capsys.readouterr().err


def _param(case: Case):
    return pytest.param(case, id=case.name, marks=[pytest.mark.slow] if case.subprocess else [])


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_a_mistake_is_one_clear_line_and_damages_nothing(case: Case, world: World, monkeypatch, capsys):
    if case.plant:
        case.plant(world)
    argv = case.argv(world)
    before = recorded(world)
    if case.subprocess:
        code, err = run_subprocess(case, argv, world)
    else:
        code, err = run_in_process(case, argv, world, monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert code == 2, err
    assert 1 <= len(lines) <= 3, err
    assert any(line.startswith("asl-sweep: error:") for line in lines), err
    assert all(word in err for word in case.expect), f"expected {case.expect} in: {err}"
    assert ":pw@" not in err and "s3cret" not in err, f"a password is shown: {err}"
    after = recorded(world)
    assert {k: after.get(k) for k in before} == before  # new cache entries may appear; nothing old changes
    assert not list((world.work / "wandb").glob("*run-*")), "a W&B run was started before the mistake was found"
    assert not (world.work / "none.db").exists(), "a read-only command created a ledger"


@pytest.mark.slow
def test_a_damaged_cache_is_rebuilt_with_one_warning(world: World):
    """Not a mistake but damage (a power cut mid-write): the command succeeds, rebuilding the entry."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-m", "asl_sweep", "data", "--data-dir", str(world.data), "--image-size", "16"]
    first = subprocess.run(args, cwd=world.work, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    entry = max((world.cache / "arrays").glob("*.npz"), key=lambda p: p.stat().st_mtime_ns)
    whole = entry.read_bytes()
    entry.write_bytes(whole[: len(whole) // 3])
    again = subprocess.run(args, cwd=world.work, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr
    assert again.stderr.count("asl-sweep: warning:") == 1 and "damaged" in again.stderr
    assert entry.read_bytes() == whole
