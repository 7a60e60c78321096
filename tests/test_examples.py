"""examples/slurm works as written: the PostgreSQL script starts a server agents can use, and the job
script, run as Slurm runs an array task, is an agent that SIGTERM preempts cleanly."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from asl_sweep.ledger import Ledger
from asl_sweep.state import RunState
from tests.pg import bindir, free_port
from tests.test_multi_machine import SEEDS, Agents, a_running_run, check_invariants, create, grid_sweep, runs

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "examples" / "slurm"
pytestmark = pytest.mark.slow


def test_the_postgres_script_starts_a_password_protected_server_a_ledger_can_use():
    if bindir() is None:
        pytest.fail("PostgreSQL binaries not found")  # .ci/run installs them
    root = Path(tempfile.mkdtemp(prefix="asl-sweep-pgscript-"))
    root.chmod(0o755)
    user = "postgres" if os.geteuid() == 0 else os.environ.get("USER", "")
    if os.geteuid() == 0:
        shutil.chown(root, user)
    port = free_port()
    env = {"PATH": f"{bindir()}:/usr/bin:/bin", "PGDATA": str(root / "data"), "PORT": str(port), "USER": user,
           "HOME": str(root), "PGPASSWORD": "s3cret", "HOST": "127.0.0.1"}
    prefix = ["runuser", "-u", user, "--"] if os.geteuid() == 0 else []
    copy = shutil.copy(SLURM / "postgres-server.sh", root)  # where that user can read it (a clone may be root-only)
    script = [*prefix, "env", *(f"{k}={v}" for k, v in env.items()), "bash", str(copy)]
    try:
        started = subprocess.run([*script, "start"], capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stderr
        line = started.stdout.strip().splitlines()[-1]
        assert line.startswith(f"export ASL_SWEEP_LEDGER=postgresql://{user}@127.0.0.1:{port}/asl_sweep ")
        assert "s3cret" not in started.stdout + started.stderr  # the password stays out of the printed URL
        url = line.split("=", 1)[1].split()[0]
        with pytest.MonkeyPatch.context() as env_vars:
            env_vars.setenv("PGPASSWORD", "s3cret")  # as the line says: libpq takes it from the environment
            with Ledger(url) as ledger:
                assert ledger.sweeps() == []
            env_vars.setenv("PGPASSWORD", "wrong")
            with pytest.raises(Exception, match="password authentication failed"):
                Ledger(url)
    finally:
        subprocess.run([*script, "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_the_slurm_job_script_is_an_agent_that_sigterm_preempts(tmp_path, postgres_url, dataset_dir):
    seeds = SEEDS[:3]
    sid = create(postgres_url, grid_sweep(epochs=6, seeds=seeds))
    env = {**os.environ, "SWEEP": sid, "ASL_SWEEP_LEDGER": postgres_url, "SLURM_SUBMIT_DIR": str(REPO),
           "SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "0", "SLURM_CPUS_PER_TASK": "1",
           "ASL_SWEEP_RUNS_DIR": str(tmp_path / "runs"), "ASL_SWEEP_HEARTBEAT_S": "0.2", "FAKE_EPOCH_S": "0.3",
           "ASL_SWEEP_VENV": str(Path(os.sys.executable).parents[1]), "PYTHONPATH": str(REPO)}
    task = subprocess.Popen(["bash", str(SLURM / "sweep-array.sbatch"), "--subprocess", "--data-dir", str(dataset_dir)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    preempted = a_running_run(postgres_url, sid, agent_pid=task.pid)  # exec: the agent has the script's pid
    task.send_signal(signal.SIGTERM)  # what --signal=B:TERM@180 sends
    out, _ = task.communicate(timeout=60)
    assert task.returncode == 0 and "requeued" in out, out
    assert (tmp_path / "runs" / "77_0" / "wandb").is_dir()
    assert next(r for r in runs(postgres_url, sid) if r.id == preempted.id).state == RunState.PENDING
    agents = Agents(tmp_path, postgres_url, sid, dataset_dir)
    agents.start("next-task")
    agents.wait()
    final = check_invariants(postgres_url, sid, cap=len(seeds))
    assert {r.state for r in final} == {RunState.FINISHED} and len(final) == len(seeds)
