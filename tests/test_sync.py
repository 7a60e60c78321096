"""`asl-sweep sync`, tested up to the network boundary: the calls to wandb are intercepted; the offline
run folders are checked with wandb's own offline tool (`wandb sync --dry-run`) and by reading the
run record in each `.wandb` file (wandb's protobuf), which must carry no local sweep id."""

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from asl_sweep import agent, cli, sync
from asl_sweep.ledger import Ledger
from tests.conftest import TINY

REPO = Path(__file__).resolve().parents[1]
CONFIG = {"method": "random", "metric": {"name": "val_accuracy", "goal": "maximize"}, "run_cap": 2,
          "project": "from-yaml", "controller": {"type": "local"},
          "parameters": {**{k: {"value": v} for k, v in TINY.items()}, "split": {"value": "random"},
                         "learning_rate": {"min": 0.001, "max": 0.01}},
          "command": ["${env}", "${interpreter}", "-m", "asl_sweep.train", "${args}"]}


def run_records(path: Path):
    """The run records in a `.wandb` file: wandb's leveldb-style log of `wandb_internal_pb2.Record`s."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            if record.WhichOneof("record_type") == "run":
                yield record.run


@pytest.fixture
def finished_sweep(dataset_dir, monkeypatch):
    """A local sweep with one subprocess-mode run and one in-process run, both finished."""
    monkeypatch.setenv("ASL_SWEEP_DATA_DIR", str(dataset_dir))
    ledger = Ledger()
    sid = ledger.create_sweep(CONFIG, "s")
    agent.local_agent(sid, agent.AgentOptions(count=1, subprocess_mode=True, show_progress=False))
    agent.local_agent(sid, agent.AgentOptions(count=1, show_progress=False))
    runs = ledger.runs(sid)
    assert [r.state for r in runs] == ["finished", "finished"], [r.error for r in runs]
    return sid, runs


def snapshot() -> tuple:
    with Ledger(create=False) as ledger:
        return tuple((s["id"], s["state"], tuple(map(str, ledger.runs(s["id"])))) for s in ledger.sweeps())


def test_offline_run_folders_carry_no_local_sweep_id_and_pass_wandb_sync_dry_run(finished_sweep):
    sid, runs = finished_sweep
    for r in runs:
        [wandb_file] = Path(r.wandb_dir).glob("*.wandb")
        [record] = list(run_records(wandb_file))
        assert record.sweep_id == "" and record.run_id == r.id
        assert record.run_group == sid and record.project == "from-yaml"
        check = subprocess.run([sys.executable, "-m", "wandb", "sync", "--dry-run", r.wandb_dir],
                               capture_output=True, text=True, timeout=120)
        assert check.returncode == 0 and "Would sync 1 run" in check.stdout + check.stderr


def test_sync_uploads_every_run_then_creates_the_wandb_sweep_with_them_as_prior_runs(finished_sweep, monkeypatch,
                                                                                      capsys):
    import wandb

    sid, runs = finished_sweep
    calls = {}
    monkeypatch.setattr(sync, "check_reachable", lambda: "https://api.wandb.ai")
    monkeypatch.setattr(sync.subprocess, "run", lambda cmd, **kw: calls.setdefault("sync", (cmd, kw["env"]))
                        and subprocess.CompletedProcess(cmd, 0, "", ""))
    monkeypatch.setattr(wandb, "sweep", lambda config, **kw: calls.setdefault("sweep", (config, kw)) and "wb123456")
    before = snapshot()
    assert cli.main(["sync", sid, "--entity", "team"]) == 0
    cmd, env = calls["sync"]
    assert cmd == [sys.executable, "-m", "wandb", "sync", "--project", "from-yaml", "--entity", "team",
                   *[r.wandb_dir for r in runs]]
    assert env["WANDB_MODE"] == "online"
    config, kwargs = calls["sweep"]
    assert config == {k: v for k, v in CONFIG.items() if k != "controller"}
    assert kwargs == {"project": "from-yaml", "entity": "team", "prior_runs": [r.id for r in runs]}
    out = capsys.readouterr().out
    assert "created W&B sweep team/from-yaml/wb123456" in out and "make agent SWEEP=team/from-yaml/wb123456" in out
    assert snapshot() == before


@pytest.mark.parametrize("extra_env, words", [
    ({}, "W&B is not reachable: no API key"),
    ({"WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}, "W&B is not reachable at http://127.0.0.1:9"),
])
def test_sync_offline_is_one_line_and_changes_nothing(tmp_path, extra_env, words):
    ledger = Ledger()
    sid = ledger.create_sweep(CONFIG, "s")
    folder = tmp_path / "offline-run-x"
    folder.mkdir()
    (folder / "run-x.wandb").write_bytes(b":W&B\x00\x00\x00")
    from asl_sweep import controller

    claimed = controller.claim_next(ledger, sid, "a")
    ledger.finish_run(claimed.id, "finished", wandb_dir=str(folder))
    before = snapshot()
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(home), "WANDB_API_KEY": "", **extra_env}
    proc = subprocess.run([sys.executable, "-m", "asl_sweep", "sync", sid], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and words in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert snapshot() == before


def test_sync_refuses_a_sweep_with_running_runs(tmp_path):
    from asl_sweep import controller
    from asl_sweep.errors import UserError

    ledger = Ledger()
    sid = ledger.create_sweep(CONFIG, "s")
    controller.claim_next(ledger, sid, "a")
    with pytest.raises(UserError, match="1 run\\(s\\) still running"):
        sync.sync_sweep(sid)



def test_the_wandb_sweep_gets_falsy_values_first_and_no_local_controller():
    """A sweep made before `asl-sweep sweep` moved falsy values first still reaches W&B's engine right."""
    from asl_sweep.sync import wandb_sweep_config

    old = {**CONFIG, "method": "bayes", "parameters": {**CONFIG["parameters"], "batch_norm": {"values": [True, False]}}}
    sent = wandb_sweep_config(old)
    assert sent["parameters"]["batch_norm"] == {"values": [False, True]} and "controller" not in sent
    assert old["parameters"]["batch_norm"] == {"values": [True, False]}
