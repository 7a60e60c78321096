"""`make bench-search`: does our sweep find good models faster than what a user would pick instead?

On `sweeps/wide.yaml` (the wide search a new user writes), with the same data split (the YAML's
`seed`, signer-grouped) and equal wall-clock budgets, each method for --seeds repetitions:
  bayes   our local sweep, bayes + hyperband as the YAML says (train.execute, in-process agent)
  random  our local sweep, random + hyperband
  optuna  Optuna TPE + HyperbandPruner (the YAML's metric, min_iter/eta/epochs), training with train.execute
  kt      Keras Tuner Hyperband (the YAML's metric as objective, max_epochs = the YAML's epochs, factor = eta) over the same space, the
          same model builder (model.compiled_model) and the same preprocessed inputs; Keras Tuner runs
          its own fit loop (it resumes trials from checkpoints), so it skips our per-epoch logging
Two methods run at a time, one CPU core each (ASL_SWEEP_THREADS=1), so 4 methods x 3 seeds x 10
minutes take 60 minutes, plus the winners' re-training. At the budget every method's run in progress
is stopped at its epoch boundary, and only runs that ended within the budget count. Per method: median and range over seeds of the best
val_accuracy at each checkpoint, time to the first finished run >= 0.95 and >= 0.99, runs completed;
the method's winner (over its seeds, the run the YAML's metric ranks best) re-trained on 3 other signer folds. Written to
bench-results/search-<sweep>-<time>.json with a PNG of best-so-far against time beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (bench/bench.py: the Optuna runner and the YAML-to-tool parameter mapping)

REPO = Path(__file__).resolve().parents[1]
WIDE = REPO / "sweeps" / "wide.yaml"
METHODS = ("bayes", "random", "optuna", "kt")
# (seconds since start when the run ended, its best val_accuracy, finished (not stopped early), its config,
#  its best value of the YAML's metric: what the method itself ranks runs by)
Event = tuple[float, float, bool, dict, float]


def local_sweep_events(config: dict[str, Any], method: str, minutes: float, ledger: Path) -> list[Event]:
    """Our embedded controller with `method`, as `asl-sweep agent` runs it, for `minutes`."""
    from asl_sweep import agent
    from asl_sweep.ledger import Ledger

    for suffix in ("", "-wal", "-shm"):
        Path(f"{ledger}{suffix}").unlink(missing_ok=True)
    config = {**config, "method": method}
    config.pop("run_cap", None)
    with Ledger(ledger) as db:
        sid = db.create_sweep(config, f"search-{method}")
    os.environ["ASL_SWEEP_LEDGER"] = str(ledger)
    start = time.time()

    def stop_running() -> None:  # the budget is over: what runs now cannot count, so it stops
        with Ledger(ledger) as db:
            db.request_stop([r.id for r in db.runs(sid) if r.state == "running"])

    timer = threading.Timer(minutes * 60, stop_running)
    timer.start()
    agent.local_agent(sid, agent.AgentOptions(minutes=minutes, show_progress=False))
    timer.cancel()
    with Ledger(ledger) as db:
        runs = db.runs(sid)
    return [(r.ended_at - start, max(h["val_accuracy"] for h in r.history), r.state == "finished", r.config,
             bench.best_of(r.history, config["metric"])) for r in runs if r.ended_at and r.history]


def kt_suggest(hp, name: str, spec: dict[str, Any]) -> Any:
    """The sweep YAML's parameter in Keras Tuner's terms."""
    return bench.suggest(name, spec, choice=hp.Choice, integer=hp.Int,
                         floating=lambda n, lo, hi, log: hp.Float(n, lo, hi, sampling="log" if log else "linear"))


class OutOfTime(BaseException):
    """Ends Keras Tuner's search at the budget (it retries trials that raise an Exception)."""


def keras_tuner_events(config: dict[str, Any], seed: int, minutes: float, folder: Path) -> list[Event]:
    import keras
    import keras_tuner as kt
    import numpy as np

    from asl_sweep import model as model_lib
    from asl_sweep.config import from_mapping
    from asl_sweep.data import DataCache

    params = config["parameters"]
    max_epochs = params["epochs"]["value"]
    base = from_mapping({k: v["value"] for k, v in params.items() if "value" in v})
    cache = DataCache()
    dataset = cache.get(base)
    tr, va = cache.split(base, dataset)
    x = cache.inputs(base, dataset)
    x_tr, t_tr = model_lib.targets(base, x[tr], dataset.y[tr])  # `hand_aware`, when used, is fixed in the YAML
    t_va = np.eye(model_lib.outputs(base), dtype="float32")[dataset.y[va]]
    start = time.time()
    deadline = start + minutes * 60
    events: list[Event] = []
    trial_config: dict[str, Any] = {}

    def build(hp):
        values = {k: kt_suggest(hp, k, spec) for k, spec in params.items()}
        trial_config.clear()
        trial_config.update(values)
        return model_lib.compiled_model(from_mapping(values, source="keras tuner"), len(tr))

    class Tuner(kt.Hyperband):
        def on_trial_begin(self, trial):
            if time.time() > deadline:
                raise OutOfTime
            super().on_trial_begin(trial)

        def _configure_tensorboard_dir(self, callbacks, trial, execution=0):
            """No TensorBoard callback here; Keras Tuner would import tensorboard (not installed) to patch one."""

    class Record(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.history = []

        def on_epoch_end(self, epoch, logs=None):
            self.history.append({k: float(v) for k, v in (logs or {}).items()})
            if time.time() > deadline:
                self.model.stop_training = True

        def on_train_end(self, logs=None):
            if self.history:
                events.append((time.time() - start, max(h["val_accuracy"] for h in self.history),
                               len(self.history) >= max_epochs, dict(trial_config),
                               bench.best_of(self.history, config["metric"])))

    metric = config["metric"]
    objective = kt.Objective(metric["name"], "max" if metric.get("goal") == "maximize" else "min")
    tuner = Tuner(build, objective=objective, max_epochs=max_epochs,
                  factor=config["early_terminate"]["eta"], hyperband_iterations=1000, seed=seed,
                  directory=str(folder), project_name=f"kt-{seed}", overwrite=True)
    try:
        tuner.search(x_tr, t_tr, validation_data=(x[va], t_va), batch_size=base.batch_size,
                     callbacks=[Record()], verbose=0)
    except OutOfTime:
        pass
    return events


def worker(method: str, seed: int, minutes: float, out: Path, sweep: Path) -> None:
    """One method, one seed, in this process (the parent gives it one core)."""
    from asl_sweep import runtime

    runtime.setup(tensorflow=True)
    config = yaml.safe_load(sweep.read_text())
    if method in ("bayes", "random"):
        events = local_sweep_events(config, method, minutes, out.with_suffix(".db"))
    elif method == "optuna":
        events = bench.optuna_events(config, seed, minutes)
    else:
        events = keras_tuner_events(config, seed, minutes, out.parent / f"{out.stem}-kt")
    out.write_text(json.dumps({"method": method, "seed": seed, "events": events}))


def in_budget(events: list[Event], budget_s: float) -> list[Event]:
    return [e for e in events if e[0] <= budget_s]


def best_so_far(events: list[Event], t: float) -> float | None:
    return max((e[1] for e in in_budget(events, t)), default=None)


def first_reaching(events: list[Event], threshold: float, budget_s: float) -> float | None:
    return min((e[0] for e in in_budget(events, budget_s) if e[2] and e[1] >= threshold), default=None)


def summarize(results: list[dict[str, Any]], minutes: float) -> dict[str, Any]:
    """Per method: best at each checkpoint (median, min, max over seeds), times to 0.95/0.99, runs."""
    checkpoints = sorted({m for m in (5, 10) if m <= minutes} | {minutes})
    out: dict[str, Any] = {}
    for method in METHODS:
        mine = [r for r in results if r["method"] == method]
        if not mine:
            continue
        row: dict[str, Any] = {"seeds": len(mine)}
        for m in checkpoints:
            values = [v for r in mine if (v := best_so_far(r["events"], m * 60)) is not None]
            row[f"best_at_{m:g}min"] = {"median": statistics.median(values) if values else None,
                                        "min": min(values, default=None), "max": max(values, default=None)}
        for threshold in (0.95, 0.99):
            times = [first_reaching(r["events"], threshold, minutes * 60) for r in mine]
            reached = [t for t in times if t is not None]
            row[f"time_to_{threshold:g}_s"] = {"median": statistics.median(reached) if len(reached) * 2 > len(mine) else None,
                                               "reached": f"{len(reached)}/{len(mine)}"}
        row["runs_completed_median"] = statistics.median(len(in_budget(r["events"], minutes * 60)) for r in mine)
        out[method] = row
    return out


def retrain_winners(results: list[dict[str, Any]], folds: int, budget_s: float, sweep: dict[str, Any]) -> dict[str, Any]:
    """Each method's winner within the budget over all its seeds (the run it ranks best by the YAML's metric,
    as its own report would pick it), its configuration re-trained for the YAML's full epochs on `folds`
    other signer folds (signers it was not chosen on)."""
    from asl_sweep.data import DataCache
    from asl_sweep.sweepfile import metric
    from asl_sweep.train import execute

    cache, out = DataCache(), {}
    for method in METHODS:
        events = [e for r in results if r["method"] == method for e in in_budget(r["events"], budget_s)]
        if not events:
            continue
        sign = 1 if metric(sweep)[1] == "maximize" else -1
        _, chosen_at, _, config, _ = max(events, key=lambda e: sign * e[4])
        epochs = sweep["parameters"]["epochs"]["value"]
        scores = [execute({**config, "epochs": epochs, "seed": fold}, cache, verbose=0)["summary"]["val_accuracy"]
                  for fold in range(1, folds + 1)]
        out[method] = {"config": config, "chosen_at": chosen_at, "other_folds": scores,
                       "other_folds_mean": statistics.mean(scores)}
    return out


def plot(results: list[dict[str, Any]], minutes: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = np.linspace(0, minutes * 60, 200)
    fig, ax = plt.subplots(figsize=(9, 5))
    for method, color in zip(METHODS, ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")):
        # no run ended yet counts as 0 (off the chart), so each curve and their median only go up
        curves = [[best_so_far(r["events"], t) or 0.0 for t in grid] for r in results if r["method"] == method]
        if not curves:
            continue
        c = np.array(curves, dtype=float)
        ax.plot(grid / 60, np.median(c, axis=0), color=color, label=f"{method} (median of {len(curves)})")
        ax.fill_between(grid / 60, c.min(axis=0), c.max(axis=0), color=color, alpha=0.15)
    ax.set(xlabel="minutes", ylabel="best val_accuracy so far", ylim=(0.5, 1.0),
           title=f"{title}: best-so-far against time (line: median over seeds, band: min-max)")
    ax.axhline(0.95, color="grey", lw=0.6, ls=":")
    ax.axhline(0.99, color="grey", lw=0.6, ls=":")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def comparable_sweep(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The sweep file, checked before any method starts: every method needs its metric, hyperband and a
    fixed epoch count."""
    from asl_sweep.errors import UserError
    from asl_sweep.sweepfile import load

    try:
        sweep = load(path)
    except UserError as exc:
        parser.error(str(exc))
    if "name" not in sweep.get("metric", {}):
        parser.error(f"{path}: every method ranks runs by the sweep's metric; add metric.name")
    if (sweep.get("early_terminate") or {}).get("type") != "hyperband":
        parser.error(f"{path}: Optuna's and Keras Tuner's Hyperband take the sweep's settings; add early_terminate: hyperband")
    if "value" not in sweep["parameters"].get("epochs", {}):
        parser.error(f"{path}: Hyperband needs a fixed epoch count; set parameters.epochs.value")
    if "hand_aware" in sweep["parameters"] and "value" not in sweep["parameters"]["hand_aware"]:
        parser.error(f"{path}: Keras Tuner trains every trial on one set of targets; fix hand_aware with value:")
    if "background" in sweep["parameters"]:
        parser.error(f"{path}: Keras Tuner trains on fixed arrays, not batches composited each epoch; drop background")
    return sweep


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget per method and seed")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--folds", type=int, default=3, help="other signer folds each winner is re-trained on")
    parser.add_argument("--sweep", type=Path, default=WIDE, help="the sweep YAML every method searches")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated, run two at a time in this order (default: %(default)s)")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.seed, args.minutes, args.out, args.sweep)
        return 0
    methods = args.methods.split(",")
    if unknown := set(methods) - set(METHODS):
        parser.error(f"unknown method(s) {', '.join(sorted(unknown))}; known: {', '.join(METHODS)}")
    if len(set(methods)) != len(methods):
        parser.error(f"--methods names a method twice: {args.methods}")
    sweep = comparable_sweep(args.sweep, parser)
    pairs = [methods[i:i + 2] for i in range(0, len(methods), 2)]  # side by side, one core each
    stamp = time.strftime("%Y%m%d-%H%M%S")
    # the code that runs: read now, as commits made while a long bench runs would be a different one
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    folder = REPO / "bench-results" / f"search-{args.sweep.stem}-{stamp}"
    folder.mkdir(parents=True)
    env = {**os.environ, "ASL_SWEEP_THREADS": "1", "PYTHONPATH": str(REPO)}
    results = []
    t0 = time.time()
    for seed in range(args.seeds):
        for pair in pairs:
            outs = {m: folder / f"{m}-{seed}.json" for m in pair}
            procs = [subprocess.Popen([sys.executable, __file__, "--worker", m, "--seed", str(seed), "--minutes",
                                       str(args.minutes), "--out", str(outs[m]), "--sweep", str(args.sweep)], env=env)
                     for m in pair]
            for p in procs:
                p.wait()
            for m in pair:
                results.append(json.loads(outs[m].read_text()))
            print(f"[bench-search] seed {seed} {'+'.join(pair)} done at {(time.time() - t0) / 60:.1f} min", flush=True)
    summary = summarize(results, args.minutes)
    from asl_sweep import runtime

    runtime.setup(tensorflow=True)  # the re-training below runs here, with both cores
    summary["retrained_winners"] = retrain_winners(results, args.folds, args.minutes * 60, sweep)
    report = {"meta": {"time": stamp, "commit": commit, "sweep": str(args.sweep), "minutes": args.minutes, "seeds": args.seeds,
                       "cpus": os.cpu_count(), "wall_min": (time.time() - t0) / 60}, "summary": summary, "runs": results}
    out = folder.parent / f"{folder.name}.json"
    out.write_text(json.dumps(report, indent=1))
    plot(results, args.minutes, out.with_suffix(".png"), args.sweep.name)
    print(json.dumps(summary, indent=1))
    print(f"written: {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
