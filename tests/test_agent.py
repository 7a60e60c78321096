import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from asl_sweep import agent, display
from asl_sweep.ledger import Ledger
from asl_sweep.records import INTERRUPTED, STOP_REASON
from tests.conftest import TINY

REPO = Path(__file__).resolve().parents[1]
SMOKE = {"method": "random", "metric": {"name": "val_accuracy", "goal": "maximize"}, "run_cap": 2,
         "parameters": {**{k: {"value": v} for k, v in TINY.items()}, "split": {"value": "random"},
                        "learning_rate": {"min": 0.001, "max": 0.01}},
         "command": ["${env}", "${interpreter}", "-m", "asl_sweep.train", "${args}"]}

# A stand-in agent without TensorFlow: claims runs, "trains" for a moment, finishes them.
CLAIM_LOOP = """
import sys, time
from asl_sweep import controller
from asl_sweep.ledger import Ledger
ledger = Ledger()
while (run := controller.claim_next(ledger, sys.argv[1], "w")) is not None:
    time.sleep(0.02)
    ledger.append_epoch(run.id, {"val_accuracy": 0.5})
    ledger.finish_run(run.id, "finished")
"""


def env(**extra):
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


@pytest.mark.parametrize("agents", [2, 4])
def test_concurrent_agents_no_duplicates_and_exact_cap(agents):
    ledger = Ledger()
    grid = {"method": "grid", "metric": SMOKE["metric"],
            "parameters": {"filters_1": {"values": [4, 8, 16]}, "dropout": {"values": [0.1, 0.2, 0.3, 0.4]}}}
    grid_id = ledger.create_sweep(grid, "g")
    capped_id = ledger.create_sweep({**SMOKE, "run_cap": 7, "command": []}, "c")
    procs = [subprocess.Popen([sys.executable, "-c", CLAIM_LOOP, sid], env=env())
             for sid in (grid_id, capped_id) for _ in range(agents)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    grid_runs = ledger.runs(grid_id)
    points = Counter((r.config["filters_1"], r.config["dropout"]) for r in grid_runs)
    assert len(grid_runs) == 12 and set(points.values()) == {1}
    assert len(ledger.runs(capped_id)) == 7
    assert {r.state for r in grid_runs + ledger.runs(capped_id)} == {"finished"}
    assert len({r.agent for r in grid_runs}) >= 1


def test_subprocess_mode_runs_the_yaml_command_with_agent_env(dataset_dir, monkeypatch):
    monkeypatch.setenv("ASL_SWEEP_DATA_DIR", str(dataset_dir))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    ledger = Ledger()
    sid = ledger.create_sweep(SMOKE, "s")
    assert agent.local_agent(sid, agent.AgentOptions(subprocess_mode=True, show_progress=False)) == 2
    runs = ledger.runs(sid)
    assert [r.state for r in runs] == ["finished", "finished"]
    for r in runs:
        record = json.loads(Path(r.record_path).read_text())
        assert record["run_id"] == r.id and record["sweep_id"] == sid
        assert record["config"]["learning_rate"] == r.config["learning_rate"]
        assert len(r.history) == 1 and r.history[0]["val_accuracy"] == record["history"][0]["val_accuracy"]
    assert ledger.sweep(sid)["state"] == "finished"


def test_in_process_agent_with_hyperband_stops_a_run(dataset_dir):
    config = {**SMOKE, "run_cap": 4, "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 2},
              "parameters": {**SMOKE["parameters"], "epochs": {"value": 3}}}
    ledger = Ledger()
    sid = ledger.create_sweep(config, "h")
    from asl_sweep import controller

    for _ in range(3):  # perfect finished runs make the next real run the worst at epoch 1
        strong = controller.claim_next(ledger, sid, "a")
        for v in (1.0, 1.0, 1.0):
            ledger.append_epoch(strong.id, {"val_accuracy": v})
        ledger.finish_run(strong.id, "finished")
    agent.local_agent(sid, agent.AgentOptions(data_dir=str(dataset_dir), show_progress=False))
    weak = ledger.runs(sid)[3]
    assert weak.state == "stopped" and len(weak.history) == 1 and weak.should_stop
    record = json.loads(Path(weak.record_path).read_text())
    assert record["state"] == "stopped" and record["sweep_id"] == sid and record["run_id"] == weak.id


def wait_for(predicate, timeout=120.0):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("timed out waiting")


@pytest.mark.slow
def test_sigkill_then_restart_resumes_and_keeps_finished_runs(dataset_dir):
    ledger = Ledger()
    params = {**SMOKE["parameters"], "epochs": {"value": 40}}
    sid = ledger.create_sweep({**SMOKE, "run_cap": 3, "parameters": params}, "k")
    run_env = env(ASL_SWEEP_DATA_DIR=str(dataset_dir), ASL_SWEEP_HEARTBEAT_S="0.2")
    cmd = [sys.executable, "-m", "asl_sweep", "agent", sid, "--quiet"]
    first = subprocess.Popen(cmd, env=run_env)
    wait_for(lambda: len(ledger.runs(sid)) == 2 and len(ledger.runs(sid)[1].history) >= 1)
    first.send_signal(signal.SIGKILL)
    first.wait()
    finished = ledger.runs(sid)[0]
    assert finished.state == "finished"
    time.sleep(1.5)
    restart = subprocess.run(cmd, env={**run_env, "ASL_SWEEP_HEARTBEAT_TIMEOUT_S": "1"}, timeout=300)
    assert restart.returncode == 0
    runs = ledger.runs(sid)
    assert [r.state for r in runs] == ["finished", "crashed", "finished"]
    assert runs[0] == finished
    assert ledger.sweep(sid)["state"] == "finished"


def assert_saved_as_interrupted(ledger: Ledger, sid: str, tmp_path: Path) -> dict:
    """The run Ctrl-C stopped kept what export, report and status use: its record, model and reason."""
    from asl_sweep import export, status

    [run] = ledger.runs(sid)
    assert run.state == "stopped" and run.error == INTERRUPTED and run.history
    record = ledger.record(run.id)
    assert record["state"] == "stopped" and record["summary"][STOP_REASON] == INTERRUPTED
    assert Path(record["paths"]["model"]).is_file() and Path(run.record_path).is_file()
    assert ledger.model(run.id) is not None
    table = status.status_table(sid)
    assert INTERRUPTED in table and f"files: {run.wandb_dir}" in table
    meta = export.export_best(sid, tmp_path / "export")
    assert meta["run_id"] == run.id and meta["state"] == "stopped" and not meta["passed_over"]
    assert (tmp_path / "export" / "model.keras").is_file()
    return run


def ctrl_c_after_epoch(monkeypatch, epoch: int) -> None:
    """Ctrl-C once the run's `epoch` is in the ledger, as the agent's own SIGINT handler meets it."""
    from asl_sweep import controller

    reported = controller.LedgerReporter.epoch

    def epoch_then_ctrl_c(self, row):
        stop = reported(self, row)
        if row["epoch"] == epoch:
            signal.raise_signal(signal.SIGINT)
        return stop

    monkeypatch.setattr(controller.LedgerReporter, "epoch", epoch_then_ctrl_c)


def test_ctrl_c_in_process_saves_the_best_so_far_model_and_record(dataset_dir, monkeypatch, tmp_path, caplog):
    ledger = Ledger()
    sid = ledger.create_sweep({**SMOKE, "parameters": {**SMOKE["parameters"], "epochs": {"value": 3}}}, "i")
    ctrl_c_after_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        agent.local_agent(sid, agent.AgentOptions(data_dir=str(dataset_dir), show_progress=False))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    run = assert_saved_as_interrupted(ledger, sid, tmp_path)
    assert len(run.history) == 1 and run.summary["best_epoch"] == 1
    assert f"{INTERRUPTED} after epoch 1: saving run {run.id}'s best-so-far model and record " \
           "(Ctrl-C again aborts the save)" in caplog.text


def test_a_second_ctrl_c_aborts_the_save(dataset_dir, monkeypatch):
    from asl_sweep import robustness

    ledger = Ledger()
    sid = ledger.create_sweep({**SMOKE, "parameters": {**SMOKE["parameters"], "epochs": {"value": 3}}}, "i")
    ctrl_c_after_epoch(monkeypatch, 1)
    monkeypatch.setattr(robustness, "accuracy_per_change", lambda *a: signal.raise_signal(signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):
        agent.local_agent(sid, agent.AgentOptions(data_dir=str(dataset_dir), show_progress=False))
    [run] = ledger.runs(sid)
    assert run.state == "stopped" and run.error == INTERRUPTED and ledger.record(run.id) is None


@pytest.mark.slow
@pytest.mark.parametrize("mode", [[], ["--subprocess"]])
def test_ctrl_c_saves_the_run_and_exits_130(mode, dataset_dir, tmp_path):
    """Ctrl-C as a terminal sends it: SIGINT to the whole foreground process group (agent and run)."""
    ledger = Ledger()
    sid = ledger.create_sweep({**SMOKE, "parameters": {**SMOKE["parameters"], "epochs": {"value": 200}}}, "i")
    proc = subprocess.Popen([sys.executable, "-m", "asl_sweep", "agent", sid, "--quiet", *mode],
                            env=env(ASL_SWEEP_DATA_DIR=str(dataset_dir)), stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    wait_for(lambda: ledger.runs(sid) and len(ledger.runs(sid)[0].history) >= 1)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "asl-sweep: interrupted" in err, err
    assert "(Ctrl-C again aborts the save)" in err
    assert_saved_as_interrupted(ledger, sid, tmp_path)


def test_unknown_sweep_id_is_a_clear_error():
    proc = subprocess.run([sys.executable, "-m", "asl_sweep", "agent", "zzzz9999"], env=env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown sweep id 'zzzz9999'" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_sweep_command_creates_local_sweep_offline(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(SMOKE))
    proc = subprocess.run([sys.executable, "-m", "asl_sweep", "sweep", str(path)], env=env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    sid = proc.stdout.split()[3]
    assert Ledger().sweep(sid)["config"] == SMOKE and f"make agent SWEEP={sid}" in proc.stdout


def test_no_run_starts_after_the_deadline(dataset_dir, monkeypatch):
    monkeypatch.setenv("ASL_SWEEP_DATA_DIR", str(dataset_dir))
    ledger = Ledger()
    sid = ledger.create_sweep(SMOKE, "d")
    assert agent.local_agent(sid, agent.AgentOptions(minutes=1e-9, show_progress=False)) == 0
    assert ledger.runs(sid) == []


def test_status_and_sweeps_list_show_runs_and_best(capsys):
    from asl_sweep import cli, controller

    ledger = Ledger()
    sid = ledger.create_sweep(SMOKE, "listed")
    for v in (0.4, 0.7):
        run = controller.claim_next(ledger, sid, "a")
        ledger.append_epoch(run.id, {"epoch": 1, "val_accuracy": v})
        ledger.finish_run(run.id, "finished", wandb_dir=f"wandb/run-{v}")
    assert cli.main(["sweeps"]) == 0
    assert sid in capsys.readouterr().out
    assert cli.main(["status", sid]) == 0
    out = capsys.readouterr().out
    assert "best run: " + ledger.runs(sid)[1].id in out and "val_accuracy=0.7000" in out and "wandb/run-0.7" in out


def test_online_sweep_and_agent_hand_over_to_wandb(tmp_path, monkeypatch, capsys):
    """The online path is W&B's own calls; here they are intercepted (W&B is unreachable offline)."""
    import wandb

    from asl_sweep import cli

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr("asl_sweep.runtime.unreachable", lambda: None)
    created = {}
    monkeypatch.setattr(wandb, "sweep", lambda config, project, entity: created.update(
        config=config, project=project, entity=entity) or "abc123")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(SMOKE))
    assert cli.main(["sweep", str(path)]) == 0
    assert created == {"config": SMOKE, "project": "asl-sweep", "entity": None}
    assert "make agent SWEEP=asl-sweep/abc123" in capsys.readouterr().out
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd, env: calls.append((cmd, env)) or 0)
    assert cli.main(["agent", "ent/proj/abc123", "--count", "3"]) == 0
    [(cmd, child_env)] = calls
    assert cmd == [sys.executable, "-m", "wandb", "agent", "--count", "3", "ent/proj/abc123"]
    assert child_env["PATH"].split(os.pathsep)[0] == str(agent.interpreter_dir())
    assert not Path("asl-sweep.db").exists()


def test_both_worlds_get_the_falsy_value_first_with_a_note(tmp_path, monkeypatch, capsys):
    """W&B's servers run the same engine: the YAML they get has `false` first too, and so has the ledger's."""
    import wandb

    from asl_sweep import cli

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**SMOKE, "parameters": {**SMOKE["parameters"], "batch_norm": {"values": [True, False]}}}))
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr("asl_sweep.runtime.unreachable", lambda: None)
    created = {}
    monkeypatch.setattr(wandb, "sweep", lambda config, project, entity: created.update(config=config) or "abc123")
    assert cli.main(["sweep", str(path)]) == 0
    assert created["config"]["parameters"]["batch_norm"] == {"values": [False, True]}
    assert "note: batch_norm: falsy value moved first" in capsys.readouterr().err
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert cli.main(["sweep", str(path), "--local"]) == 0
    with Ledger() as ledger:
        [sweep] = ledger.sweeps()
    assert sweep["config"]["parameters"]["batch_norm"] == {"values": [False, True]}


def test_ctrl_c_is_remembered_even_when_it_surfaces_as_another_error():
    pressed, previous = agent._watch_ctrl_c()
    try:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        assert pressed.is_set()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert signal.getsignal(signal.SIGINT) is previous


def _fake_runs(monkeypatch, ran):
    """Runs that finish at once (no TensorFlow): what is under test is the agent loop."""
    def fake(ledger, sweep_id, run, cache, progress, target):
        ran.append(run.id)
        ledger.append_epoch(run.id, {"val_accuracy": 0.5})
        ledger.finish_run(run.id, "finished")
        return "finished"

    monkeypatch.setattr(agent, "_run_in_process", fake)
    monkeypatch.setattr("asl_sweep.runtime.load_tensorflow", lambda quiet: None)


def test_agent_waits_while_paused_and_goes_on_after_resume(dataset_dir, monkeypatch):
    import threading

    from asl_sweep import cli

    ran = []
    _fake_runs(monkeypatch, ran)
    monkeypatch.setenv("ASL_SWEEP_HEARTBEAT_S", "0.05")
    ledger = Ledger()
    sid = ledger.create_sweep({**SMOKE, "run_cap": 3}, "p")
    assert cli.main(["sweep", "--pause", sid]) == 0
    worker = threading.Thread(target=agent.local_agent,
                              args=(sid, agent.AgentOptions(data_dir=str(dataset_dir), show_progress=False)))
    worker.start()
    time.sleep(1.0)
    assert ran == [] and worker.is_alive()
    assert cli.main(["sweep", "--resume", sid]) == 0
    worker.join(timeout=60)
    assert not worker.is_alive() and len(ran) == 3 and ledger.sweep(sid)["state"] == "finished"


def test_stopped_sweep_starts_no_run_and_status_shows_the_state(dataset_dir, monkeypatch, capsys):
    from asl_sweep import cli

    ran = []
    _fake_runs(monkeypatch, ran)
    ledger = Ledger()
    sid = ledger.create_sweep(SMOKE, "s")
    assert cli.main(["sweep", "--stop", sid]) == 0
    assert agent.local_agent(sid, agent.AgentOptions(data_dir=str(dataset_dir), show_progress=False)) == 0
    assert cli.main(["status", sid]) == 0
    assert f"sweep {sid} (random, finished)" in capsys.readouterr().out
    assert cli.main(["sweep", "--resume", sid]) == 2
    assert f"cannot resume sweep {sid}: it is finished" in capsys.readouterr().err


def test_control_of_a_wandb_sweep_is_handed_to_wandb_sweep(monkeypatch):
    from asl_sweep import cli

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr("asl_sweep.runtime.unreachable", lambda: None)
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    assert cli.main(["sweep", "--cancel", "ent/proj/abc123"]) == 0
    assert cli.main(["sweep", "--pause", "abc123", "--project", "p"]) == 0
    assert calls == [[sys.executable, "-m", "wandb", "sweep", "--cancel", "ent/proj/abc123"],
                     [sys.executable, "-m", "wandb", "sweep", "--pause", "--project", "p", "abc123"]]


def test_controller_local_in_the_yaml_selects_the_embedded_controller_online(tmp_path, monkeypatch, capsys):
    import wandb

    from asl_sweep import cli

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr(wandb, "sweep", lambda *a, **k: pytest.fail("must not create a W&B sweep"))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**SMOKE, "controller": {"type": "local"}}))
    assert cli.main(["sweep", str(path), "--project", "mine"]) == 0
    [sweep] = Ledger().sweeps()
    assert sweep["config"]["project"] == "mine" and "created local sweep" in capsys.readouterr().out


def test_online_without_an_api_key_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(SMOKE))
    home = tmp_path / "home"
    home.mkdir()
    proc = subprocess.run([sys.executable, "-m", "asl_sweep", "sweep", str(path)], capture_output=True, text=True,
                          env=env(WANDB_MODE="online", HOME=str(home), WANDB_API_KEY=""), timeout=120)
    assert proc.returncode == 2 and "no API key" in proc.stderr and proc.stderr.count("\n") == 1


@pytest.mark.parametrize("flags, extra_env, runs", [
    ([], {}, 3),  # W&B's flapping rule: 3 failures in the agent's first minute
    (["--max-consecutive-failed-runs", "2"], {}, 2),
    ([], {"WANDB_AGENT_DISABLE_FLAPPING": "true", "WANDB_AGENT_MAX_INITIAL_FAILURES": "4"}, 4),
])
def test_failing_runs_stop_the_agent_by_wandbs_rules(dataset_dir, flags, extra_env, runs):
    ledger = Ledger()
    params = {**SMOKE["parameters"], "conv_blocks": {"value": 4}, "image_size": {"value": 8}}  # too small: fails
    sid = ledger.create_sweep({**SMOKE, "run_cap": 10, "parameters": params}, "f")
    proc = subprocess.run([sys.executable, "-m", "asl_sweep", "agent", sid, "--quiet", *flags],
                          env=env(ASL_SWEEP_DATA_DIR=str(dataset_dir), **extra_env),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "agent shut down after" in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "too small" in proc.stderr
    assert [r.state for r in ledger.runs(sid)] == ["failed"] * runs


def test_a_bad_data_folder_is_found_before_any_run_is_claimed(tmp_path):
    ledger = Ledger()
    sid = ledger.create_sweep(SMOKE, "d")
    proc = subprocess.run([sys.executable, "-m", "asl_sweep", "agent", sid, "--data-dir", str(tmp_path / "typo")],
                          env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "typo" in proc.stderr
    assert ledger.runs(sid) == []


def test_a_run_out_of_memory_is_recorded_as_failed_and_the_agent_goes_on(dataset_dir, monkeypatch):
    ran = []

    def fake(ledger, sweep_id, run, cache, progress, target):
        ran.append(run.id)
        if len(ran) == 1:
            raise MemoryError("Unable to allocate 34.2 GiB for an array with shape (128, 128, 512, 4096)\nmore")
        ledger.finish_run(run.id, "finished")
        return "finished"

    monkeypatch.setattr(agent, "_run_in_process", fake)
    monkeypatch.setattr("asl_sweep.runtime.load_tensorflow", lambda quiet: None)
    ledger = Ledger()
    sid = ledger.create_sweep({**SMOKE, "run_cap": 3}, "m")
    assert agent.local_agent(sid, agent.AgentOptions(data_dir=str(dataset_dir), show_progress=False)) == 3
    runs = ledger.runs(sid)
    assert [r.state for r in runs] == ["failed", "finished", "finished"]
    assert runs[0].error == "MemoryError: Unable to allocate 34.2 GiB for an array with shape (128, 128, 512, 4096)"


def test_one_agent_per_listed_gpu_each_with_its_own_cuda_visible_devices(monkeypatch):
    """AGENTS/GPUS: what each agent process is started with (our machines have no GPU to run on)."""
    from asl_sweep import agent

    started = []

    class Recorded:
        def __init__(self, cmd, env):
            started.append(env)
            self.returncode = 0

        def poll(self):
            return 0

    monkeypatch.setattr(agent.subprocess, "Popen", Recorded)
    monkeypatch.setattr(agent.os, "cpu_count", lambda: 8)
    ledger = Ledger()
    sid = ledger.create_sweep({"method": "random", "parameters": {"dropout": {"values": [0.1]}}}, "gpus")
    agent.run_agents(sid, 4, agent.AgentOptions(gpus=("0", "1", "3", "5"), show_progress=False))
    assert [e["CUDA_VISIBLE_DEVICES"] for e in started] == ["0", "1", "3", "5"]
    assert {e["ASL_SWEEP_THREADS"] for e in started} == {"2"}
    assert agent.agent_environments(3, ("0", "1")) == [
        {"ASL_SWEEP_THREADS": "2", "CUDA_VISIBLE_DEVICES": g} for g in ("0", "1", "0")]


class AgentProcess:
    """An agent process whose exit the test decides: it has exited with `code` (its returncode set, as
    Popen's own poll/wait set it) from its first poll(), or, with `sigint_first`, that first poll() is where
    the parent's own SIGINT lands, while the agents still run."""

    started: list[list[str]] = []

    def __init__(self, cmd: list[str], env: dict[str, str], *, code: int, sigint_first: bool) -> None:
        AgentProcess.started.append(cmd)
        self.code, self.sigint_first, self.returncode = code, sigint_first, None

    def poll(self) -> int | None:
        if self.sigint_first:
            self.sigint_first = False
            signal.raise_signal(signal.SIGINT)  # its handler runs before poll() returns
            return None
        self.returncode = self.code
        return self.code

    def wait(self) -> int:
        self.returncode = self.code
        return self.code


@pytest.mark.parametrize("codes, order, expected", [
    ((130, 130), "the parent's SIGINT, then the agents' exits", 130),
    ((2, 1), "the parent's SIGINT, then the agents' exits (as errors)", 130),
    ((130, -signal.SIGINT), "the agents' exits, then the parent's SIGINT", 130),
    ((130, 130), "the agents' exits, the parent's SIGINT never seen", 130),
    ((0, 1), "no Ctrl-C: one agent failed", 2),
], ids=lambda v: v if isinstance(v, str) else None)
def test_ctrl_c_of_several_agents_is_one_interrupted_line_whichever_arrives_first(codes, order, expected, monkeypatch,
                                                                                   capsys):
    """The order is forced: the parent's own SIGINT is raised inside its first poll() of the agents (before
    their exits), or in its last look at the ledger (after it has read every exit), or not at all."""
    from asl_sweep import cli

    location = str(Path("ledger.db").resolve())
    with Ledger(location) as ledger:
        sid = ledger.create_sweep({"method": "random", "parameters": {"dropout": {"values": [0.1]}}}, "ctrl-c")
    made = iter(codes)
    monkeypatch.setattr(agent.subprocess, "Popen", lambda cmd, env: AgentProcess(
        cmd, env, code=next(made), sigint_first=order.startswith("the parent's SIGINT")))
    real_show = display.Progress.show

    def last_look(self, force: bool = False) -> None:
        if force and order == "the agents' exits, then the parent's SIGINT":
            signal.raise_signal(signal.SIGINT)
        real_show(self, force)

    monkeypatch.setattr(display.Progress, "show", last_look)
    AgentProcess.started.clear()
    capsys.readouterr()
    code = cli.main(["agent", sid, "--agents", "2", "--quiet", "--ledger", location])
    err = capsys.readouterr().err.strip()
    assert code == expected, err
    assert err == ("asl-sweep: interrupted" if expected == 130 else "asl-sweep: error: 1 of 2 agents exited with an error")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert len(AgentProcess.started) == 2 and not any(location in arg for arg in AgentProcess.started[0])


def test_the_progress_line_counts_minutes_past_the_hour():
    """An agent runs for hours: 75 minutes read 75:05, not 15:05."""
    with Ledger() as ledger:
        sid = ledger.create_sweep(SMOKE, "long")
        line = agent.progress_line(ledger, sid, time.time() - 75 * 60 - 5)
    assert "0/2 runs done, 0 running" in line and "75:05 elapsed" in line, line
