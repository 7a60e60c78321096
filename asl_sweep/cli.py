"""`asl-sweep` command line: one subcommand per job, errors as one line and a non-zero exit."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Callable, NoReturn, Sequence

from asl_sweep.console import OneLineParser, guarded, write

if TYPE_CHECKING:
    from asl_sweep.agent import AgentOptions
    from asl_sweep.display import Progress


# Commands that always need TensorFlow import it quietly up front; agents do it in `local_agent`,
# so a process that only starts agent processes or hands off to `wandb agent` never loads it.
TENSORFLOW_COMMANDS = frozenset({"data", "train", "export", "predict", "evaluate"})


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
    from asl_sweep import console
    from asl_sweep.train import run_from_args

    return console.report_run(run_from_args(args, rest))


def agent_options(args: argparse.Namespace) -> AgentOptions:
    from asl_sweep.agent import AgentOptions

    return AgentOptions(count=args.count, subprocess_mode=args.subprocess, data_dir=args.data_dir,
                        minutes=args.minutes, project=args.project, entity=args.entity,
                        max_consecutive_failed_runs=args.max_consecutive_failed_runs,
                        show_progress=not getattr(args, "quiet", False), gpus=args.gpus)


def progress(args: argparse.Namespace) -> Progress:
    """The agent's display on this terminal: its progress line and notes, unless --quiet."""
    from asl_sweep.display import Progress

    return Progress(write, enabled=not getattr(args, "quiet", False))


def agent_count(args: argparse.Namespace) -> int:
    """--agents, else one per GPU listed in --gpus, else one."""
    return args.agents or len(args.gpus) or 1


def control_sweep(sweep_id: str, action: str, args: argparse.Namespace) -> int:
    """`--pause/--resume/--stop/--cancel`: on the local ledger, or handed to `wandb sweep` for a W&B sweep."""
    from asl_sweep import runtime
    from asl_sweep.agent import cli_flags
    from asl_sweep.ledger import Ledger, is_local_sweep, unknown_sweep

    if is_local_sweep(sweep_id):
        with Ledger(create=False) as ledger:
            state = ledger.control(sweep_id, action)
        print(f"sweep {sweep_id}: {state}")
        return 0
    if runtime.wandb_mode() != "online":
        raise unknown_sweep(sweep_id)
    runtime.require_online(f"sweep --{action} {sweep_id}")
    flags = cli_flags({"--project": args.project, "--entity": args.entity})
    return subprocess.call([sys.executable, "-m", "wandb", "sweep", f"--{action}", *flags, sweep_id])


def cmd_sweep(args: argparse.Namespace) -> int:
    from asl_sweep import runtime, sweepfile
    from asl_sweep.ledger import CONTROL, Ledger

    action = next((a for a in CONTROL if getattr(args, a)), None)
    if action:
        return control_sweep(args.file, action, args)
    config, own = sweepfile.with_own_command(sweepfile.load(args.file))
    if own:
        print(f"note: {args.file} has no 'command' or 'program': runs use asl-sweep's own entrypoint "
              f"({' '.join(config['command'])})", file=sys.stderr)
    sweepfile.check_program(config, args.file)
    config, moved = sweepfile.falsy_first(config)
    if moved:
        print(f"note: {', '.join(moved)}: falsy value moved first in the list, so W&B's engine tells it from the "
              "first value (same search space)", file=sys.stderr)
    if config.get("metric") and "goal" not in config["metric"]:
        print(f"note: metric.goal is not set, so W&B (and this sweep) will minimize {config['metric']['name']}",
              file=sys.stderr)
    name = args.name or config.get("name") or os.path.splitext(os.path.basename(args.file))[0]
    if not (args.local or sweepfile.uses_local_controller(config)) and runtime.wandb_mode() == "online":
        from asl_sweep.sync import create_wandb_sweep

        runtime.require_online("a W&B sweep")
        path = create_wandb_sweep(config, *sweepfile.wandb_target(config, args.project, args.entity))
        print(f"created W&B sweep {path}\nnext: make agent SWEEP={path}")
        return 0
    stored = {**config, **{k: v for k, v in (("project", args.project), ("entity", args.entity)) if v}}
    with Ledger() as ledger:
        sweep_id = ledger.create_sweep(stored, name)
    print(f"created local sweep {sweep_id} ({config['method']}, {name}) in {ledger.display}")
    if not args.run:
        print(f"next: make agent SWEEP={sweep_id}   (or: asl-sweep agent {sweep_id})")
        return 0
    runtime.setup(debug=debug_of(args))
    from asl_sweep import agent, status

    agent.run_agents(sweep_id, agent_count(args), agent_options(args), progress(args))
    print(status.best_summary(sweep_id))
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    from asl_sweep import agent, runtime
    from asl_sweep.ledger import is_local_sweep, unknown_sweep

    runtime.setup(debug=debug_of(args))
    if is_local_sweep(args.sweep_id):
        agent.run_agents(args.sweep_id, agent_count(args), agent_options(args), progress(args))
        if not args.quiet:
            from asl_sweep import status

            print(status.best_summary(args.sweep_id))
        return 0
    if runtime.wandb_mode() != "online":
        raise unknown_sweep(args.sweep_id)
    runtime.require_online(f"agent {args.sweep_id}")
    return agent.wandb_agent(args.sweep_id, agent_options(args))


def cmd_ledger(args: argparse.Namespace) -> int:
    from asl_sweep.ledger import copy_sweep
    from asl_sweep.storage import display

    runs = copy_sweep(args.sweep_id, args.source, args.destination)
    print(f"copied sweep {args.sweep_id} ({runs} runs, with their epochs, records and models) from "
          f"{display(args.source)} to {display(args.destination)}; its agents now use ASL_SWEEP_LEDGER={display(args.destination)}")
    return 0


def cmd_sweeps(args: argparse.Namespace) -> int:
    from asl_sweep import status

    print(status.sweeps_table())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from asl_sweep import status

    print(status.run_detail(args.sweep_id, args.run) if args.run else status.status_table(args.sweep_id))
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from asl_sweep import sync

    print(sync.sync_sweep(args.sweep_id, project=args.project, entity=args.entity))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from asl_sweep.report import build_report

    t0 = time.perf_counter()
    data, page = build_report(args.sweep_id, args.out)
    pngs = len(list(page.parent.glob("*.png")))
    print(f"report of {len(data.runs)} runs: {page} ({page.stat().st_size / 1e6:.1f} MB, self-contained) and "
          f"{pngs} PNG figures in {page.parent} ({time.perf_counter() - t0:.1f}s)")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from asl_sweep import dashboard
    from asl_sweep.ledger import default_path

    board = dashboard.prepare(default_path(), args.host, args.port, args.sweep_id)
    print(f"dashboard of ledger {board.ledger}, updating every {dashboard.POLL_S:g}s (Ctrl-C stops it):\n"
          f"  read-only:    {board.url}\n  with control: {board.url}?token={board.token}", flush=True)
    board.serve()
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from asl_sweep.export import FILES, export_best

    t0 = time.perf_counter()
    meta = export_best(args.sweep_id, args.out, force=args.force, retrain=args.retrain, data_dir=args.data_dir,
                       link=args.link)
    m = meta["metric"]
    print(f"exported run {meta['run_id']} of sweep {meta['sweep_id']} ({m['name']} {m['best']:.4f}"
          f"{', re-trained on train+validation' if meta['retrain'] else ''}) to {args.out}: {', '.join(FILES)} "
          f"({time.perf_counter() - t0:.1f}s)")
    if meta.get("linked"):
        print(f"linked its model artifact into W&B's registry: {meta['linked']}")
    for r in meta["passed_over"]:
        print(f"note: run #{r['number']} {r['id']} ranks higher ({m['name']} {r['value']:.4f}) but {r['state']} before "
              f"saving a model ({r['reason'] or 'no reason recorded'}), so it cannot be exported", file=sys.stderr)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from asl_sweep.predict import predict_images

    width = max(len(p) for p in args.images)
    for path, digit, confidence in predict_images(args.model_dir, args.images):
        print(f"{path:<{width}}  digit {digit}  confidence {confidence:.3f}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from asl_sweep.predict import evaluate_to_file

    result, out = evaluate_to_file(args.model_dir, args.data_dir, args.out, robustness=args.robustness)
    print(f"{result['images']} images in {result['data_dir']}: accuracy {result['accuracy']:.4f}")
    print("per class: " + "  ".join(f"{c}:{'-' if v is None else f'{v:.2f}'}"
                                    for c, v in result["per_class_accuracy"].items()))
    print("confusion matrix (rows true 0-9, columns predicted 0-9):")
    for i, row in enumerate(result["confusion_matrix"]):
        print(f"  {i} " + " ".join(f"{v:4d}" for v in row))
    if args.robustness:
        from asl_sweep.robustness import SUITE

        print(f"robustness: mean {result['val_robust_accuracy']:.4f}, worst {result['val_robust_worst']:.4f} "
              f"({result['val_robust_worst_change']}); backgrounds: mean {result['val_background_accuracy']:.4f}, "
              f"worst {result['val_background_worst']:.4f}")
        for name, acc in result["robustness"].items():
            print(f"  {name:18} {acc:.4f}  {SUITE[name][0]}")
    print(f"written: {out}")
    return 0


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def port_number(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be from 0 to 65535, got {value}")
    return value


def gpu_list(text: str) -> tuple[str, ...]:
    gpus = tuple(g.strip() for g in text.split(","))
    if not all(gpus):
        raise argparse.ArgumentTypeError(f"expected GPU ids separated by commas (0,1,2), got {text!r}")
    return gpus


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def add_target_arguments(p: argparse.ArgumentParser) -> None:
    """W&B's --project/--entity, with `wandb sweep`'s precedence over WANDB_PROJECT/WANDB_ENTITY and the YAML."""
    p.add_argument("--project", "-p", help="W&B project of the runs (default: WANDB_PROJECT, the YAML's, asl-sweep)")
    p.add_argument("--entity", "-e", help="W&B entity of the runs (default: WANDB_ENTITY, the YAML's, yours)")


def add_ledger_argument(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--ledger", help="the local sweeps' ledger: a SQLite file or postgresql://user@host:port/db "
                                    "(default: $ASL_SWEEP_LEDGER, else asl-sweep.db here)")
    return p


def add_agent_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--count", type=positive_int, help="stop after this many runs")
    p.add_argument("--agents", type=positive_int, help="agent processes on this machine (default: one per GPU in "
                                                       "--gpus, else 1)")
    p.add_argument("--gpus", type=gpu_list, default=(), help="GPU ids, e.g. 0,1: one agent per GPU, each with "
                                                             "CUDA_VISIBLE_DEVICES set to its own")
    p.add_argument("--subprocess", action="store_true", help="one process per run via the YAML's command")
    p.add_argument("--minutes", type=positive_float, help="start no new run after this many minutes")
    p.add_argument("--max-consecutive-failed-runs", type=positive_int,
                   help="shut the agent down once this many runs failed back to back (as wandb agent)")
    p.add_argument("--data-dir")
    add_target_arguments(p)
    add_ledger_argument(p)


class Parser(OneLineParser):
    """The CLI's parser (its subcommands' too): a usage error quotes what was typed, a ledger URL given where
    no option takes it included, so every URL in the message is masked."""

    def error(self, message: str) -> NoReturn:
        from asl_sweep.storage import masked_urls

        super().error(masked_urls(message))


def build_parser() -> argparse.ArgumentParser:
    from asl_sweep.train import add_train_arguments

    parser = Parser(prog="asl-sweep", description=__doc__, allow_abbrev=False)
    parser.add_argument("--debug", action="store_true", default=False, help="full tracebacks and library logs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="locate or download the dataset and warm the decoded cache")
    p.add_argument("--data-dir")
    p.add_argument("--image-size", type=int, default=32)

    p = sub.add_parser("train", help="train one run (extra --key=value set config values)", allow_abbrev=False)
    add_train_arguments(p)

    p = sub.add_parser("sweep", help="create a sweep from a W&B sweep YAML (on W&B when online), or control one")
    p.add_argument("file", help="sweep YAML; with --pause/--resume/--stop/--cancel, a sweep id")
    control = p.add_mutually_exclusive_group()
    control.add_argument("--pause", action="store_true", help="agents start no new run until --resume")
    control.add_argument("--resume", action="store_true", help="resume a paused sweep")
    control.add_argument("--stop", action="store_true", help="no new runs; running runs finish")
    control.add_argument("--cancel", action="store_true", help="no new runs; running runs stop at their next epoch")
    p.add_argument("--local", action="store_true", help="use the embedded local controller even when online")
    p.add_argument("--name")
    p.add_argument("--run", action="store_true", help="local: start agents right away and wait for the end")
    add_agent_arguments(p)

    p = sub.add_parser("agent", help="run a sweep's runs (local id: our agent; W&B id: wandb agent)")
    p.add_argument("sweep_id")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    add_agent_arguments(p)

    def sweep_command(name: str, help: str) -> argparse.ArgumentParser:
        """A subcommand about one sweep (local id, or a W&B id where W&B is reachable)."""
        command = sub.add_parser(name, help=help)
        command.add_argument("sweep_id")
        return add_ledger_argument(command)

    add_ledger_argument(sub.add_parser("sweeps", help="list local sweeps"))
    sweep_command("status", "runs of a local sweep and the best so far").add_argument(
        "--run", type=positive_int, metavar="N", help="one run (its number): the whole error and its output's tail")
    add_target_arguments(sweep_command("sync", "upload a local sweep's runs to W&B and continue it there as a W&B sweep"))
    sweep_command("report", "HTML report (parallel coordinates, importance, curves) of a sweep").add_argument(
        "--out", help="output folder (default: reports/<sweep_id>)")
    p = sweep_command("export", "export a sweep's best run: model, config.yaml, metrics.json, model card")
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true", help="overwrite a non-empty output folder")
    p.add_argument("--retrain", action="store_true", help="re-train the winner on train+validation")
    p.add_argument("--link", metavar="NAME", help="W&B sweep: link the winner's model artifact into W&B's model "
                                                  "registry as collection NAME (or REGISTRY/COLLECTION)")
    p.add_argument("--data-dir")

    p = add_ledger_argument(sub.add_parser("dashboard", help="a local web app watching sweeps live (control with a token)"))
    p.add_argument("sweep_id", nargs="?", help="open this sweep's page (default: the list of sweeps)")
    p.add_argument("--port", type=port_number, default=8765, help="port to serve on (default 8765; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")

    p = sub.add_parser("ledger", help="move sweeps between ledgers (SQLite file <-> PostgreSQL)")
    ledger_sub = p.add_subparsers(dest="ledger_command", required=True)
    p = ledger_sub.add_parser("copy", help="copy a sweep with its runs, epochs, records and models to another ledger")
    p.add_argument("sweep_id")
    p.add_argument("source", help="ledger it is in: a SQLite file or a postgresql:// URL")
    p.add_argument("destination", help="ledger to copy it to (created when it is a new SQLite file)")

    p = sub.add_parser("predict", help="digit and confidence for image files, with an exported model")
    p.add_argument("model_dir")
    p.add_argument("images", nargs="+")

    p = sub.add_parser("evaluate", help="score an exported model on a folder in the dataset's layout")
    p.add_argument("model_dir")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", help="JSON file for the results (default: <model_dir>/evaluation.json)")
    p.add_argument("--robustness", action="store_true", help="also score the robustness suite (photo changes)")
    return parser


def mask_argv(locations: list[str | None]) -> None:
    """wandb records this process's `sys.argv` with every run it starts here (the `.wandb` file's metadata,
    uploaded by `wandb sync`): each ledger location on it is replaced by its display form, password masked."""
    from asl_sweep.storage import display

    for location in filter(None, locations):
        sys.argv[:] = [arg.replace(location, display(location)) for arg in sys.argv]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    debug = bool(getattr(args, "debug", False))
    if debug:
        os.environ["ASL_SWEEP_DEBUG"] = "1"
    if rest and args.command != "train":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if getattr(args, "ledger", None):  # through the environment, so agent processes and runs get it too
        os.environ["ASL_SWEEP_LEDGER"] = args.ledger
    mask_argv([getattr(args, name, None) for name in ("ledger", "source", "destination")])
    from asl_sweep import console, runtime

    console.install(debug=debug)
    handlers: dict[str, Callable[[], int]] = {
        "data": lambda: cmd_data(args),
        "train": lambda: cmd_train(args, rest),
        "sweep": lambda: cmd_sweep(args),
        "agent": lambda: cmd_agent(args),
        "sweeps": lambda: cmd_sweeps(args),
        "ledger": lambda: cmd_ledger(args),
        "status": lambda: cmd_status(args),
        "sync": lambda: cmd_sync(args),
        "report": lambda: cmd_report(args),
        "export": lambda: cmd_export(args),
        "dashboard": lambda: cmd_dashboard(args),
        "predict": lambda: cmd_predict(args),
        "evaluate": lambda: cmd_evaluate(args),
    }

    def command() -> int:
        runtime.setup(debug=debug, tensorflow=args.command in TENSORFLOW_COMMANDS)  # start-up errors are one line too
        return handlers[args.command]()

    return guarded(command, debug=debug)


if __name__ == "__main__":
    sys.exit(main())
