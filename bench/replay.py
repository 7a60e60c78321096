"""`make bench-replay`: search methods replayed on the stored table (`bench/replay_table.py`) on a
simulated 2-core clock, so that hundreds of replays per method can tell methods apart where a few live
10-minute searches cannot (issue 23).

A method proposes configurations through its own engine, really called: our bayes and random sweeps
through `sweeps.next_run` and hyperband through `sweeps.stop_runs` (W&B's engine, given the runs as our
controller gives them), Optuna's TPE sampler with its HyperbandPruner, Keras Tuner's HyperbandOracle
(brackets, rounds and resumed trials). A proposal is looked up as the table's nearest configuration, in
the encoding W&B's GP uses (each parameter's CDF; inactive parameters, such as filters_4 with 3 blocks,
count as well), and one of that configuration's trainings is drawn (two seeds where the table has them:
the training noise). Nearest-neighbour lookup keeps every result a real training; a surrogate would
invent curves between them, and with ~200 points in 13 dimensions it would mostly be guessing.

The clock charges what each method's runs cost, as measured in the table (`setup_s`, `epoch_s`, `end_s`:
our runs' start-up, per-epoch work with the robustness estimate, end-of-run suite) or, for Keras Tuner,
Keras's own epochs (`fit_s`) plus its measured model build, checkpoint save on each improving epoch and
restore when a trial resumes (`--measure-costs`); the engines' own suggestions and stop decisions cost
their real CPU time (`make` runs this with one BLAS thread: one core per worker). Times are CPU seconds
of one-thread processes, i.e. seconds on a core of one's own. A run that ends after the budget does not count.

Per method and budget: median best val_accuracy (of the epoch the sweep's metric ranks best, as the
saved model is), its 95% bootstrap interval, the probability that our bayes beats the method (a random
pair of replays, ties half), and the median time to the first run >= 0.95 and >= 0.99.
    python bench/replay.py --table bench/replay/table.jsonl --replays 200 --out bench/replay/results.json
    python bench/replay.py --results bench/replay/results.json        # the table from stored replays
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
WIDE = REPO / "sweeps" / "wide.yaml"
METHODS = ("bayes", "random", "optuna", "kt")
BUDGETS_MIN = (5, 10, 20, 40)
THRESHOLDS = (0.95, 0.99)
COSTS_FILE = REPO / "bench" / "replay" / "costs.json"  # costs the table does not hold, from `--measure-costs`
RESULTS_FILE = REPO / "bench" / "replay" / "results.jsonl"
SURROGATE_RESULTS_FILE = REPO / "bench" / "replay" / "results-surrogate.jsonl"  # the replays on the table's surrogate


@dataclass
class Curve:
    """One training of one configuration, as the table recorded it."""

    metric: list[float]
    accuracy: list[float]
    setup_s: float
    epoch_s: list[float]
    fit_s: list[float]
    end_s: float

    def best(self, upto: int | None = None) -> tuple[float, float]:
        """(best metric, val_accuracy at that epoch) over the first `upto` epochs (all by default): what
        a sweep's saved model scores."""
        metric = self.metric[:upto]
        if not metric:
            return -math.inf, 0.0
        i = int(np.argmax(metric))
        return metric[i], self.accuracy[i]


class Table:
    """The table's configurations, their trainings, and the nearest-configuration lookup."""

    def __init__(self, rows: list[dict[str, Any]], sweep: dict[str, Any]) -> None:
        from sweeps.params import HyperParameterSet

        from asl_sweep.sweepfile import engine_config

        self.sweep = engine_config(sweep)
        self.metric = self.sweep["metric"]["name"]
        self.params = HyperParameterSet.from_config(self.sweep["parameters"])
        by_config: dict[int, dict[str, Any]] = {}
        self.curves: dict[int, list[Curve]] = {}
        for row in rows:
            h = row["history"]
            metric = [v if v is not None and math.isfinite(v) else -math.inf for v in h[self.metric]]
            by_config[row["config"]] = row["values"]
            self.curves.setdefault(row["config"], []).append(
                Curve(metric, [v if v is not None else 0.0 for v in h["val_accuracy"]], row["setup_s"],
                      row["epoch_s"], row["fit_s"], row["end_s"]))
        self.ids = sorted(by_config)
        self.values = [by_config[i] for i in self.ids]
        self.points = self.encode(self.values)

    def encode(self, values: list[dict[str, Any]]) -> np.ndarray:
        from sweeps import SweepRun

        runs = [SweepRun(name=str(i), state="finished", config={k: {"value": x} for k, x in v.items()})
                for i, v in enumerate(values)]
        return self.params.normalize_runs_as_array(runs)

    def nearest(self, values: dict[str, Any]) -> int:
        distance = ((self.points - self.encode([values])[0]) ** 2).sum(axis=1)
        return self.ids[int(distance.argmin())]

    def training(self, config: int, rng: random.Random) -> Curve:
        return rng.choice(self.curves[config])

    def lookup(self, values: dict[str, Any], rng: random.Random) -> Curve:
        """A training of the proposed configuration: one of the nearest configuration's."""
        return self.training(self.nearest(values), rng)


class SurrogateTable(Table):
    """The table's surrogate (`bench/surrogate.py`, a forest of trees): a predicted training, with drawn
    seed noise, for any configuration, where `Table` can only answer with one of its own."""

    def __init__(self, rows: list[dict[str, Any]], sweep: dict[str, Any], seed: int = 0) -> None:
        import surrogate

        super().__init__(rows, sweep)
        self.forest = surrogate.Forest(self.points, [self.curves[i] for i in self.ids], seed=seed)
        self.seen: dict[str, np.ndarray] = {}

    def lookup(self, values: dict[str, Any], rng: random.Random) -> Curve:
        key = json.dumps(values, sort_keys=True)
        if key not in self.seen:
            self.seen[key] = self.encode([values])[0]
        return Curve(**self.forest.predict(self.seen[key], rng))


@dataclass
class Run:
    """A run in a replay: which configuration, which training, how far it got."""

    id: str
    values: dict[str, Any]
    curve: Curve
    start: float
    first_epoch: int = 0  # Keras Tuner's resumed trials start later
    last_epoch: int = 0  # the epochs it is to train to
    done: int = 0  # epochs trained so far (counting from 0, resumed trials included)
    end: float | None = None
    stopped: bool = False
    should_stop: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def best(self) -> tuple[float, float]:
        """(best metric, val_accuracy at that epoch) over the epochs trained so far."""
        return self.curve.best(self.done)


class Method:
    """A search method on the simulated clock: it proposes a run, hears each epoch, may stop runs.
    Our runs (bayes, random, Optuna's, all through `train.execute`) skip the end-of-run robustness suite
    when stopped early, so a stopped run pays `stopped_end_share` of the table's `end_s`; option
    `suite=all` charges the whole `end_s`, as every run paid before that lever. Option `estimate=off`
    (config key `robust_estimate: false`, which the table was not trained with) takes `estimate_share`
    off every epoch."""

    def __init__(self, table: Table, seed: int, costs: dict[str, float], options: dict[str, str]) -> None:
        self.table, self.seed, self.rng = table, seed, random.Random(seed)
        self.epochs = table.sweep["parameters"]["epochs"]["value"]
        self.costs = costs
        self.stopped_end_share = 1.0 if options.pop("suite", "candidates") == "all" else costs["stopped_end_share"]
        self.epoch_share = 1.0 - costs["estimate_share"] if options.pop("estimate", "on") == "off" else 1.0

    def propose(self, runs: list[Run], now: float, worker: int) -> Run | None:
        raise NotImplementedError

    def epoch(self, run: Run, runs: list[Run]) -> bool:
        """The run finished an epoch: True to stop it here."""
        return False

    def ended(self, run: Run) -> None:
        """The run is over."""

    def epoch_cost(self, run: Run) -> float:
        return run.curve.epoch_s[run.done] * self.epoch_share

    def end_cost(self, run: Run) -> float:
        return run.curve.end_s * (self.stopped_end_share if run.stopped else 1.0)


class WandbEngine(Method):
    """Our sweep: W&B's engine (`next_run`, and `stop_runs` when a run reaches a hyperband band), given the
    runs as `controller.engine_runs` gives them (a stopped run is finished with `stopped`). Options
    `min_iter` and `eta` replace the YAML's hyperband settings (the levers tried on the replay);
    `stopped=killed` hands a stopped run to the GP as killed, so it counts with the YAML's
    `metric.impute` (default worst; option `impute` replaces it) instead of its early best."""

    def __init__(self, table: Table, seed: int, method: str, costs: dict[str, float], options: dict[str, str]) -> None:
        from asl_sweep.controller import hyperband_bands

        super().__init__(table, seed, costs, options)
        hyperband = {**table.sweep["early_terminate"], **{k: int(options.pop(k)) for k in ("min_iter", "eta") if k in options}}
        metric = {**table.sweep["metric"], **({"impute": options.pop("impute")} if "impute" in options else {})}
        self.config = {**table.sweep, "method": method, "early_terminate": hyperband, "metric": metric}
        self.stopped_state = options.pop("stopped", "finished")
        self.bands = hyperband_bands(self.config) or set()

    def engine_runs(self, runs: list[Run]):
        from sweeps import SweepRun

        metric = self.table.metric
        out = []
        for r in runs:
            history = [{metric: v} for v in r.curve.metric[:r.done]]
            state = "running" if r.end is None else self.stopped_state if r.stopped else "finished"
            out.append(SweepRun(name=r.id, state=state,
                                config={k: {"value": v} for k, v in r.values.items()}, history=history,
                                summary_metrics=history[-1] if history else {}, stopped=r.stopped,
                                should_stop=r.should_stop))
        return out

    def propose(self, runs: list[Run], now: float, worker: int) -> Run:
        import sweeps

        np.random.seed(self.rng.randrange(2**32))
        t = time.process_time()
        values = {k: v["value"] for k, v in sweeps.next_run(self.config, self.engine_runs(runs)).config.items()}
        think_s = time.process_time() - t
        run = Run(str(len(runs)), values, self.table.lookup(values, self.rng), now, last_epoch=self.epochs)
        run.extra["think_s"] = think_s
        return run

    def epoch(self, run: Run, runs: list[Run]) -> bool:
        import sweeps

        if run.done in self.bands:
            t = time.process_time()
            names = {r.name for r in sweeps.stop_runs(self.config, self.engine_runs(runs))}
            run.extra["think_s"] = run.extra.get("think_s", 0.0) + time.process_time() - t
            for r in runs:
                if r.id in names and r.end is None:
                    r.should_stop = True
        return run.should_stop


class OptunaTPE(Method):
    """Optuna's TPE sampler and HyperbandPruner with the YAML's min_iter, eta and epochs, as bench-search runs it."""

    def __init__(self, table: Table, seed: int, costs: dict[str, float], options: dict[str, str]) -> None:
        import optuna

        super().__init__(table, seed, costs, options)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        et = table.sweep["early_terminate"]
        self.study = optuna.create_study(
            direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=optuna.pruners.HyperbandPruner(min_resource=et["min_iter"], max_resource=self.epochs,
                                                  reduction_factor=et["eta"]))
        self.trials: dict[str, Any] = {}

    def propose(self, runs: list[Run], now: float, worker: int) -> Run:
        import bench

        t = time.process_time()
        trial = self.study.ask()
        values = {k: bench.optuna_suggest(trial, k, spec) for k, spec in self.table.sweep["parameters"].items()}
        think_s = time.process_time() - t
        run = Run(str(len(runs)), values, self.table.lookup(values, self.rng), now, last_epoch=self.epochs)
        self.trials[run.id] = trial
        run.extra["think_s"] = think_s
        return run

    def epoch(self, run: Run, runs: list[Run]) -> bool:
        trial = self.trials[run.id]
        trial.report(max(run.curve.metric[run.done - 1], -1e9), run.done)
        return trial.should_prune()

    def ended(self, run: Run) -> None:
        import optuna

        trial = self.trials.pop(run.id)
        if run.stopped:
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            self.study.tell(trial, max(run.best()[0], -1e9))


class KerasTunerHyperband(Method):
    """Keras Tuner's HyperbandOracle: its brackets and rounds, and trials resumed from a checkpoint of the
    trial they continue. Costs Keras's own epochs, model build, checkpoint saves and restores."""

    def __init__(self, table: Table, seed: int, costs: dict[str, float], options: dict[str, str]) -> None:
        import keras_tuner as kt
        import search

        super().__init__(table, seed, costs, options)
        hp = kt.HyperParameters()
        for k, spec in table.sweep["parameters"].items():
            search.kt_suggest(hp, k, spec)
        self.oracle = kt.oracles.HyperbandOracle(
            objective=kt.Objective(table.metric, "max"), max_epochs=self.epochs,
            factor=table.sweep["early_terminate"]["eta"], hyperband_iterations=1000, seed=seed, hyperparameters=hp)
        self.folder = tempfile.TemporaryDirectory(prefix="replay-kt-")
        self.oracle._set_project_dir(self.folder.name, f"kt-{seed}")
        self.oracle._display.verbose = 0  # its per-trial printout, meant for a terminal
        self.trials: dict[str, Any] = {}
        self.curves: dict[str, Curve] = {}  # KT trial id -> the training its resumed trials continue

    def propose(self, runs: list[Run], now: float, worker: int) -> Run | None:
        t = time.process_time()
        trial = self.oracle.create_trial(f"worker{worker}")
        if trial.status == "IDLE":  # the round waits for trials still running
            return None
        hp = trial.hyperparameters.values
        values = {k: hp[k] for k in self.table.sweep["parameters"] if k in hp}
        values.update({k: s["value"] for k, s in self.table.sweep["parameters"].items() if "value" in s})
        parent = hp.get("tuner/trial_id")
        think_s = time.process_time() - t
        curve = self.curves[parent] if parent in self.curves else self.table.lookup(values, self.rng)
        self.curves[trial.trial_id] = curve
        run = Run(str(len(runs)), values, curve, now, first_epoch=hp["tuner/initial_epoch"],
                  last_epoch=hp["tuner/epochs"], done=hp["tuner/initial_epoch"])
        run.extra.update(think_s=think_s, resumed=parent is not None,
                         start_s=self.costs["build_s"] + (self.costs["restore_s"] if parent else 0.0),
                         best=max(curve.metric[:run.done], default=-math.inf))
        self.trials[run.id] = trial
        return run

    def epoch_cost(self, run: Run) -> float:
        """Keras's epoch, a checkpoint when the objective improved (SaveBestEpoch), and on a resumed trial's
        first epoch the graph tracing a new `fit` pays (the table's first epoch has it, later ones do not)."""
        value = run.curve.metric[run.done]
        save = self.costs["save_s"] if value > run.extra["best"] else 0.0
        run.extra["best"] = max(run.extra["best"], value)
        fit = run.curve.fit_s
        trace = max(0.0, fit[0] - fit[1]) if run.done == run.first_epoch > 0 and len(fit) > 1 else 0.0
        return fit[run.done] + save + trace

    def epoch(self, run: Run, runs: list[Run]) -> bool:
        self.oracle.update_trial(self.trials[run.id].trial_id, {self.table.metric: max(run.curve.metric[run.done - 1], -1e9)},
                                 step=run.done - 1)
        return False

    def end_cost(self, run: Run) -> float:
        return 0.0

    def ended(self, run: Run) -> None:
        trial = self.trials.pop(run.id)
        trial.status = "COMPLETED"
        self.oracle.end_trial(trial)


def replay(method: Method, budget_s: float, workers: int = 2) -> list[Run]:
    """Run `method` on `workers` simulated cores for `budget_s` simulated seconds; the runs it started."""
    runs: list[Run] = []
    queue: list[tuple[float, int, int, str, Run | None]] = []  # (time, order, worker, what, run)
    order = 0

    def at(t: float, worker: int, what: str, run: Run | None = None) -> None:
        nonlocal order
        order += 1
        heapq.heappush(queue, (t, order, worker, what, run))

    for w in range(workers):
        at(0.0, w, "start")
    while queue:
        now, _, worker, what, run = heapq.heappop(queue)
        if now > budget_s:
            break
        if what == "start":
            run = method.propose(runs, now, worker)
            if run is None:  # nothing to run until another run ends
                at(min((t for t, _, _, kind, _ in queue if kind != "start"), default=now + 1.0) + 1e-6, worker, "start")
                continue
            runs.append(run)
            begin = now + run.extra.get("think_s", 0.0) + run.extra.get("start_s", run.curve.setup_s)
            at(begin + method.epoch_cost(run), worker, "epoch", run)
        elif what == "epoch":
            run.done += 1
            run.extra["think_s"] = 0.0
            stop = method.epoch(run, runs) or run.should_stop
            if stop or run.done >= run.last_epoch:
                run.stopped = stop and run.done < run.last_epoch
                at(now + run.extra["think_s"] + method.end_cost(run), worker, "end", run)
            else:
                at(now + run.extra["think_s"] + method.epoch_cost(run), worker, "epoch", run)
        else:
            run.end = now
            method.ended(run)
            at(now, worker, "start")
    return [r for r in runs if r.end is not None and r.end <= budget_s]


def measure_costs(table: Table, samples: int = 8) -> dict[str, float]:
    """What the table does not hold, in CPU seconds as its times (run with ASL_SWEEP_THREADS=1, as the
    table was trained), medians over `samples` of its configurations: Keras Tuner's model build and
    compile, weight save (each improving epoch) and load (each resumed trial); `stopped_end_share`, a
    run's end-of-run time when the sweep stops it (no robustness suite) over its end-of-run time when it
    finishes, both after 2 epochs of `train.execute`; `estimate_share`, the share of an epoch (the second,
    boundary to boundary) that `robust_estimate: false` saves."""
    import os

    import replay_table

    from asl_sweep import model as model_lib
    from asl_sweep import runtime, train
    from asl_sweep.config import from_mapping
    from asl_sweep.data import DataCache

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_DIR", tempfile.mkdtemp(prefix="replay-costs-wandb-"))
    runtime.setup(tensorflow=True)
    build, save, restore, share, estimate = [], [], [], [], []
    folder = Path(tempfile.mkdtemp(prefix="replay-costs-"))
    cache = DataCache(None)
    for values in random.Random(0).sample(table.values, min(samples, len(table.values))):
        cfg = from_mapping(values, source="table")
        t = time.process_time()
        net = model_lib.compiled_model(cfg, 1500)
        build.append(time.process_time() - t)
        path = folder / "checkpoint.weights.h5"
        t = time.process_time()
        net.save_weights(path)
        save.append(time.process_time() - t)
        t = time.process_time()
        net.load_weights(path)
        restore.append(time.process_time() - t)
        ends, epochs_s = {}, {}
        for epochs, stop_after, name, extra in ((2, None, "finished", {}), (3, 2, "stopped", {}),
                                                 (3, 2, "no estimate", {"robust_estimate": False})):
            clock = replay_table.Clock(stop_after)
            train.execute({**values, "epochs": epochs, "warmup_epochs": 0, **extra}, cache, reporter=clock, verbose=0)
            ends[name] = time.process_time() - clock.cpu[-1]
            epochs_s[name] = clock.cpu[1] - clock.cpu[0]
        share.append(ends["stopped"] / ends["finished"])
        estimate.append(1.0 - epochs_s["no estimate"] / epochs_s["stopped"])
    return {k: round(statistics.median(v), 4) for k, v in
            (("build_s", build), ("save_s", save), ("restore_s", restore), ("stopped_end_share", share),
             ("estimate_share", estimate))}


def make_method(spec: str, table: Table, seed: int, costs: dict[str, float]) -> Method:
    """A method from its spec, `name[:key=value,...]`: bayes, random, optuna or kt, with options (see
    `Method` and `WandbEngine`); an option the method does not know is an error."""
    name, _, rest = spec.partition(":")
    options = dict(part.split("=", 1) for part in rest.split(",") if part)
    if name in ("bayes", "random"):
        method: Method = WandbEngine(table, seed, name, costs, options)
    elif name == "optuna":
        method = OptunaTPE(table, seed, costs, options)
    elif name == "kt":
        method = KerasTunerHyperband(table, seed, costs, options)
    else:
        raise ValueError(f"unknown method {name!r} (one of {', '.join(METHODS)})")
    if options:
        raise ValueError(f"method {spec!r}: unknown options {', '.join(options)}")
    return method


def events(runs: list[Run]) -> list[list[float]]:
    """[end time, val_accuracy of the run's best-metric epoch, its best metric] per run, by end time, only
    for runs that raise the best metric or the best val_accuracy so far: all `best_by` and
    `first_reaching` read, at a few hundred bytes per replay."""
    out, metric, accuracy = [], -math.inf, -math.inf
    for e in sorted([round(r.end, 2), round(r.best()[1], 5), round(r.best()[0], 5)] for r in runs):
        if e[2] > metric or e[1] > accuracy:
            out.append(e)
            metric, accuracy = max(metric, e[2]), max(accuracy, e[1])
    return out


def best_by(ev: list[list[float]], t: float) -> float:
    """The best val_accuracy by time t of the run the metric ranks best (what a sweep would ship)."""
    ended = [e for e in ev if e[0] <= t]
    return max(ended, key=lambda e: e[2])[1] if ended else 0.0


def best_metric_by(ev: list[list[float]], t: float) -> float:
    """The best value of the sweep's metric by time t: continuous, where val_accuracy moves in steps of one
    validation image and ties between methods once both find the table's best configurations."""
    return max((e[2] for e in ev if e[0] <= t), default=-math.inf)


def first_reaching(ev: list[list[float]], threshold: float, t: float) -> float | None:
    return next((e[0] for e in ev if e[0] <= t and e[1] >= threshold), None)


def bootstrap_median(values: list[float], rng: random.Random, draws: int = 2000) -> tuple[float, float]:
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    return medians[int(0.025 * draws)], medians[int(0.975 * draws) - 1]


def p_beats(ours: list[float], theirs: list[float]) -> float:
    """P(a random replay of ours ends better than a random one of theirs), ties counted half."""
    a, b = np.asarray(ours)[:, None], np.asarray(theirs)[None, :]
    return float(((a > b) + 0.5 * (a == b)).mean())


def summary(results: dict[str, list[list[list[float]]]], budgets_min=BUDGETS_MIN, ours: str = "bayes") -> list[dict[str, Any]]:
    """One row per (budget, method) from stored replays: what the table prints; `p_ours_beats` compares
    the method `ours` with each other one."""
    rng = random.Random(0)
    rows = []
    for minutes in budgets_min:
        t = minutes * 60
        best = {m: [best_by(ev, t) for ev in replays] for m, replays in results.items()}
        metric = {m: [best_metric_by(ev, t) for ev in replays] for m, replays in results.items()}
        for m, values in best.items():
            lo, hi = bootstrap_median(values, rng)
            row = {"budget_min": minutes, "method": m, "replays": len(values), "median": statistics.median(values),
                   "ci": [lo, hi], "p_ours_beats": None if m == ours or ours not in best else p_beats(best[ours], values),
                   "p_ours_beats_metric": None if m == ours or ours not in best else p_beats(metric[ours], metric[m])}
            for th in THRESHOLDS:
                times = [first_reaching(ev, th, t) for ev in results[m]]
                reached = [x for x in times if x is not None]
                row[f"reached_{th}"] = len(reached) / len(times)
                row[f"median_min_to_{th}"] = statistics.median(times_or_inf(times)) / 60
            rows.append(row)
    return rows


def plot(results: dict[str, list[list[list[float]]]], minutes: float, path: Path, on: str = "the stored table") -> None:
    """Median best val_accuracy (what the sweep would ship) against the budget, one line per method, with
    the median's 95% bootstrap band: the picture of the table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(0.5, minutes, 80)
    rng = np.random.default_rng(0)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for method, replays in results.items():
        best = np.array([[best_by(ev, t * 60) for t in grid] for ev in replays])
        draws = np.median(best[rng.integers(0, len(best), (1000, len(best)))], axis=1)
        line, = ax.plot(grid, np.median(best, axis=0), label=f"{method} ({len(best)} replays)")
        ax.fill_between(grid, *np.percentile(draws, [2.5, 97.5], axis=0), color=line.get_color(), alpha=0.2)
    ax.set(xlabel="budget (simulated minutes on 2 cores)", ylabel="median best val_accuracy", ylim=(0.8, 1.0),
           title=f"Replays on {on}: median and its 95% bootstrap band")
    ax.axhline(0.95, color="grey", lw=0.6, ls=":")
    ax.axhline(0.99, color="grey", lw=0.6, ls=":")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def times_or_inf(times: list[float | None]) -> list[float]:
    return [math.inf if x is None else x for x in times]


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = ["| budget | method | replays | median best | 95% CI | P(ours beats): val_accuracy, metric | "
             "min to 0.95 (reached) | min to 0.99 (reached) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        p = "" if r["p_ours_beats"] is None else f"{r['p_ours_beats']:.2f}, {r['p_ours_beats_metric']:.2f}"
        cells = [f"{r['median_min_to_' + str(th)]:.1f} ({r['reached_' + str(th)]:.0%})" for th in THRESHOLDS]
        lines.append(f"| {r['budget_min']} min | {r['method']} | {r['replays']} | {r['median']:.4f} | "
                     f"{r['ci'][0]:.4f}–{r['ci'][1]:.4f} | {p} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines).replace("inf", "—")


def read_table(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def one_replay(spec: str, table: Table, seed: int, budget_s: float, costs: dict[str, float]) -> dict[str, Any]:
    """One replay as stored: its events, how many runs ended in the budget, the engine's own CPU time."""
    t = time.process_time()
    runs = replay(make_method(spec, table, seed, costs), budget_s)
    return {"method": spec, "seed": seed, "minutes": budget_s / 60, "runs": len(runs),
            "cpu_s": round(time.process_time() - t, 2), "events": events(runs)}


def stored(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The stored replays, by method spec, in seed order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for row in sorted(read_table(path) if path.is_file() else [], key=lambda r: r["seed"]):
        out.setdefault(row["method"], []).append(row)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, default=REPO / "bench" / "replay" / "table.jsonl")
    parser.add_argument("--sweep", type=Path, default=WIDE)
    parser.add_argument("--results", type=Path, help=f"stored replays (JSON lines; default {RESULTS_FILE.name}, "
                        f"with --surrogate {SURROGATE_RESULTS_FILE.name})")
    parser.add_argument("--surrogate", action="store_true",
                        help="replay on the table's surrogate (bench/surrogate.py) instead of the table itself")
    parser.add_argument("--run", action="store_true", help="replay and append to --results (resumes: done seeds are skipped)")
    parser.add_argument("--replays", type=int, default=200)
    parser.add_argument("--shard", default="0/1", help="i/n: with --run, replay seeds i, i+n, ...")
    parser.add_argument("--check", type=int, default=2, help="replays re-run per method as a check")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help="specs: name[:key=value,...]")
    parser.add_argument("--ours", default="bayes", help="the spec the others are compared with")
    parser.add_argument("--minutes", type=float, default=max(BUDGETS_MIN))
    parser.add_argument("--plot", type=Path, help="also draw the table's picture here (PNG)")
    parser.add_argument("--measure-costs", action="store_true", help=f"measure the costs into {COSTS_FILE.name}")
    args = parser.parse_args()
    if not args.table.is_file():
        sys.exit(f"bench/replay.py: {args.table} does not exist yet; make it with: make bench-replay-table")
    rows, sweep = read_table(args.table), yaml.safe_load(args.sweep.read_text())
    table = SurrogateTable(rows, sweep) if args.surrogate else Table(rows, sweep)
    args.results = args.results or (SURROGATE_RESULTS_FILE if args.surrogate else RESULTS_FILE)
    if args.measure_costs:
        costs = measure_costs(table)
        COSTS_FILE.write_text(json.dumps(costs, indent=1) + "\n")
        print(costs)
        return 0
    costs = json.loads(COSTS_FILE.read_text())
    budget_s = args.minutes * 60
    if args.run:
        index, count = map(int, args.shard.split("/"))
        done = {(r["method"], r["seed"]) for rows in stored(args.results).values() for r in rows}
        args.results.parent.mkdir(parents=True, exist_ok=True)
        for seed in range(index, args.replays, count):
            for spec in args.methods:
                if (spec, seed) not in done:
                    row = one_replay(spec, table, seed, budget_s, costs)
                    with args.results.open("a") as f:
                        f.write(json.dumps(row, separators=(",", ":")) + "\n")
                    print(f"{spec} replay {seed}: {row['runs']} runs, {row['cpu_s']} CPU-s", flush=True)
        return 0
    if args.surrogate:
        import surrogate

        fit = surrogate.validate(table.points, [table.curves[i] for i in table.ids])
        print(f"surrogate, 5-fold over {fit['configurations']} configurations: Spearman {fit['spearman']:.2f} and median "
              f"absolute error {fit['median_abs_error']:.3f} on the best val_accuracy, {fit['top_median_abs_error']:.3f} "
              f"on those >= 0.9 (two seeds of one configuration: {fit['seeds_spearman']:.2f}, "
              f"{fit['seeds_median_abs_error']:.3f})")
    results = {spec: rows for spec, rows in stored(args.results).items() if spec in args.methods}
    if not results:
        sys.exit(f"bench/replay.py: no stored replays of {' '.join(args.methods)} in {args.results}; make them with: "
                 "make bench-replay-all")
    print(format_rows(summary({m: [r["events"] for r in rows] for m, rows in results.items()},
                              [b for b in BUDGETS_MIN if b <= args.minutes] or [args.minutes], ours=args.ours)))
    if args.plot:
        plot({m: [r["events"] for r in rows] for m, rows in results.items()}, args.minutes, args.plot,
             "the table's surrogate" if args.surrogate else "the stored table")
    for spec, rows in results.items():
        print(f"{spec}: {len(rows)} replays, median {statistics.median(r['runs'] for r in rows)} runs and "
              f"{statistics.median(r['cpu_s'] for r in rows)} CPU-s per replay")
        for row in rows[:args.check]:
            fresh = one_replay(spec, table, row["seed"], row["minutes"] * 60, costs)
            print(f"  check seed {row['seed']}: best {best_by(fresh['events'], budget_s):.4f} re-run, "
                  f"{best_by(row['events'], budget_s):.4f} stored (the engines' own CPU time moves the clock, "
                  "so a re-run can take another path)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
