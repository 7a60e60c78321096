"""Agents: take runs from a sweep and execute them until it is done.

Local sweeps run here, in-process by default (TensorFlow and the data loaded once per agent,
a fresh `wandb.init` per run) or as one subprocess per run that expands the YAML's `command`
macros and sets the environment `wandb agent` sets - the proof the YAML works under W&B's agent.
W&B sweeps are handed to `wandb agent` itself.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from asl_sweep import controller
from asl_sweep.errors import UserError
from asl_sweep.ledger import Ledger
from asl_sweep.sweepfile import DEFAULT_COMMAND, metric

MAX_CONSECUTIVE_FAILURES = 3


def expand_command(config: dict[str, Any], params: dict[str, Any], param_file: str) -> list[str]:
    """W&B's command macros (${env}, ${interpreter}, ${program}, ${args}, ...), as `wandb agent` expands them."""
    args = [f"--{k}={v}" for k, v in params.items()]
    macros: dict[str, list[str]] = {
        "${env}": ["/usr/bin/env"],
        "${interpreter}": [sys.executable],
        "${program}": [config.get("program", "")],
        "${args}": args,
        "${args_no_hyphens}": [a[2:] for a in args],
        "${args_no_boolean_flags}": [f"--{k}={v}" for k, v in params.items() if not isinstance(v, bool)]
        + [f"--{k}" for k, v in params.items() if v is True],
        "${args_json}": [json.dumps(params)],
        "${args_json_file}": [param_file + ".json"],
    }
    out: list[str] = []
    for token in config.get("command", DEFAULT_COMMAND):
        out.extend(macros.get(token, [token]))
    if "${args_json_file}" in config.get("command", []):
        Path(param_file + ".json").write_text(json.dumps(params))
    return out


def progress_line(ledger: Ledger, sweep_id: str, started: float) -> str:
    """`runs done / cap, running, best metric so far and its run, elapsed` from the ledger."""
    sweep = ledger.sweep(sweep_id)
    runs = ledger.runs(sweep_id)
    name, goal = metric(sweep["config"])
    done = sum(r["state"] not in ("pending", "running") for r in runs)
    running = sum(r["state"] == "running" for r in runs)
    cap = sweep["config"].get("run_cap", "∞")
    best = controller.best_run(ledger, sweep_id)
    if best is not None:
        best_txt = f"best {name} {controller.best_value(best, name, goal):.4f} (run {best['id']} #{best['number']})"
    else:
        best_txt = f"best {name} -"
    elapsed = time.strftime("%M:%S", time.gmtime(time.time() - started))
    return f"[{sweep_id}] {done}/{cap} runs done, {running} running, {best_txt}, {elapsed} elapsed"


class Progress:
    """A live status line: rewritten in place on a terminal, one line per update otherwise (throttled)."""

    def __init__(self, ledger: Ledger, sweep_id: str, enabled: bool = True) -> None:
        self.ledger, self.sweep_id, self.enabled = ledger, sweep_id, enabled
        self.started = time.time()
        self.tty = sys.stdout.isatty()
        self._last = 0.0

    def show(self, force: bool = False) -> None:
        if not self.enabled or (not force and not self.tty and time.time() - self._last < 10):
            return
        self._last = time.time()
        line = progress_line(self.ledger, self.sweep_id, self.started)
        print(f"\r{line}\033[K" if self.tty else line, end="" if self.tty else "\n", flush=True)

    def end(self) -> None:
        if self.enabled and self.tty:
            print()


def _run_in_process(ledger: Ledger, sweep_id: str, run: dict[str, Any], cache, progress: Progress) -> str:
    from asl_sweep.train import execute

    reporter = controller.LedgerReporter(ledger, sweep_id, run["id"], on_epoch=progress.show)
    try:
        record = execute(run["config"], cache, reporter=reporter, run_id=run["id"], verbose=0)
    finally:
        reporter.close()
    return record["state"]


def _run_subprocess(ledger: Ledger, sweep: dict[str, Any], run: dict[str, Any]) -> str:
    import yaml

    with tempfile.TemporaryDirectory(prefix="asl-sweep-run-") as tmp:
        param_file = str(Path(tmp) / "sweep-params.yaml")
        Path(param_file).write_text(yaml.safe_dump({k: {"value": v} for k, v in run["config"].items()}))
        cmd = expand_command(sweep["config"], run["config"], param_file)
        env = {**os.environ, "WANDB_SWEEP_ID": sweep["id"], "WANDB_RUN_ID": run["id"],
               "WANDB_SWEEP_PARAM_PATH": param_file, "ASL_SWEEP_LEDGER": str(ledger.path.resolve())}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _, err = proc.communicate()
        except KeyboardInterrupt:
            proc.wait()
            raise
    after = ledger.run(run["id"])
    if after and after["state"] in ("pending", "running"):
        last = (err.strip().splitlines() or ["no output"])[-1]
        ledger.finish_run(run["id"], "failed", error=f"exit code {proc.returncode}: {last}")
    return (ledger.run(run["id"]) or {}).get("state", "failed")


def _watch_ctrl_c() -> tuple[threading.Event, Any]:
    """Remember that Ctrl-C was pressed (then raise KeyboardInterrupt as usual): a SIGINT that lands
    inside TensorFlow can come back as a different exception, which must not pass for a failed run."""
    pressed = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        return pressed, None

    def on_sigint(signum: int, frame: Any) -> None:
        pressed.set()
        raise KeyboardInterrupt

    return pressed, signal.signal(signal.SIGINT, on_sigint)


def local_agent(sweep_id: str, *, count: int | None = None, subprocess_mode: bool = False,
                data_dir: str | None = None, show_progress: bool = True, deadline: float | None = None) -> int:
    """Run a local sweep's runs until it is done, `count` runs have run, or no new run may start
    after `deadline` (a `time.time()` value); returns the number of runs executed."""
    from asl_sweep import runtime
    from asl_sweep.train import DataCache

    ledger = Ledger()
    sweep = ledger.sweep(sweep_id)
    if not subprocess_mode:  # runs in this process: load TensorFlow once, quietly, with this agent's threads
        runtime.load_tensorflow(quiet=not os.environ.get("ASL_SWEEP_DEBUG"))
    cache = DataCache(data_dir)
    # Move everything alive now (TensorFlow, Keras, wandb modules) out of the collector's view: a
    # full collection otherwise rescans them all, ~0.2-0.4 s at unpredictable points between runs.
    gc.collect()
    gc.freeze()
    progress = Progress(ledger, sweep_id, enabled=show_progress)
    agent = f"{os.uname().nodename}:{os.getpid()}"
    executed = failures = 0
    ctrl_c, previous = _watch_ctrl_c()
    try:
        while (count is None or executed < count) and (deadline is None or time.time() < deadline):
            run = controller.claim_next(ledger, sweep_id, agent)
            if run is None:
                break
            executed += 1
            progress.show(force=True)
            try:
                if subprocess_mode:
                    state = _run_subprocess(ledger, sweep, run)
                else:
                    state = _run_in_process(ledger, sweep_id, run, cache, progress)
            except KeyboardInterrupt:
                ledger.finish_run(run["id"], "stopped", error="interrupted by user (Ctrl-C)")
                raise
            except Exception as exc:  # one bad run must not end the sweep; its error is recorded
                if ctrl_c.is_set():  # Ctrl-C that surfaced as another error (e.g. from inside TensorFlow)
                    ledger.finish_run(run["id"], "stopped", error="interrupted by user (Ctrl-C)")
                    raise KeyboardInterrupt from exc
                ledger.finish_run(run["id"], "failed", error=f"{type(exc).__name__}: {exc}")
                state = "failed"
                if not isinstance(exc, UserError) and os.environ.get("ASL_SWEEP_DEBUG"):
                    raise
            failures = failures + 1 if state == "failed" else 0
            progress.show(force=True)
            if failures >= MAX_CONSECUTIVE_FAILURES:
                last = ledger.run(run["id"]) or {}
                raise UserError(f"{failures} runs in a row failed; last error: {last.get('error') or 'see its record'}")
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        progress.end()
        ledger.close()
    return executed


def run_agents(sweep_id: str, agents: int, *, count: int | None = None, subprocess_mode: bool = False,
               data_dir: str | None = None, minutes: float | None = None) -> None:
    """Start `agents` agent processes on this machine (threads split between them) and show progress."""
    if agents <= 1:
        deadline = time.time() + minutes * 60 if minutes else None
        local_agent(sweep_id, count=count, subprocess_mode=subprocess_mode, data_dir=data_dir, deadline=deadline)
        return
    threads = max(1, (os.cpu_count() or 1) // agents)
    cmd = [sys.executable, "-m", "asl_sweep", "agent", sweep_id, "--quiet"]
    cmd += (["--count", str(count)] if count else []) + (["--subprocess"] if subprocess_mode else [])
    cmd += ["--data-dir", data_dir] if data_dir else []
    cmd += ["--minutes", str(minutes)] if minutes else []
    env = {**os.environ, "ASL_SWEEP_THREADS": str(threads)}
    procs = [subprocess.Popen(cmd, env=env) for _ in range(agents)]
    ledger = Ledger()
    progress = Progress(ledger, sweep_id)
    try:
        while any(p.poll() is None for p in procs):
            progress.show()
            time.sleep(1)
    except KeyboardInterrupt:
        for p in procs:
            p.wait()
        raise
    finally:
        progress.show(force=True)
        progress.end()
        ledger.close()
    if any(p.returncode for p in procs):
        raise UserError(f"{sum(1 for p in procs if p.returncode)} of {agents} agents exited with an error")


def wandb_agent(sweep_id: str, count: int | None) -> int:
    """Hand a W&B sweep to W&B's own agent (it runs the YAML's `command`)."""
    cmd = [sys.executable, "-m", "wandb", "agent"] + (["--count", str(count)] if count else []) + [sweep_id]
    return subprocess.call(cmd)
