"""A newcomer's first hour (issue 21): every failed run says why, an early-ended run never blocks export,
a sweep file without `command` runs our entrypoint, and every message names the fix. No TensorFlow:
runs are one-line subprocesses (`--subprocess`) or ledger rows written through the ledger's own API."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from asl_sweep import agent, cli, console, controller, display, export, status
from asl_sweep.errors import UserError
from asl_sweep.ledger import Ledger
from asl_sweep.records import HYPERBAND, INTERRUPTED
from asl_sweep.state import RunState
from asl_sweep.sweepfile import OWN_COMMAND
from tests.test_agent import SMOKE

# a run that fails at once, the way a real one does: output on stderr, then an error as its last line
FAILING = ["${env}", "${interpreter}", "-c",
           "import sys; print('loading data', file=sys.stderr); sys.exit('model too large for this machine')"]


def failing_sweep(ledger: Ledger, runs: int = 2) -> str:
    return ledger.create_sweep({**SMOKE, "run_cap": runs, "command": FAILING}, "failing")


def test_a_failed_run_says_why_in_the_agent_status_and_its_detail(dataset_dir, capsys):
    ledger = Ledger()
    sid = failing_sweep(ledger)
    agent.local_agent(sid, agent.AgentOptions(subprocess_mode=True, data_dir=str(dataset_dir)), display.Progress(console.write))
    out = capsys.readouterr().out
    assert "run #1 (" in out and "failed: exit code 1: model too large for this machine" in out
    assert f"asl-sweep status {sid} --run 1" in out and "0 running, 2 failed" in out
    table = status.status_table(sid)
    assert "finished: all 2 runs failed" in table and table.count("model too large for this machine") >= 3
    detail = status.run_detail(sid, 1)
    assert "loading data" in detail and "model too large" in detail and "files: none" in detail
    listing = status.sweeps_table()
    assert f"{sid}   failing        random  failed" in listing and "all 2 runs failed" in listing


def test_max_consecutive_failed_runs_stops_with_the_reason(dataset_dir):
    ledger = Ledger()
    sid = failing_sweep(ledger, runs=5)
    with pytest.raises(UserError, match=r"2 consecutive failed runs.*\(run #2\): exit code 1: model too large"):
        agent.local_agent(sid, agent.AgentOptions(subprocess_mode=True, data_dir=str(dataset_dir), show_progress=False,
                                                  max_consecutive_failed_runs=2))


def test_an_agent_on_a_finished_sweep_says_it_is_finished(dataset_dir, capsys):
    ledger = Ledger()
    sid = ledger.create_sweep(SMOKE, "done")
    ledger.control(sid, "stop")
    assert agent.local_agent(sid, agent.AgentOptions(data_dir=str(dataset_dir))) == 0
    assert f"sweep {sid} is finished: no run left to start" in capsys.readouterr().out


def ended_runs(tmp_path: Path) -> tuple[Ledger, str, dict[str, str]]:
    """A sweep with a finished run (record and model) and better-scoring runs that ended early: one
    interrupted by Ctrl-C (no record), one stopped by hyperband; and a fresh sweep beside it."""
    ledger = Ledger()
    sid = ledger.create_sweep({**SMOKE, "run_cap": 3}, "ended")
    ids = {}
    for name, value in (("finished", 0.5), ("interrupted", 0.9), ("hyperband", 0.7)):
        run = controller.claim_next(ledger, sid, "host:1")
        ledger.append_epoch(run.id, {"epoch": 1, "val_accuracy": value})
        ids[name] = run.id
    model = tmp_path / "model.keras"
    model.write_bytes(b"model")
    record = {"run_id": ids["finished"], "config": {}, "history": [{"epoch": 1, "val_accuracy": 0.5}],
              "paths": {"model": str(model), "record": None, "run_dir": str(tmp_path)}, "state": "finished"}
    ledger.finish_run(ids["finished"], "finished", record=record, wandb_dir=str(tmp_path))
    ledger.finish_run(ids["interrupted"], RunState.STOPPED, error=INTERRUPTED)
    ledger.request_stop([ids["hyperband"]], HYPERBAND)
    ledger.finish_run(ids["hyperband"], RunState.STOPPED)
    return ledger, sid, ids


def test_an_early_ended_run_says_why_and_export_passes_over_it(tmp_path, monkeypatch):
    ledger, sid, ids = ended_runs(tmp_path)
    table = status.status_table(sid)
    assert INTERRUPTED in table and HYPERBAND in table and "(still running" not in table
    assert "files: none: the run stopped before saving any" in table
    exported = {}
    monkeypatch.setattr(export, "write_folder", lambda out, fill: exported.update(out=out))
    monkeypatch.setattr("asl_sweep.model.load", lambda path: None)
    meta = export.export_best(sid, tmp_path / "out")
    assert meta["run_id"] == ids["finished"]
    assert [(r["run_id"], r["reason"]) for r in meta["passed_over"]] == [
        (ids["interrupted"], INTERRUPTED), (ids["hyperband"], HYPERBAND)]


def test_export_of_a_running_best_run_names_its_agent(tmp_path):
    ledger = Ledger()
    sid = ledger.create_sweep(SMOKE, "running")
    run = controller.claim_next(ledger, sid, "host:42")
    ledger.append_epoch(run.id, {"epoch": 1, "val_accuracy": 0.5})
    with pytest.raises(UserError, match="is still running on host:42; export it when it ends"):
        export.export_best(sid, tmp_path / "out")


def test_a_sweep_file_without_command_runs_our_entrypoint_locally_and_on_wandb(tmp_path, monkeypatch, capsys):
    import wandb

    bare = {k: v for k, v in SMOKE.items() if k != "command"}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(bare))
    assert cli.main(["sweep", str(path), "--local"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "has no 'command' or 'program'" in captured.err
    sid = captured.out.split()[3]
    assert Ledger().sweep(sid)["config"]["command"] == OWN_COMMAND
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr("asl_sweep.runtime.unreachable", lambda: None)
    created = {}
    monkeypatch.setattr(wandb, "sweep", lambda config, project, entity: created.update(config) or "abc123")
    assert cli.main(["sweep", str(path)]) == 0
    assert created["command"] == OWN_COMMAND


@pytest.mark.parametrize("argv, expected", [
    (["sweeps"], "no ledger at {cwd}/asl-sweep.db (--ledger FILE|URL or ASL_SWEEP_LEDGER chooses another"),
    (["status", "zzzz9999"], "no ledger at"),
])
def test_from_another_folder_messages_name_the_absolute_ledger(argv, expected, monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("ASL_SWEEP_LEDGER")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cli.main(argv)
    captured = capsys.readouterr()
    assert expected.format(cwd=elsewhere) in captured.out + captured.err


def test_status_shows_swept_parameters_rounded_and_a_fresh_sweep_says_what_next(capsys):
    ledger = Ledger()
    sid = ledger.create_sweep(SMOKE, "fresh")
    assert f"no run yet: start one with asl-sweep agent {sid}" in status.status_table(sid)
    run = controller.claim_next(ledger, sid, "a")
    ledger.append_epoch(run.id, {"epoch": 1, "val_accuracy": 0.5})
    ledger.finish_run(run.id, "finished")
    row = status.status_table(sid).splitlines()[2]
    assert f"learning_rate={run.config['learning_rate']:.4g}" in row and "image_size" not in row


def test_the_ledger_keeps_the_reason_a_canceled_run_stopped():
    ledger = Ledger()
    sid = ledger.create_sweep(SMOKE, "cancel")
    run = controller.claim_next(ledger, sid, "a")
    ledger.control(sid, "cancel")
    ledger.finish_run(run.id, RunState.STOPPED)
    assert "sweep canceled" in ledger.run(run.id).error


def test_a_failed_runs_output_tail_is_kept_for_status(dataset_dir):
    ledger = Ledger()
    sid = ledger.create_sweep({**SMOKE, "run_cap": 1, "command": [
        "${env}", "${interpreter}", "-c", "import sys; [print(i, file=sys.stderr) for i in range(100)]; sys.exit(3)"]}, "t")
    agent.local_agent(sid, agent.AgentOptions(subprocess_mode=True, data_dir=str(dataset_dir), show_progress=False))
    [run] = ledger.runs(sid)
    log = run.summary[agent.ERROR_LOG].splitlines()
    assert run.error == "exit code 3: 99" and len(log) == agent.LOG_LINES and log[-1] == "99"
