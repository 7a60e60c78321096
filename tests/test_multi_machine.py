"""Several machines on one sweep, simulated on one: agent processes with their own working directory,
cache and WANDB_DIR, one PostgreSQL ledger started by the tests, and faults a cluster has (agents killed,
the database restarted, connections cut mid-write, clocks off, SIGTERM before a kill). Runs are
`tests/fake_train.py` (real agents, real ledger, fake epochs); the last test trains for real.
Each fault test ends with the same invariants."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from asl_sweep.ledger import Ledger
from asl_sweep.records import Run
from asl_sweep.state import RunState
from tests.conftest import TINY

HERE = Path(__file__).resolve().parent
SEEDS = list(range(1, 9))
pytestmark = pytest.mark.slow


def grid_sweep(epochs: int = 4, seeds: list[int] = SEEDS) -> dict:
    return {"method": "grid", "metric": {"name": "val_accuracy", "goal": "maximize"},
            "parameters": {"seed": {"values": seeds}, "epochs": {"value": epochs}},
            "command": ["${interpreter}", str(HERE / "fake_train.py"), "${args}"]}


def create(url: str, config: dict) -> str:
    with Ledger(url) as ledger:
        return ledger.create_sweep(config, "multi")


class Agents:
    """Agent processes, each as if on its own machine; killed as a whole (process group) when asked."""

    def __init__(self, tmp_path: Path, url: str, sweep_id: str, data_dir: Path) -> None:
        self.tmp_path, self.url, self.sweep_id, self.data_dir = tmp_path, url, sweep_id, data_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *, in_process: bool = False, **env: str) -> subprocess.Popen:
        work = self.tmp_path / name
        work.mkdir()
        full_env = {**os.environ, "ASL_SWEEP_LEDGER": self.url, "WANDB_DIR": str(work),
                    "ASL_SWEEP_CACHE_DIR": str(work / "cache"), "ASL_SWEEP_HEARTBEAT_S": "0.2",
                    "ASL_SWEEP_HEARTBEAT_TIMEOUT_S": "3", "FAKE_EPOCH_S": "0.3", "ASL_SWEEP_LEDGER_RETRY_S": "120",
                    "PYTHONPATH": str(HERE.parent), **env}
        cmd = [sys.executable, str(HERE / "faulty_agent.py"), "agent", self.sweep_id, "--quiet",
               "--data-dir", str(self.data_dir)] + ([] if in_process else ["--subprocess"]) + \
            (["--agents", env["AGENTS_FLAG"]] if "AGENTS_FLAG" in env else [])
        proc = subprocess.Popen(cmd, cwd=work, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        self.procs[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        os.killpg(self.procs[name].pid, sig)
        self.procs[name].wait(timeout=30)

    def wait(self, timeout: float = 180) -> dict[str, str]:
        """Every agent's exit code and output; all must exit 0 (a killed agent is waited for by `kill`)."""
        out = {}
        for name, proc in self.procs.items():
            text, _ = proc.communicate(timeout=timeout)
            out[name] = text
            assert proc.returncode in (0, -signal.SIGKILL), f"agent {name} exited {proc.returncode}:\n{text}"
        return out


def runs(url: str, sweep_id: str) -> list[Run]:
    with Ledger(url) as ledger:
        return ledger.runs(sweep_id)


def wait_until(condition, timeout: float = 60, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def a_running_run(url: str, sweep_id: str, epochs: int = 1, agent_pid: int | None = None) -> dict:
    def found():
        return next((r for r in runs(url, sweep_id) if r.state == RunState.RUNNING and len(r.history) >= epochs
                     and (agent_pid is None or r.agent.endswith(f":{agent_pid}"))), None)
    return wait_until(found, what="a running run with an epoch")


def check_invariants(url: str, sweep_id: str, *, cap: int = len(SEEDS), finished_before: list[dict] = ()) -> list[dict]:
    """≤ run_cap runs numbered 1..n, no grid point twice, every run final, epochs once each, finished runs unchanged."""
    final = runs(url, sweep_id)
    assert len(final) <= cap
    assert [r.number for r in final] == list(range(1, len(final) + 1))
    seeds = [r.config["seed"] for r in final]
    assert len(set(seeds)) == len(seeds), f"a grid point ran twice: {sorted(seeds)}"
    assert all(r.state.is_final for r in final), [(r.number, r.state) for r in final]
    for r in final:
        assert [e["epoch"] for e in r.history] == list(range(1, len(r.history) + 1)), r.history
    by_id = {r.id: r for r in final}
    for before in finished_before:
        after = by_id[before.id]
        assert (after.state, after.history, after.summary, after.ended_at) == \
            (before.state, before.history, before.summary, before.ended_at)
    with Ledger(url) as ledger:
        assert ledger.sweep(sweep_id)["state"] == "finished"
    return final


def finished(url: str, sweep_id: str) -> list[dict]:
    return [r for r in runs(url, sweep_id) if r.state == RunState.FINISHED]


def test_agents_on_several_machines_share_one_sweep_exactly(tmp_path, postgres_url, dataset_dir):
    sid = create(postgres_url, grid_sweep(epochs=2))
    agents = Agents(tmp_path, postgres_url, sid, dataset_dir)
    for name in ("m1", "m2", "m3"):
        agents.start(name)
    agents.wait()
    final = check_invariants(postgres_url, sid)
    assert sorted(r.config["seed"] for r in final) == SEEDS and {r.state for r in final} == {RunState.FINISHED}
    assert len({r.agent.split(":")[1] for r in final}) >= 2  # the work was shared


def test_an_agent_killed_mid_run_leaves_a_crashed_run_and_the_sweep_goes_on(tmp_path, postgres_url, dataset_dir):
    sid = create(postgres_url, grid_sweep())
    agents = Agents(tmp_path, postgres_url, sid, dataset_dir)
    victim = agents.start("m1")
    agents.start("m2")
    doomed = a_running_run(postgres_url, sid, agent_pid=victim.pid)
    agents.kill("m1")
    before = finished(postgres_url, sid)
    agents.wait()
    final = check_invariants(postgres_url, sid, finished_before=before)
    states = {r.id: r.state for r in final}
    assert states[doomed.id] == RunState.CRASHED
    assert sum(s == RunState.FINISHED for s in states.values()) == len(SEEDS) - 1


def test_an_agent_killed_while_holding_the_claim_lock_does_not_block_the_others(tmp_path, postgres_url, dataset_dir):
    sid = create(postgres_url, grid_sweep(epochs=2))
    agents = Agents(tmp_path, postgres_url, sid, dataset_dir)
    mark = tmp_path / "in-claim"
    agents.start("m1", FAULT_SLOW_CLAIM_S="60", FAULT_MARK=str(mark))
    wait_until(mark.exists, what="the claim lock taken")
    agents.start("m2")
    time.sleep(1)
    assert runs(postgres_url, sid) == []  # m2 waits for the lock m1 holds
    agents.kill("m1")
    agents.wait()
    final = check_invariants(postgres_url, sid)
    assert {r.state for r in final} == {RunState.FINISHED} and len(final) == len(SEEDS)


def test_a_database_restart_mid_sweep_loses_and_duplicates_nothing(tmp_path, dataset_dir):
    from tests.pg import PostgresServer

    server = PostgresServer()  # its own server: it is crashed and restarted
    try:
        url = server.create_database("restart")
        sid = create(url, grid_sweep())
        agents = Agents(tmp_path, url, sid, dataset_dir)
        agents.start("m1")
        agents.start("m2")
        wait_until(lambda: len(finished(url, sid)) >= 2, what="two finished runs")
        before = finished(url, sid)
        server.stop("immediate")
        time.sleep(2)
        server.start()
        out = agents.wait()
        final = check_invariants(url, sid, finished_before=before)
        assert {r.state for r in final} == {RunState.FINISHED} and len(final) == len(SEEDS)
        assert "reconnect" in "".join(out.values())
    finally:
        server.close()


SLOW_ONCE = """
CREATE SEQUENCE fault_{name};
CREATE FUNCTION slow_{name}() RETURNS trigger AS $$
BEGIN
    IF nextval('fault_{name}') = {which} THEN PERFORM pg_sleep(30); END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
"""


def sweep_with_a_cut_connection(tmp_path, server, url, data_dir, trigger: str, query_start: str, epochs: int) -> list[dict]:
    """Two agents run the sweep; the first session that fires `trigger` is stuck in pg_sleep inside
    `query_start` and the test terminates it there (pg_terminate_backend). Returns the checked runs."""
    sid = create(url, grid_sweep(epochs=epochs))
    database = url.rsplit("/", 1)[1]
    server.sql(database, trigger)
    agents = Agents(tmp_path, url, sid, data_dir)
    agents.start("m1")
    agents.start("m2")

    def sleeping():
        return server.sql(database, "SELECT pid FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND query LIKE %s",
                          (query_start + "%",))
    pids = wait_until(sleeping, timeout=90, what=f"a session stuck in {query_start}")
    server.sql(database, "SELECT pg_terminate_backend(%s)", (pids[0][0],))
    agents.wait()
    final = check_invariants(url, sid)
    assert {r.state for r in final} == {RunState.FINISHED} and len(final) == len(SEEDS)
    return final


def test_a_connection_cut_during_an_epoch_write_is_retried_once(tmp_path, postgres_server, postgres_url, dataset_dir):
    trigger = SLOW_ONCE.format(name="epoch", which=5) + \
        "CREATE TRIGGER slow BEFORE INSERT ON epochs FOR EACH ROW EXECUTE FUNCTION slow_epoch();"
    final = sweep_with_a_cut_connection(tmp_path, postgres_server, postgres_url, dataset_dir, trigger,
                                        "INSERT INTO epochs", epochs=3)
    assert all(len(r.history) == 3 for r in final)


def test_a_connection_cut_between_a_claims_insert_and_commit_claims_once(tmp_path, postgres_server, postgres_url,
                                                                          dataset_dir):
    trigger = SLOW_ONCE.format(name="claim", which=3) + \
        "CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON runs DEFERRABLE INITIALLY DEFERRED " \
        "FOR EACH ROW EXECUTE FUNCTION slow_claim();"  # a deferred trigger fires at COMMIT
    sweep_with_a_cut_connection(tmp_path, postgres_server, postgres_url, dataset_dir, trigger, "COMMIT", epochs=2)


def test_an_agent_whose_clock_is_minutes_off_is_not_reaped_and_reaps_nobody(tmp_path, postgres_url, dataset_dir):
    sid = create(postgres_url, grid_sweep())
    agents = Agents(tmp_path, postgres_url, sid, dataset_dir)
    agents.start("behind", FAULT_CLOCK_OFFSET_S="-600")
    agents.start("ahead", FAULT_CLOCK_OFFSET_S="900")
    agents.wait()
    final = check_invariants(postgres_url, sid)
    assert {r.state for r in final} == {RunState.FINISHED} and len(final) == len(SEEDS)


def test_sigterm_requeues_the_run_and_another_agent_finishes_it(tmp_path, postgres_url, dataset_dir, monkeypatch):
    seeds = SEEDS[:4]
    sid = create(postgres_url, grid_sweep(epochs=6, seeds=seeds))
    agents = Agents(tmp_path, postgres_url, sid, dataset_dir)
    first = agents.start("m1")
    preempted = a_running_run(postgres_url, sid, agent_pid=first.pid)
    first.send_signal(signal.SIGTERM)  # to the agent only: it passes the signal on to its run
    assert first.wait(timeout=30) == 0
    queued = next(r for r in runs(postgres_url, sid) if r.id == preempted.id)
    assert queued.state == RunState.PENDING and queued.preemptions == 1
    second = agents.start("m2")
    out = agents.wait()
    assert "requeued" in out["m1"]
    final = check_invariants(postgres_url, sid, cap=len(seeds))
    rerun = next(r for r in final if r.id == preempted.id)
    assert (rerun.state, rerun.attempt, rerun.number) == (RunState.FINISHED, 2, preempted.number)
    assert rerun.agent.endswith(f":{second.pid}") and len(rerun.history) == 6
    assert len(final) == len(seeds) and {r.state for r in final} == {RunState.FINISHED}
    monkeypatch.setenv("ASL_SWEEP_LEDGER", postgres_url)
    from asl_sweep.status import status_table

    assert status_table(sid).count("preempted 1x, requeued") == 1


def test_two_machines_train_a_smoke_sweep_and_a_third_exports_the_winner(tmp_path, postgres_url, dataset_dir):
    """Real training: two agents in their own folders, then export from a folder that has none of their files."""
    smoke = yaml.safe_load((HERE.parent / "sweeps" / "smoke.yaml").read_text())
    config = {**smoke, "run_cap": 4, "parameters": {**smoke["parameters"], **{k: {"value": v} for k, v in TINY.items()
                                                                              if k not in smoke["parameters"]}}}
    sid = create(postgres_url, config)
    agents = Agents(tmp_path, postgres_url, sid, dataset_dir)
    agents.start("m1", in_process=True, ASL_SWEEP_THREADS="1")
    agents.start("m2", in_process=True, ASL_SWEEP_THREADS="1")
    agents.wait(timeout=600)
    final = runs(postgres_url, sid)
    assert len(final) == 4 and {r.state for r in final} == {RunState.FINISHED}
    third = tmp_path / "m3"
    third.mkdir()
    env = {**os.environ, "ASL_SWEEP_LEDGER": postgres_url, "WANDB_DIR": str(third)}
    for machine in ("m1", "m2"):  # the trained models are gone from every machine: the ledger has them
        subprocess.run(["rm", "-rf", str(tmp_path / machine / "wandb")], check=True)
    done = subprocess.run([sys.executable, "-m", "asl_sweep", "export", sid, "--out", str(third / "best")],
                          cwd=third, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (third / "best" / "model.keras").stat().st_size > 1000 and (third / "best" / "metrics.json").is_file()


def test_every_command_works_on_a_postgresql_ledger(tmp_path, postgres_url, capsys, monkeypatch):
    """sweep (create and control), sweeps, status, report and sync, unchanged, with --ledger URL."""
    from asl_sweep import cli
    from tests.helpers_report import synthetic_sweep

    monkeypatch.delenv("ASL_SWEEP_LEDGER")
    sid = synthetic_sweep(postgres_url, runs=5)

    def ok(*argv: str) -> str:
        capsys.readouterr()
        assert cli.main(list(argv) + ["--ledger", postgres_url]) == 0, capsys.readouterr().err
        return capsys.readouterr().out

    created = ok("sweep", str(HERE.parent / "sweeps" / "smoke.yaml"), "--local")
    assert "postgresql://postgres@127.0.0.1" in created
    new = created.split()[3]
    assert "paused" in ok("sweep", "--pause", new) and "running" in ok("sweep", "--resume", new)
    listed = ok("sweeps")
    assert sid in listed and new in listed
    assert "best run:" in ok("status", sid)
    assert "report of 5 runs" in ok("report", sid, "--out", str(tmp_path / "report"))
    assert cli.main(["sync", sid, "--ledger", postgres_url]) == 2  # offline: one line, nothing changed
    assert "W&B is not reachable" in capsys.readouterr().err


def test_sigterm_to_a_machine_running_several_agents_requeues_every_run(tmp_path, postgres_url, dataset_dir):
    """`asl-sweep agent ID --agents 2` passes SIGTERM on to each agent; each requeues its own run."""
    sid = create(postgres_url, grid_sweep(epochs=8, seeds=SEEDS[:4]))
    agents = Agents(tmp_path, postgres_url, sid, dataset_dir)
    parent = agents.start("node", AGENTS_FLAG="2")
    wait_until(lambda: sum(r.state == RunState.RUNNING and len(r.history) >= 1 for r in runs(postgres_url, sid)) == 2,
               what="two runs in progress")
    parent.send_signal(signal.SIGTERM)
    out, _ = parent.communicate(timeout=60)
    assert parent.returncode == 0, out
    queued = [r for r in runs(postgres_url, sid) if r.state == RunState.PENDING]
    assert len(queued) == 2 and all(r.preemptions == 1 and r.history == [] for r in queued)


def test_a_dead_machines_run_is_shown_crashed_and_the_sweep_finished_with_no_agent_left(tmp_path, postgres_url,
                                                                                      dataset_dir, monkeypatch):
    """m1 dies mid-run; m2 runs the last grid point, finds nothing more to claim and exits while m1's run
    still looks alive. Once the heartbeat timeout passes, every reader shows the run crashed and the sweep
    finished, with no agent started again; the ledger records it at the next claim."""
    from asl_sweep.results import load_sweep
    from asl_sweep.status import status_table

    timeout = "10"  # longer than m2 takes to finish its run and exit
    sid = create(postgres_url, grid_sweep(epochs=3, seeds=SEEDS[:2]))
    agents = Agents(tmp_path, postgres_url, sid, dataset_dir)
    victim = agents.start("m1", ASL_SWEEP_HEARTBEAT_TIMEOUT_S=timeout)
    doomed = a_running_run(postgres_url, sid, agent_pid=victim.pid)
    agents.kill("m1")
    agents.start("m2", ASL_SWEEP_HEARTBEAT_TIMEOUT_S=timeout)
    agents.wait()
    monkeypatch.setenv("ASL_SWEEP_LEDGER", postgres_url)
    monkeypatch.setenv("ASL_SWEEP_HEARTBEAT_TIMEOUT_S", timeout)
    data = wait_until(lambda: (d := load_sweep(sid)).state == "finished" and d, timeout=60, what="the sweep shown finished")
    states = {r.id: r.state for r in data.runs}
    assert states.pop(doomed.id) == RunState.CRASHED and set(states.values()) == {RunState.FINISHED}
    assert f"{doomed.id} crashed" in " ".join(status_table(sid).split()) and "grid, finished" in status_table(sid)
