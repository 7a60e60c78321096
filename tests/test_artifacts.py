"""Models as W&B artifacts (issue 25): what an offline run records, read back from its `.wandb` file, and
export's W&B paths (the winner's artifact downloaded, linked into the registry) against a stand-in for
W&B's public API."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest

from asl_sweep import artifacts, runtime
from asl_sweep.errors import UserError
from tests.helpers_report import tiny_trained_sweep

BLOCK = 32768  # the `.wandb` file is LevelDB's log format behind a 7-byte W&B header (":W&B", magic, version)


def records(path: Path):
    """Every protobuf record of an offline run's `.wandb` file (wandb 0.31 has no Python reader of its own)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, parts = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (kind == 0 and length == 0):  # a block's zero padding
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):  # FULL, or LAST of FIRST/MIDDLE/.../LAST
            record = pb.Record()
            record.ParseFromString(parts)
            yield record


@pytest.mark.slow
def test_an_offline_run_records_its_model_as_an_artifact_for_sync_to_upload():
    from asl_sweep.ledger import Ledger

    tiny = tiny_trained_sweep()
    with Ledger(tiny["ledger"]) as ledger:
        runs = ledger.runs(tiny["sweep_id"])
        assert runs
        for run in runs:
            record = ledger.record(run.id)
            [wandb_file] = Path(record["paths"]["run_dir"]).glob("run-*.wandb")
            found = [r.artifact for r in records(wandb_file)
                     if r.WhichOneof("record_type") == "artifact" and r.artifact.type == "model"]
            assert len(found) == 1
            art = found[0]
            assert (art.name, art.type, art.run_id) == (f"run_{run.id}_model", "model", run.id)
            [entry] = art.manifest.contents
            model = Path(record["paths"]["model"])
            assert entry.path == "model.keras" and entry.local_path == str(model)  # uploaded from where it lies
            assert entry.digest == base64.b64encode(hashlib.md5(model.read_bytes()).digest()).decode()
            meta = json.loads(art.metadata)
            assert meta["sweep_id"] == tiny["sweep_id"] and meta["config"]["learning_rate"] == run.config["learning_rate"]
            assert meta["best_epoch"] == record["summary"]["best_epoch"]


def test_a_failed_run_logs_no_artifact(tmp_path):
    class Run:
        id = "r1"

        def log_artifact(self, artifact):
            raise AssertionError("a run without a model logged an artifact")

    assert artifacts.log_model(Run(), {"paths": {"model": None}}) is None
    assert artifacts.log_model(Run(), {"paths": {"model": str(tmp_path / "gone.keras")}}) is None


class FakeArtifact:
    def __init__(self, run_id: str, model: Path) -> None:
        self.name, self.type, self.model, self.links = f"run_{run_id}_model:v0", "model", model, []

    def download(self, root: str) -> str:
        Path(root).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.model, Path(root) / "model.keras")
        return root

    def link(self, target: str, aliases=None):
        self.links.append(target)
        return SimpleNamespace(qualified_name=f"{target}:v0")


class FakeRun:
    """A W&B run of the tiny sweep as the public API shows it, its files and artifacts from disk."""

    def __init__(self, run: dict, record: dict, with_artifact: bool) -> None:
        self.id, self.created_at, self.state = run.id, str(run.number), "finished"
        self.config, self.summary = run.config, {"val_accuracy": record["summary"]["val_accuracy"], "_runtime": 3.0}
        self.history, self.record, self.files_fetched = run.history, record, []
        self.artifact = FakeArtifact(run.id, Path(record["paths"]["model"])) if with_artifact else None

    def scan_history(self):
        return iter(self.history)

    def logged_artifacts(self):
        return [self.artifact] if self.artifact else []

    def file(self, name: str):
        def download(root: str, replace: bool = False):
            self.files_fetched.append(name)
            target = Path(root) / name
            source = self.record["paths"]["record"] if name == "result.json" else self.record["paths"]["model"]
            shutil.copyfile(source, target)
            return SimpleNamespace(name=str(target))

        return SimpleNamespace(download=download)


@pytest.fixture
def wandb_sweep(monkeypatch, tmp_path):
    """The tiny trained sweep served by a stand-in `wandb.Api` as W&B sweep ent/proj/sw1, online."""
    import wandb

    from asl_sweep.ledger import Ledger

    tiny = tiny_trained_sweep()
    with Ledger(tiny["ledger"]) as ledger:
        local = [(r, ledger.record(r.id)) for r in ledger.runs(tiny["sweep_id"])]
        config = ledger.sweep(tiny["sweep_id"])["config"]
    state = {"with_artifact": True}

    class Api:
        default_entity = "ent"

        def __init__(self) -> None:
            self.runs = [FakeRun(r, rec, state["with_artifact"]) for r, rec in local]
            state["runs"] = self.runs

        def sweep(self, path: str):
            assert path == "ent/proj/sw1"
            best = max(self.runs, key=lambda r: r.summary["val_accuracy"])
            return SimpleNamespace(name="tiny", state="FINISHED", config=config, runs=self.runs, best_run=lambda: best)

    monkeypatch.setattr(wandb, "Api", Api)
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setattr(runtime, "require_online", lambda what: None)
    monkeypatch.setenv("ASL_SWEEP_LEDGER", str(tmp_path / "none.db"))
    return state


@pytest.mark.slow
def test_export_of_a_wandb_sweep_downloads_the_winners_artifact_and_links_it(wandb_sweep, tmp_path):
    from asl_sweep.export import export_best

    meta = export_best("ent/proj/sw1", tmp_path / "out", link="asl-digits")
    best = next(r for r in wandb_sweep["runs"] if r.id == meta["run_id"])
    assert best.files_fetched == ["result.json"]  # the model came from the artifact, not the run's files
    assert (tmp_path / "out" / "model.keras").read_bytes() == best.artifact.model.read_bytes()
    assert best.artifact.links == ["wandb-registry-model/asl-digits"]
    assert meta["linked"] == "wandb-registry-model/asl-digits:v0"


@pytest.mark.slow
def test_a_wandb_run_without_an_artifact_exports_from_its_files_and_cannot_be_linked(wandb_sweep, tmp_path):
    from asl_sweep.export import export_best

    wandb_sweep["with_artifact"] = False
    meta = export_best("ent/proj/sw1", tmp_path / "out")
    best = next(r for r in wandb_sweep["runs"] if r.id == meta["run_id"])
    assert best.files_fetched == ["result.json", "model.keras"] and (tmp_path / "out" / "model.keras").is_file()
    with pytest.raises(UserError, match="logged no 'model' artifact"):
        export_best("ent/proj/sw1", tmp_path / "again", link="asl-digits")


def test_link_names_a_registry_collection():
    assert artifacts.link_target("asl-digits") == "wandb-registry-model/asl-digits"
    assert artifacts.link_target("wandb-registry-vision/digits") == "wandb-registry-vision/digits"


def test_link_of_a_local_sweep_is_one_line_before_anything_is_read(tmp_path):
    from asl_sweep.export import export_best
    from tests.helpers_report import synthetic_sweep

    sweep_id = synthetic_sweep(Path("asl-sweep.db"), runs=2)
    with pytest.raises(UserError, match=f"asl-sweep sync {sweep_id}"):
        export_best(sweep_id, tmp_path / "out", link="asl-digits")
    assert not (tmp_path / "out").exists()
