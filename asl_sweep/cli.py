"""`asl-sweep` command line: one subcommand per job, errors as one line and a non-zero exit."""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from importlib import import_module
from typing import Callable, Sequence

from asl_sweep.errors import UserError


# Commands that always need TensorFlow import it quietly up front; agents do it in `local_agent`,
# so a process that only starts agent processes or hands off to `wandb agent` never loads it.
TENSORFLOW_COMMANDS = frozenset({"data", "train", "export", "predict", "evaluate"})


def guarded(fn: Callable[[], int | None], *, debug: bool = False) -> int:
    """Run a command: UserError -> one line and exit 2, Ctrl-C -> exit 130, real bugs -> traceback."""
    try:
        return int(fn() or 0)
    except UserError as exc:
        if debug:
            traceback.print_exc()
        print(f"asl-sweep: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nasl-sweep: interrupted", file=sys.stderr)
        return 130


def debug_of(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "debug", False))


def cmd_data(args: argparse.Namespace) -> int:
    from asl_sweep import data

    t0 = time.perf_counter()
    root = data.locate(args.data_dir)
    t1 = time.perf_counter()
    ds = data.load(root, args.image_size)
    t2 = time.perf_counter()
    groups = data.signer_groups(ds.numbers, ds.y)
    counts = " ".join(f"{d}:{(ds.y == d).sum()}" for d in range(10))
    print(f"dataset: {root}")
    print(f"{len(ds.y)} images ({counts}), {len(set(groups.tolist()))} signers")
    print(f"located in {t1 - t0:.2f}s, loaded at {args.image_size}x{args.image_size} in {t2 - t1:.2f}s "
          f"(cache: {data.cache_dir() / 'arrays'})")
    return 0


def cmd_train(args: argparse.Namespace, rest: list[str]) -> int:
    from asl_sweep.train import run_from_args

    return run_from_args(args, rest)


def cmd_sweep(args: argparse.Namespace) -> int:
    from asl_sweep import runtime, sweepfile

    config = sweepfile.load(args.file)
    name = args.name or config.get("name") or os.path.splitext(os.path.basename(args.file))[0]
    if not args.local and runtime.wandb_mode() == "online":
        import wandb

        sweep_id = wandb.sweep(config, project=os.environ.get("WANDB_PROJECT", "asl-sweep"))
        print(f"created W&B sweep {sweep_id}\nnext: make agent SWEEP={sweep_id}")
        return 0
    from asl_sweep.ledger import Ledger

    ledger = Ledger()
    sweep_id = ledger.create_sweep(config, name)
    ledger.close()
    print(f"created local sweep {sweep_id} ({config['method']}, {name}) in {ledger.path}")
    if not args.run:
        print(f"next: make agent SWEEP={sweep_id}   (or: asl-sweep agent {sweep_id})")
        return 0
    runtime.setup(debug=debug_of(args))
    from asl_sweep import agent, status

    agent.run_agents(sweep_id, args.agents, count=args.count, subprocess_mode=args.subprocess,
                     data_dir=args.data_dir, minutes=args.minutes)
    print(status.best_summary(sweep_id))
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    from asl_sweep import agent, runtime
    from asl_sweep.ledger import Ledger, default_path

    runtime.setup(debug=debug_of(args))
    if default_path().is_file():
        ledger = Ledger()
        local = ledger.find_sweep(args.sweep_id) is not None
        ledger.close()
    else:
        local = False
    if local:
        if args.agents > 1:
            agent.run_agents(args.sweep_id, args.agents, count=args.count, subprocess_mode=args.subprocess,
                             data_dir=args.data_dir, minutes=args.minutes)
        else:
            deadline = time.time() + args.minutes * 60 if args.minutes else None
            agent.local_agent(args.sweep_id, count=args.count, subprocess_mode=args.subprocess,
                              data_dir=args.data_dir, show_progress=not args.quiet, deadline=deadline)
        if not args.quiet:
            from asl_sweep import status

            print(status.best_summary(args.sweep_id))
        return 0
    if runtime.wandb_mode() == "online":
        return agent.wandb_agent(args.sweep_id, args.count)
    raise UserError(f"unknown sweep id '{args.sweep_id}': not a local sweep in {default_path()}, "
                    "and W&B is offline (no API key) so it cannot be a W&B sweep")


def cmd_sweeps(args: argparse.Namespace) -> int:
    from asl_sweep import status

    print(status.sweeps_table())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from asl_sweep import status

    print(status.status_table(args.sweep_id))
    return 0


def add_agent_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--count", type=int, help="stop after this many runs")
    p.add_argument("--agents", type=int, default=1, help="agent processes on this machine")
    p.add_argument("--subprocess", action="store_true", help="one process per run via the YAML's command")
    p.add_argument("--minutes", type=float, help="start no new run after this many minutes")
    p.add_argument("--data-dir")


def build_parser() -> argparse.ArgumentParser:
    from asl_sweep.train import add_train_arguments

    parser = argparse.ArgumentParser(prog="asl-sweep", description=__doc__, allow_abbrev=False)
    parser.add_argument("--debug", action="store_true", default=False, help="full tracebacks and library logs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="locate or download the dataset and warm the decoded cache")
    p.add_argument("--data-dir")
    p.add_argument("--image-size", type=int, default=32)

    p = sub.add_parser("train", help="train one run (extra --key=value set config values)", allow_abbrev=False)
    add_train_arguments(p)

    p = sub.add_parser("sweep", help="create a sweep from a W&B sweep YAML (on W&B when online)")
    p.add_argument("file")
    p.add_argument("--local", action="store_true", help="use the embedded local controller even when online")
    p.add_argument("--name")
    p.add_argument("--run", action="store_true", help="local: start agents right away and wait for the end")
    add_agent_arguments(p)

    p = sub.add_parser("agent", help="run a sweep's runs (local id: our agent; W&B id: wandb agent)")
    p.add_argument("sweep_id")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    add_agent_arguments(p)

    sub.add_parser("sweeps", help="list local sweeps")
    p = sub.add_parser("status", help="runs of a local sweep and the best so far")
    p.add_argument("sweep_id")

    p = sub.add_parser("report", help="HTML report (parallel coordinates, importance, curves) of a sweep")
    p.add_argument("sweep_id")
    p.add_argument("--out", help="output folder (default: reports/<sweep_id>)")

    p = sub.add_parser("export", help="export a sweep's best run: model, config.yaml, metrics.json, model card")
    p.add_argument("sweep_id")
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true", help="overwrite a non-empty output folder")
    p.add_argument("--retrain", action="store_true", help="re-train the winner on train+validation")
    p.add_argument("--data-dir")

    p = sub.add_parser("predict", help="digit and confidence for image files, with an exported model")
    p.add_argument("model_dir")
    p.add_argument("images", nargs="+")

    p = sub.add_parser("evaluate", help="score an exported model on a folder in the dataset's layout")
    p.add_argument("model_dir")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", help="JSON file for the results (default: <model_dir>/evaluation.json)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    debug = bool(getattr(args, "debug", False))
    if debug:
        os.environ["ASL_SWEEP_DEBUG"] = "1"
    if rest and args.command != "train":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    from asl_sweep import runtime

    runtime.setup(debug=debug, tensorflow=args.command in TENSORFLOW_COMMANDS)
    handlers: dict[str, Callable[[], int]] = {
        "data": lambda: cmd_data(args),
        "train": lambda: cmd_train(args, rest),
        "sweep": lambda: cmd_sweep(args),
        "agent": lambda: cmd_agent(args),
        "sweeps": lambda: cmd_sweeps(args),
        "status": lambda: cmd_status(args),
        "report": lambda: import_module("asl_sweep.report").run(args),
        "export": lambda: import_module("asl_sweep.export").run(args),
        "predict": lambda: import_module("asl_sweep.predict").predict_cmd(args),
        "evaluate": lambda: import_module("asl_sweep.predict").evaluate_cmd(args),
    }
    return guarded(handlers[args.command], debug=debug)


if __name__ == "__main__":
    sys.exit(main())
