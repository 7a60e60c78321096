"""Our agent against W&B's own agent code (wandb/wandb_agent.py), imported from the installed wandb:
the same command lines for every shipped sweep file and a table of edge cases, the same failure
policy, and runs that work when the venv is not first on PATH."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from wandb import wandb_agent

from asl_sweep import agent
from asl_sweep.ledger import Ledger
from tests.conftest import TINY

REPO = Path(__file__).resolve().parents[1]
SWEEP_FILES = sorted((REPO / "sweeps").glob("*.yaml"))
PARAMS = {"epochs": 2, "batch_norm": True, "augment": False, "learning_rate": 1e-05, "optimizer": "adam w",
          "filters_1": 16}


def wandb_command(config: dict, params: dict, sweep_id: str, run_id: str, monkeypatch) -> list[str]:
    """The command line W&B's agent would start for this run (its AgentProcess intercepted)."""
    captured = {}

    class Capture:
        def __init__(self, command=None, env=None, **_):
            captured["command"] = command

    monkeypatch.setattr(wandb_agent, "AgentProcess", Capture)
    for var in ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH"):
        monkeypatch.setenv(var, sweep_id)  # restored after the test; W&B's agent overwrites two of them
    w = wandb_agent.Agent(api=None, queue=None, sweep_id=sweep_id)
    if isinstance(config.get("command"), list) and config["command"]:  # as Agent.run reads the sweep's config
        w._sweep_command = list(config["command"])
    w._command_run({"type": "run", "run_id": run_id, "program": config.get("program"),
                    "args": {k: {"value": v} for k, v in params.items()}})
    return captured["command"]


@pytest.mark.parametrize("path", SWEEP_FILES, ids=[p.stem for p in SWEEP_FILES])
def test_every_shipped_sweep_file_expands_as_wandb_expands_it(path, monkeypatch):
    config = yaml.safe_load(path.read_text())
    ours = agent.expand_command(config, PARAMS, sweep_id="swp12345", run_id="run12345")
    assert ours == wandb_command(config, PARAMS, "swp12345", "run12345", monkeypatch)
    assert ours[:2] == ["/usr/bin/env", "python"]


EDGE_CASES = {
    "default command": {"program": "train.py"},
    "every args format": {"program": "t.py", "command": [
        "${env}", "${interpreter}", "${program}", "${args}", "${args_no_hyphens}", "${args_no_boolean_flags}",
        "${args_json}", "${args_json_file}", "${args_no_equals}", "${args_append_hydra}", "${args_override_hydra}"]},
    "unknown macros are dropped": {"command": ["${interpreter}", "${nope}", "-m", "x", "${args_dict}", "${}"]},
    "envvar set, unset, inside a word": {"command": ["${envvar:ASL_TEST_SET}", "${envvar:ASL_TEST_UNSET}",
                                                     "--out=${envvar:ASL_TEST_SET}/x", "${interpreter}"]},
    "numbers and literal words": {"command": ["nice", "-n", 5, "${interpreter}", "-u", "-m", "asl_sweep.train"]},
    "no interpreter": {"program": "run.sh", "command": ["bash", "${program}", "${args}"]},
}


@pytest.mark.parametrize("name", list(EDGE_CASES))
def test_edge_cases_expand_as_wandb_expands_them(name, monkeypatch):
    monkeypatch.setenv("ASL_TEST_SET", "/data/here")
    monkeypatch.delenv("ASL_TEST_UNSET", raising=False)
    config = EDGE_CASES[name]
    ours = agent.expand_command(json.loads(json.dumps(config)), PARAMS, sweep_id="s1", run_id="r1")
    assert ours == wandb_command(json.loads(json.dumps(config)), PARAMS, "s1", "r1", monkeypatch)


def test_param_files_are_where_wandb_writes_them(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    config = {"command": ["${interpreter}", "${args_json_file}"]}
    ours = agent.write_param_files(config, PARAMS, "s1", "r1")
    ours_yaml, ours_json = ours.read_text(), (ours.parent / "config-r1.json").read_text()
    for f in ours.parent.iterdir():
        f.unlink()
    wandb_command(config, PARAMS, "s1", "r1", monkeypatch)
    assert ours.read_text() == ours_yaml and (ours.parent / "config-r1.json").read_text() == ours_json
    assert json.loads(ours_json) == PARAMS and yaml.safe_load(ours_yaml)["epochs"] == {"value": 2}


POLICY_CASES = [
    # (outcomes, WANDB_AGENT_MAX_INITIAL_FAILURES, --max-consecutive-failed-runs, flapping window open)
    ("FFFFFF", None, None, False),
    ("SFFFFFFF", None, None, False),
    ("SSSSFFFFFFFFF", None, None, False),
    ("FFFFFF", "2", None, False),
    ("FFSFFSFF", "3", None, False),
    ("FFFF", None, None, True),
    ("SFSFSF", None, None, True),
    ("SFFSFF", None, 2, False),
    ("FSFSFSFSFSFS", "100", 2, False),
]


@pytest.mark.parametrize("outcomes, initial, consecutive, early", POLICY_CASES)
def test_failure_policy_stops_where_wandbs_agent_stops(outcomes, initial, consecutive, early, monkeypatch):
    """W&B's counters and its own is_flapping/is_failing checks, in the order of its run loop."""
    if initial is None:
        monkeypatch.delenv("WANDB_AGENT_MAX_INITIAL_FAILURES", raising=False)
    else:
        monkeypatch.setenv("WANDB_AGENT_MAX_INITIAL_FAILURES", initial)
    monkeypatch.delenv("WANDB_AGENT_DISABLE_FLAPPING", raising=False)
    w = wandb_agent.Agent(api=None, queue=None, max_consecutive_failed_runs=consecutive)
    ours = agent.FailurePolicy(consecutive)
    if not early:
        w._start_time -= 3600
        ours.started -= 3600
    theirs_stop = ours_stop = None
    for i, outcome in enumerate(outcomes):
        failed = outcome == "F"
        if theirs_stop is None:
            w._failed += failed
            w._consecutive_failed_runs = w._consecutive_failed_runs + 1 if failed else 0
            if (w._consecutive_failed_runs >= w._max_consecutive_failed_runs
                    or (failed and (w.is_flapping() or w.is_failing()))):
                theirs_stop = i
            w._finished += 1
        if ours_stop is None and ours.record(failed):
            ours_stop = i
    assert ours_stop == theirs_stop


def test_interpreter_dir_makes_a_python_link_when_the_folder_has_none(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python3.11").symlink_to(sys.executable)
    monkeypatch.setattr(sys, "executable", str(bindir / "python3.11"))
    found = agent.interpreter_dir.__wrapped__()
    assert found != bindir and os.path.samefile(found / "python", bindir / "python3.11")


def test_subprocess_sweep_of_smoke_yaml_runs_with_the_venv_not_on_path(dataset_dir):
    """As a new user runs it: venv not activated, PATH without it, no PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH="/usr/bin:/bin", ASL_SWEEP_DATA_DIR=str(dataset_dir))
    proc = subprocess.run([sys.executable, "-m", "asl_sweep", "sweep", str(REPO / "sweeps/smoke.yaml"), "--local",
                           "--run", "--subprocess"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    [sweep] = Ledger().sweeps()
    runs = Ledger().runs(sweep["id"])
    assert len(runs) == yaml.safe_load((REPO / "sweeps/smoke.yaml").read_text())["run_cap"]
    assert {r.state for r in runs} == {"finished"}, [r.error for r in runs]


def test_subprocess_runs_get_wandb_agents_environment(dataset_dir, tmp_path):
    """What each run's process sees: W&B's variables, the local sweep id in our own, our python first."""
    out = tmp_path / "env.json"
    probe = f"import json, os; json.dump(dict(os.environ), open({str(out)!r}, 'w'))"
    config = {"method": "random", "run_cap": 1, "project": "yaml-project", "entity": "yaml-entity",
              "parameters": {"epochs": {"value": 1}}, "command": ["${env}", "${interpreter}", "-c", probe]}
    ledger = Ledger()
    sid = ledger.create_sweep(config, "env")
    opts = agent.AgentOptions(subprocess_mode=True, data_dir=str(dataset_dir), project="flag-project",
                              show_progress=False)
    agent.local_agent(sid, opts)
    seen = json.loads(out.read_text())
    [run] = ledger.runs(sid)
    assert seen["ASL_SWEEP_SWEEP_ID"] == sid and "WANDB_SWEEP_ID" not in seen and seen["WANDB_RUN_ID"] == run.id
    assert seen["WANDB_PROJECT"] == "flag-project" and seen["WANDB_ENTITY"] == "yaml-entity"
    assert seen["PATH"].split(os.pathsep)[0] == str(agent.interpreter_dir())
    assert seen["ASL_SWEEP_DATA_DIR"] == str(dataset_dir.resolve())
    assert yaml.safe_load(Path(seen["WANDB_SWEEP_PARAM_PATH"]).read_text())["epochs"] == {"value": 1}
    assert run.state == "failed"  # the probe never reports to the ledger: recorded as failed, with why
    assert "exit code 0" in run.error


def test_project_and_entity_follow_wandb_sweeps_precedence(monkeypatch):
    from asl_sweep.sweepfile import wandb_target

    yaml_cfg = {"project": "p-yaml", "entity": "e-yaml"}
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.delenv("WANDB_ENTITY", raising=False)
    assert wandb_target({}) == ("asl-sweep", None)
    assert wandb_target(yaml_cfg) == ("p-yaml", "e-yaml")
    monkeypatch.setenv("WANDB_PROJECT", "p-env")
    monkeypatch.setenv("WANDB_ENTITY", "e-env")
    assert wandb_target(yaml_cfg) == ("p-env", "e-env")
    assert wandb_target(yaml_cfg, "p-flag", "e-flag") == ("p-flag", "e-flag")


def test_in_process_runs_log_to_the_resolved_project(dataset_dir, monkeypatch):
    import wandb

    seen = []
    real_init = wandb.init
    monkeypatch.setattr(wandb, "init", lambda **kw: seen.append((kw["project"], kw["entity"])) or real_init(**kw))
    config = {"method": "random", "run_cap": 1, "project": "yaml-project", "entity": "yaml-entity",
              "parameters": {k: {"value": v} for k, v in TINY.items()},
              "command": ["${env}", "${interpreter}", "-m", "asl_sweep.train", "${args}"]}
    monkeypatch.setenv("WANDB_ENTITY", "env-entity")
    sid = Ledger().create_sweep(config, "p")
    agent.local_agent(sid, agent.AgentOptions(data_dir=str(dataset_dir), show_progress=False))
    assert seen == [("yaml-project", "env-entity")]
