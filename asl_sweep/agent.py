"""Agents: take runs from a sweep and execute them until it is done.

How a run of a local sweep travels, from `asl-sweep sweep FILE --run` (or `asl-sweep agent ID`)
to its ledger row:

    cli.cmd_sweep (--run) / cli.cmd_agent, with the CLI's display (display.Progress) for events
      -> run_agents: one agent here, or k agent processes (`python -m asl_sweep agent ID --quiet`)
      -> local_agent: preflight (sweep file, data), then per run:
           controller.claim_next      Ledger.claim: one transaction under the sweep's lock: reap,
                                      requeued run first, cap/target, sweeps.next_run, insert
           in-process (default)       train.execute(config) in this process, TensorFlow and data loaded
                                      once; controller.LedgerReporter writes each epoch, asks
                                      sweeps.stop_runs (hyperband), relays stop requests and
                                      beats (heartbeat.Heartbeat)
           or subprocess (--subprocess)
                                      expand_command: the YAML's `command`, exactly as W&B's agent
                                      expands it; the child gets W&B's agent environment plus
                                      ASL_SWEEP_SWEEP_ID / ASL_SWEEP_LEDGER, and its
                                      `python -m asl_sweep.train` reports through
                                      controller.reporter_from_env
      -> ledger row: one row per epoch, then a final state, summary, record and model (or, after
         SIGTERM, back to `pending` for the next free agent).

Debug mode (`asl-sweep --debug`) sets ASL_SWEEP_DEBUG=1 in the environment, which every child
(agent processes and subprocess runs) inherits. W&B sweeps are handed to `wandb agent` itself,
with this install's interpreter first on PATH.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from asl_sweep import controller, heartbeat
from asl_sweep.errors import UserError
from asl_sweep.ledger import Ledger
from asl_sweep.ranking import best_run, best_value
from asl_sweep.records import ERROR_LOG, INTERRUPTED, Run
from asl_sweep.state import Outcome, RunState, SweepState
from asl_sweep.sweepfile import command_of, metric, wandb_target

log = logging.getLogger(__name__)
LOG_LINES = 40  # of a failed run's output or traceback, kept in its summary (`ledger.ERROR_LOG`)


@dataclass(frozen=True)
class AgentOptions:
    """What `asl-sweep agent` takes besides the sweep id (W&B's agent flags where W&B has them)."""

    count: int | None = None
    subprocess_mode: bool = False
    data_dir: str | None = None
    minutes: float | None = None
    project: str | None = None
    entity: str | None = None
    max_consecutive_failed_runs: int | None = None
    show_progress: bool = True
    gpus: tuple[str, ...] = ()  # one agent per entry (round robin when more agents), CUDA_VISIBLE_DEVICES set


class FailurePolicy:
    """When an agent gives up on failing runs, decided as W&B's agent decides it (`wandb_agent.Agent`):
    `--max-consecutive-failed-runs` (default: never), WANDB_AGENT_MAX_INITIAL_FAILURES (default 5:
    stop once failures reach it and outnumber the other runs), and flapping (3 failures within the
    agent's first 60 s; WANDB_AGENT_DISABLE_FLAPPING=true turns that off)."""

    FLAPPING_MAX_SECONDS = 60
    FLAPPING_MAX_FAILURES = 3
    MAX_INITIAL_FAILURES = 5

    def __init__(self, max_consecutive_failed_runs: int | None = None) -> None:
        from wandb import env as wandb_env

        self.started = time.time()
        self.failed = self.finished = self.consecutive = 0
        self.max_consecutive = max_consecutive_failed_runs or float("inf")
        self.max_initial = wandb_env.get_agent_max_initial_failures(self.MAX_INITIAL_FAILURES)
        self.flapping_off = os.getenv(wandb_env.AGENT_DISABLE_FLAPPING) == "true"

    def record(self, failed: bool) -> str | None:
        """Count one ended run; the reason to shut the agent down, or None to go on."""
        self.consecutive = self.consecutive + 1 if failed else 0
        self.failed += int(failed)
        reason = None
        if self.consecutive >= self.max_consecutive:
            reason = f"{self.consecutive} consecutive failed runs (--max-consecutive-failed-runs)"
        elif failed and not self.flapping_off and time.time() < self.started + self.FLAPPING_MAX_SECONDS \
                and self.failed >= self.FLAPPING_MAX_FAILURES:
            reason = (f"{self.FLAPPING_MAX_FAILURES} failed runs in the first {self.FLAPPING_MAX_SECONDS} seconds "
                      "(WANDB_AGENT_DISABLE_FLAPPING=true turns this check off)")
        elif failed and self.failed >= self.finished and self.failed >= self.max_initial:
            reason = f"{self.max_initial} failed runs in a row (WANDB_AGENT_MAX_INITIAL_FAILURES changes this)"
        self.finished += 1
        return reason


@functools.cache
def interpreter_dir() -> Path:
    """A folder whose `python` is this interpreter: W&B's agent runs `${interpreter}` as the word `python`
    through PATH, so this folder goes first on PATH (a venv's bin/, else a folder with a link)."""
    here = Path(sys.executable).parent
    python = here / "python"
    if python.exists() and os.path.samefile(python, sys.executable):
        return here
    shim = Path(tempfile.mkdtemp(prefix="asl-sweep-python-"))
    (shim / "python").symlink_to(sys.executable)
    return shim


def run_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment with `extra` set and this install's `python` first on PATH."""
    env = {**os.environ, **(extra or {})}
    env["PATH"] = os.pathsep.join(p for p in (str(interpreter_dir()), env.get("PATH", "")) if p)
    return env


def cli_flags(flags: dict[str, Any]) -> list[str]:
    """`--flag value` pairs for the flags that are set, to pass an agent's options on to another command."""
    return [part for flag, value in flags.items() if value for part in (flag, str(value))]


def param_files(sweep_id: str, run_id: str) -> tuple[Path, Path]:
    """Where W&B's agent writes a run's parameters (YAML for WANDB_SWEEP_PARAM_PATH, JSON for ${args_json_file})."""
    folder = Path(os.environ.get("WANDB_DIR", "")) / "wandb" / f"sweep-{sweep_id}"
    return folder / f"config-{run_id}.yaml", folder / f"config-{run_id}.json"


def expand_command(config: dict[str, Any], params: dict[str, Any], *, sweep_id: str, run_id: str) -> list[str]:
    """The run's command line exactly as W&B's agent builds it (`Agent._command_run`), from W&B's own
    helpers: `${envvar:NAME}` is the variable's value (NAME when unset), `${interpreter}` the word
    `python`, every args format W&B has, and unknown `${...}` tokens dropped."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    command = sweep_utils.create_sweep_command(list(command_of(config)))
    values = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    values.update(interpreter=["python"], program=[config.get("program")], env=["/usr/bin/env"],
                  args_json_file=[str(param_files(sweep_id, run_id)[1])])
    out: list[str] = []
    for token in map(str, command):
        if token.startswith("${") and token.endswith("}"):
            out += values.get(token[2:-1]) or []
        else:
            out.append(token)
    return out


def write_param_files(config: dict[str, Any], params: dict[str, Any], sweep_id: str, run_id: str) -> Path:
    """Write the run's parameter files as W&B's agent does; returns the YAML path."""
    from wandb.sdk.lib import config_util

    yaml_path, json_path = param_files(sweep_id, run_id)
    yaml_path.parent.mkdir(parents=True, exist_ok=True)
    config_util.save_config_file_from_dict(str(yaml_path), {k: {"value": v} for k, v in params.items()})
    if "${args_json_file}" in command_of(config):
        json_path.write_text(json.dumps(params))
    return yaml_path


def progress_line(ledger: Ledger, sweep_id: str, started: float) -> str:
    """`runs done / cap, running, best metric so far and its run, elapsed` from the ledger."""
    sweep = ledger.sweep(sweep_id)
    runs = ledger.runs(sweep_id)
    name, goal = metric(sweep["config"])
    done = sum(r.state.is_final for r in runs)
    failed = sum(r.state.is_broken for r in runs)
    running = sum(r.state == RunState.RUNNING for r in runs)
    cap = sweep["config"].get("run_cap", "∞")
    best = best_run(runs, name, goal)
    if best is not None:
        best_txt = f"best {name} {best_value(best, name, goal):.4f} (run {best.id} #{best.number})"
    else:
        best_txt = f"best {name} -"
    minutes, seconds = divmod(int(time.time() - started), 60)
    elapsed = f"{minutes:02d}:{seconds:02d}"  # minutes past 59 too: an agent runs for hours
    paused = ", paused" if sweep["state"] == SweepState.PAUSED else ""
    failed_txt = f", {failed} failed" if failed else ""
    return f"[{sweep_id}] {done}/{cap} runs done, {running} running{failed_txt}, {best_txt}, {elapsed} elapsed{paused}"


class AgentEvents:
    """What an agent tells as it goes, to whoever shows it. The library's own logs each note (logger
    `asl_sweep.agent`) and shows no progress line; the CLI passes its display (`console.Progress`), which
    keeps a live line of `progress_line` and prints the notes. `notes=False`: warnings only."""

    def __init__(self, *, notes: bool = True) -> None:
        self.notes = notes

    def started(self, ledger: Ledger, sweep_id: str) -> None:
        """The sweep this agent works on, read through `ledger` for as long as it runs."""

    def show(self, force: bool = False) -> None:
        """The sweep moved on (a run claimed, an epoch, a run ended): a progress display may redraw."""

    def note(self, text: str) -> None:
        """Something worth a line of its own (a run failed, the sweep is paused or done)."""
        if self.notes:
            log.info(text)

    def warn(self, text: str) -> None:
        """Something the person running the agent must see, even a quiet one (a run requeued or fenced)."""
        log.warning(text)

    def end(self) -> None:
        """The agent is done with the sweep."""


def _run_in_process(ledger: Ledger, sweep_id: str, run: Run, cache, events: AgentEvents,
                    target: tuple[str, str | None]) -> Outcome:
    """The run's outcome: its final state, `requeued` (SIGTERM) or `fenced` (reaped meanwhile)."""
    from asl_sweep.train import execute

    with controller.LedgerReporter(ledger, sweep_id, run, on_epoch=events.show) as reporter:
        execute(run.config, cache, reporter=reporter, run_id=run.id, verbose=0,
                project=target[0], entity=target[1])
    return reporter.outcome


def _run_subprocess(ledger: Ledger, sweep: dict[str, Any], run: Run, opts: AgentOptions,
                    target: tuple[str, str | None]) -> Outcome:
    """One run as W&B's agent starts it: the YAML's command in W&B's agent environment, except that the
    local sweep id goes in ASL_SWEEP_SWEEP_ID (a WANDB_SWEEP_ID unknown to W&B would block `wandb sync`).
    SIGTERM to the agent is passed on to the run. Returns the run's outcome, as `_run_in_process`."""
    param_path = write_param_files(sweep["config"], run.config, sweep["id"], run.id)
    cmd = expand_command(sweep["config"], run.config, sweep_id=sweep["id"], run_id=run.id)
    extra = {controller.LOCAL_SWEEP_ENV: sweep["id"], "WANDB_RUN_ID": run.id, "WANDB_SWEEP_PARAM_PATH": str(param_path),
             "ASL_SWEEP_LEDGER": ledger.location, controller.RUN_ATTEMPT_ENV: str(run.attempt),
             "WANDB_PROJECT": target[0]}
    if target[1]:
        extra["WANDB_ENTITY"] = target[1]
    if opts.data_dir:
        extra["ASL_SWEEP_DATA_DIR"] = str(Path(opts.data_dir).resolve())
    env = run_environment(extra)
    env.pop("WANDB_SWEEP_ID", None)
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    except OSError as exc:
        ledger.finish_run(run.id, RunState.FAILED, attempt=run.attempt,
                          error=f"cannot start {cmd[0]!r}: {exc.strerror}", summary={ERROR_LOG: " ".join(cmd)})
        return Outcome.FAILED
    err = _wait_for(proc, ledger, run)
    after = ledger.run(run.id)
    if after is None or after.attempt != run.attempt:
        return Outcome.REQUEUED if controller.PREEMPTED.is_set() else Outcome.FENCED
    if after.state == RunState.RUNNING:  # the child died without ending its run
        if controller.PREEMPTED.is_set():
            landed = ledger.requeue(run.id, run.attempt, "preempted (SIGTERM); requeued")
            return Outcome.REQUEUED if landed else Outcome.FENCED
        last = (err.strip().splitlines() or ["no output"])[-1]
        if not ledger.finish_run(run.id, RunState.FAILED, attempt=run.attempt, error=f"exit code {proc.returncode}: {last}",
                                 summary={ERROR_LOG: tail(f"$ {' '.join(cmd)}\n{err}")}):
            return Outcome.FENCED
        return Outcome.FAILED
    return Outcome.REQUEUED if after.state == RunState.PENDING else Outcome(after.state)


def _wait_for(proc: subprocess.Popen, ledger: Ledger, run: Run) -> str:
    """Wait for a run's process, reading its stderr (returned): SIGTERM to the agent is passed on to it,
    and it is killed once its run was reaped (its result could not be recorded anyway). The agent beats
    for its run too, on its own connection: the child's heartbeat starts only after its imports and data
    checks, which can outlast the timeout on a busy shared filesystem."""
    passed_on, beat_due = False, heartbeat.pacer()
    while True:
        try:
            return proc.communicate(timeout=0.5)[1]
        except subprocess.TimeoutExpired:
            if controller.PREEMPTED.is_set() and not passed_on:
                proc.send_signal(signal.SIGTERM)
                passed_on = True
            if beat_due() and not ledger.heartbeat(run.id, run.attempt) and not passed_on:
                now = ledger.run(run.id)  # not running: ended by the child itself, or reaped meanwhile
                if now is None or now.attempt != run.attempt or now.state == RunState.CRASHED:
                    proc.kill()
        except KeyboardInterrupt:  # the run got Ctrl-C too (same process group): it saves what it has, then exits
            log.warning("run %s interrupted: waiting for it to save its best-so-far model and record "
                        "(Ctrl-C again aborts the save)", run.id)
            proc.communicate()  # reading its output as it ends: a full pipe would block it
            raise


def _watch_ctrl_c(raise_while: Callable[[], bool] = lambda: True) -> tuple[threading.Event, Any]:
    """Remember that Ctrl-C was pressed, and raise KeyboardInterrupt while `raise_while()` holds (always,
    by default): a SIGINT that lands inside TensorFlow can come back as a different exception, which must
    not pass for a failed run. Returns the event and the handler it replaced (None off the main thread)."""
    pressed = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        return pressed, None

    def on_sigint(signum: int, frame: Any) -> None:
        pressed.set()
        if raise_while():
            raise KeyboardInterrupt

    return pressed, signal.signal(signal.SIGINT, on_sigint)


def preflight(sweep: dict[str, Any], opts: AgentOptions) -> None:
    """Everything that can be checked before a run is claimed: a bad data folder, a sweep config the
    engine cannot run or a bad setting would otherwise fail run after run, using up `run_cap`."""
    from asl_sweep import data, sweepfile

    sweepfile.validate(sweep["config"], source=f"sweep {sweep['id']}")
    if opts.subprocess_mode:
        sweepfile.check_program(sweep["config"], f"sweep {sweep['id']}")
    data.list_images(data.locate(opts.data_dir))
    heartbeat.interval()
    heartbeat.timeout()


def tail(text: str, lines: int = LOG_LINES) -> str:
    """The last `lines` lines of a run's output or traceback: what `asl-sweep status ID --run N` shows."""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def error_line(exc: BaseException) -> str:
    """One line for a run's error field: the message's first line."""
    text = str(exc).strip().splitlines()
    head = text[0][:300] if text else ""
    return head if isinstance(exc, UserError) else f"{type(exc).__name__}: {head}"


def local_agent(sweep_id: str, opts: AgentOptions = AgentOptions(), events: AgentEvents | None = None) -> int:
    """Run a local sweep's runs until it is done, `opts.count` runs have run, or `opts.minutes` have
    passed (no new run starts after that); waits while the sweep is paused. Tells `events` how it goes
    (by default: logs its notes unless `opts.show_progress` is off). Returns runs executed."""
    events = events or AgentEvents(notes=opts.show_progress)
    from asl_sweep import runtime
    from asl_sweep.data import DataCache

    deadline = time.time() + opts.minutes * 60 if opts.minutes else None
    with Ledger(create=False, patient=True) as ledger:
        sweep = ledger.sweep(sweep_id)
        preflight(sweep, opts)
        controller.watch_sigterm()
        target = wandb_target(sweep["config"], opts.project, opts.entity)
        if not opts.subprocess_mode:  # runs in this process: load TensorFlow once, quietly, with this agent's threads
            runtime.load_tensorflow(quiet=not os.environ.get("ASL_SWEEP_DEBUG"))
        cache = DataCache(opts.data_dir)
        # Move everything alive now (TensorFlow, Keras, wandb modules) out of the collector's view: a
        # full collection otherwise rescans them all, ~0.2-0.4 s at unpredictable points between runs.
        gc.collect()
        gc.freeze()
        events.started(ledger, sweep_id)
        agent = f"{os.uname().nodename}:{os.getpid()}"
        executed, waiting = 0, False
        policy = FailurePolicy(opts.max_consecutive_failed_runs)
        ctrl_c, previous = _watch_ctrl_c()
        try:
            while (opts.count is None or executed < opts.count) and (deadline is None or time.time() < deadline) \
                    and not controller.PREEMPTED.is_set():
                run = controller.claim_next(ledger, sweep_id, agent)
                if run is None:
                    if ledger.sweep(sweep_id)["state"] != SweepState.PAUSED:
                        break
                    if not waiting:
                        events.note(f"sweep {sweep_id} is paused: waiting (asl-sweep sweep --resume {sweep_id})")
                    waiting = True
                    time.sleep(heartbeat.interval())
                    continue
                waiting = False
                executed += 1
                events.show(force=True)
                ours = {"attempt": run.attempt}
                try:
                    if opts.subprocess_mode:
                        outcome = Outcome(_run_subprocess(ledger, sweep, run, opts, target))
                    else:
                        outcome = Outcome(_run_in_process(ledger, sweep_id, run, cache, events, target))
                except KeyboardInterrupt:
                    ledger.finish_run(run.id, RunState.STOPPED, **ours, error=INTERRUPTED)
                    raise
                except Exception as exc:  # one bad run (even out of memory) must not end the sweep; its error is recorded
                    if ctrl_c.is_set():  # Ctrl-C that surfaced as another error (e.g. from inside TensorFlow)
                        ledger.finish_run(run.id, RunState.STOPPED, **ours, error=INTERRUPTED)
                        raise KeyboardInterrupt from exc
                    ledger.finish_run(run.id, RunState.FAILED, **ours, error=error_line(exc),
                                      summary={ERROR_LOG: tail(traceback.format_exc())})
                    outcome = Outcome.FAILED
                    if not isinstance(exc, UserError) and os.environ.get("ASL_SWEEP_DEBUG"):
                        raise
                events.show(force=True)
                if not outcome.recorded:
                    events.warn(f"run {run.id} " + ("requeued: this agent got SIGTERM; the next free agent reruns it"
                                if outcome == Outcome.REQUEUED else "was ended by another agent (no heartbeat seen; "
                                "reaped as crashed) while it ran here: its result is not recorded"))
                    continue
                ended = ledger.run(run.id)
                error = ended.error if ended is not None else None
                if outcome == RunState.FAILED:
                    events.note(f"run #{run.number} ({run.id}) failed: {error or 'no error recorded'}"
                                  f"  (details: asl-sweep status {sweep_id} --run {run.number})")
                reason = policy.record(outcome == RunState.FAILED)
                if reason:
                    raise UserError(f"agent shut down after {reason}; last error (run #{run.number}): "
                                    f"{error or 'see its record'}")
            state = ledger.sweep(sweep_id)["state"]
            if executed == 0 and state in (SweepState.FINISHED, SweepState.CANCELED):
                events.note(f"sweep {sweep_id} is {state}: no run left to start (asl-sweep status {sweep_id} shows "
                            "its runs)")
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            events.end()
    return executed


def agent_environments(agents: int, gpus: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """What each of `agents` agent processes gets on top of this environment: its share of the CPU threads
    and, with `gpus`, one GPU each (round robin) in CUDA_VISIBLE_DEVICES (wandb#597)."""
    threads = str(max(1, (os.cpu_count() or 1) // agents))
    return [{"ASL_SWEEP_THREADS": threads, **({"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} if gpus else {})}
            for i in range(agents)]


def interrupted_exit(code: int | None) -> bool:
    """An agent process ended by Ctrl-C: exit code 130 (ours), or killed by SIGINT itself."""
    return code in (130, -signal.SIGINT)


def run_agents(sweep_id: str, agents: int, opts: AgentOptions = AgentOptions(),
               events: AgentEvents | None = None) -> None:
    """Run `agents` agents for a local sweep on this machine: here when one, else as processes (threads
    split between them, one GPU each with `opts.gpus`) with one progress line. SIGTERM is passed on to
    every agent, each of which requeues its run. Ctrl-C reaches the whole process group: this process
    waits for its agents and raises KeyboardInterrupt whichever comes first, its own SIGINT or their
    interrupted exits (under load either can), so it is always an interruption, never "agents failed"."""
    if agents <= 1:
        if opts.gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = opts.gpus[0]
        local_agent(sweep_id, opts, events)
        return
    events = events or AgentEvents(notes=opts.show_progress)
    cmd = [sys.executable, "-m", "asl_sweep", "agent", sweep_id, "--quiet"]
    flags = {"--count": opts.count, "--data-dir": opts.data_dir, "--minutes": opts.minutes, "--project": opts.project,
             "--entity": opts.entity, "--max-consecutive-failed-runs": opts.max_consecutive_failed_runs}
    cmd += cli_flags(flags) + (["--subprocess"] if opts.subprocess_mode else [])
    procs = [subprocess.Popen(cmd, env={**os.environ, **extra}) for extra in agent_environments(agents, opts.gpus)]
    controller.watch_sigterm()
    ctrl_c, previous = _watch_ctrl_c(raise_while=lambda: any(p.returncode is None for p in procs))
    try:
        with Ledger(create=False) as ledger:
            events.started(ledger, sweep_id)
            passed_on = False
            try:
                while any(p.poll() is None for p in procs):
                    if controller.PREEMPTED.is_set() and not passed_on:
                        for p in procs:
                            p.send_signal(signal.SIGTERM)
                        passed_on = True
                    events.show()
                    time.sleep(0.5)
            except KeyboardInterrupt:
                for p in procs:
                    p.wait()
            finally:
                events.show(force=True)
                events.end()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if ctrl_c.is_set() or any(interrupted_exit(p.returncode) for p in procs):
        raise KeyboardInterrupt
    if any(p.returncode for p in procs):
        raise UserError(f"{sum(1 for p in procs if p.returncode)} of {agents} agents exited with an error")


def wandb_agent(sweep_id: str, opts: AgentOptions) -> int:
    """Hand a W&B sweep to W&B's own agent (it runs the YAML's `command`), with this install's `python`
    first on PATH so that `${interpreter}` runs it even when the venv is not activated."""
    flags = {"--count": opts.count, "--project": opts.project, "--entity": opts.entity,
             "--max-consecutive-failed-runs": opts.max_consecutive_failed_runs}
    cmd = [sys.executable, "-m", "wandb", "agent"]
    cmd += cli_flags(flags) + [sweep_id]
    return subprocess.call(cmd, env=run_environment())
