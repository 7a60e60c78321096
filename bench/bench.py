"""`make bench`: speed and search-quality numbers on the real data, printed as a table and written as JSON.

Sections (each can be chosen with --only):
  overhead  per-run orchestration time (run wall time minus model.fit) in-process vs subprocess
  floor     the seed model's 15-epoch fit time vs the floor set by its FLOPs and this machine's matmul rate
  agents    the same fixed runs with one agent vs two agents on this machine
  sweep     the default bayes sweep (sweeps/bayes.yaml) for --minutes: time to 95%, best at checkpoints
  optuna    Optuna TPE + Hyperband pruner on the same search space and the same wall-clock budget
  robustness  the robustness suite's cost per run and the sweep winner's table (from the sweep section,
            or from --sweep-id in the ledger ASL_SWEEP_LEDGER names)

Not a test: nothing here asserts; it measures. Results go to bench-results/<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SEED = {"epochs": 15}


def fresh_ledger(name: str) -> None:
    """Each section gets its own ledger file so numbers never mix."""
    path = Path(f"bench-results/{name}.db")
    path.parent.mkdir(exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    os.environ["ASL_SWEEP_LEDGER"] = str(path)


def grid_sweep(parameters: dict[str, Any]) -> dict[str, Any]:
    return {"method": "grid", "metric": {"name": "val_accuracy", "goal": "maximize"},
            "parameters": {k: ({"values": v} if isinstance(v, list) else {"value": v}) for k, v in parameters.items()},
            "command": ["${env}", "${interpreter}", "-m", "asl_sweep.train", "${args}"]}


def run_overheads(ledger, sweep_id: str) -> list[float]:
    """Per finished run: (ended - claimed) - fit_time, from the ledger."""
    return [r["ended_at"] - r["created_at"] - r["summary"]["fit_time"]
            for r in ledger.runs(sweep_id) if r["state"] == "finished"]


def bench_overhead(runs: int) -> dict[str, Any]:
    from asl_sweep import agent
    from asl_sweep.ledger import Ledger

    out: dict[str, Any] = {}
    for mode in ("inprocess", "subprocess"):
        fresh_ledger(f"overhead-{mode}")
        ledger = Ledger()
        sid = ledger.create_sweep(grid_sweep({"epochs": 1, "dropout": [round(0.1 + 0.05 * i, 2) for i in range(runs + 1)]}), mode)
        agent.local_agent(sid, agent.AgentOptions(count=1, subprocess_mode=mode == "subprocess",
                                                  show_progress=False))  # warm-up
        first = len(ledger.runs(sid))
        agent.local_agent(sid, agent.AgentOptions(subprocess_mode=mode == "subprocess", show_progress=False))
        values = run_overheads(ledger, sid)[first:]
        out[mode] = {"runs": len(values), "mean_s": statistics.mean(values), "median_s": statistics.median(values),
                     "max_s": max(values)}
    return out


def model_flops(cfg) -> tuple[float, float]:
    """(forward, training) FLOPs per image (2 x multiply-adds) of the conv and dense layers.

    Training = forward + weight gradient (1x forward) + input gradient (1x forward), except that the
    first layer needs no input gradient."""
    from asl_sweep import model as model_lib

    layers = []
    for layer in model_lib.classifier(cfg).layers:
        if layer.__class__.__name__ == "Conv2D":
            _, h, w, c_out = layer.output.shape
            k = layer.kernel.shape
            layers.append(2.0 * h * w * k[0] * k[1] * k[2] * c_out)
        elif layer.__class__.__name__ == "Dense":
            layers.append(2.0 * layer.kernel.shape[0] * layer.kernel.shape[1])
    forward = sum(layers)
    return forward, 3 * forward - layers[0]


def matmul_rate(n: int = 1024, repeats: int = 20, trials: int = 5) -> float:
    """This machine's peak float32 matmul throughput through TensorFlow, FLOP/s: the best of
    `trials` timings, since the floor is what the hardware can do, not what a noisy moment allowed."""
    import tensorflow as tf

    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    tf.linalg.matmul(a, b).numpy()
    best = float("inf")
    for _ in range(trials):
        t0 = time.perf_counter()
        for _ in range(repeats):
            c = tf.linalg.matmul(a, b)
        c.numpy()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 * repeats / best


def bench_floor() -> dict[str, Any]:
    from asl_sweep.config import Config
    from asl_sweep.data import DataCache
    from asl_sweep.train import execute

    fresh_ledger("floor")
    cfg = Config()
    cache = DataCache()
    record = execute(SEED, cache, verbose=0)
    s = record["summary"]
    fwd, train_flops = model_flops(cfg)
    per_epoch = train_flops * s["train_images"] + fwd * s["val_images"]  # validation: forward only
    rate = matmul_rate()
    floor = per_epoch * cfg.epochs / rate
    # The same arithmetic in 4x fewer, 4x larger steps: how much of the gap is per-step cost.
    big = execute({**SEED, "batch_size": 128}, cache, verbose=0)["summary"]
    return {"forward_mflops_per_image": fwd / 1e6, "gflops_per_epoch": per_epoch / 1e9,
            "matmul_gflops_per_s": rate / 1e9, "floor_s": floor, "fit_s": s["fit_time"],
            "ratio": s["fit_time"] / floor, "val_accuracy": s["val_accuracy"],
            "batch128_fit_s": big["fit_time"], "batch128_ratio": big["fit_time"] / floor,
            "batch128_val_accuracy": big["val_accuracy"]}


def bench_agents(runs: int, epochs: int) -> dict[str, Any]:
    out = {}
    for agents in (1, 2):
        fresh_ledger(f"agents-{agents}")
        from asl_sweep.ledger import Ledger

        ledger = Ledger()
        sid = ledger.create_sweep(grid_sweep({"epochs": epochs, "seed": list(range(runs))}), f"a{agents}")
        ledger.close()
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "asl_sweep", "agent", sid, "--agents", str(agents), "--quiet"],
                       check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        out[f"{agents}_agents"] = {"runs": runs, "wall_s": time.perf_counter() - t0}
    out["speedup"] = out["1_agents"]["wall_s"] / out["2_agents"]["wall_s"]
    return out


def best_by(events: list[tuple[float, float]], checkpoints: list[float]) -> dict[str, float | None]:
    """Best value among (elapsed_s, value) events completed by each checkpoint (minutes)."""
    return {f"{m:g}min": max((v for t, v in events if t <= m * 60), default=None) for m in checkpoints}


def sweep_summary(runs: list[dict[str, Any]], start: float, checkpoints: list[float]) -> dict[str, Any]:
    """Time to the first finished run at >= 95%, best value, winning config and best-by-checkpoint of `runs`."""
    scored = [(r, r["ended_at"] - start, max(h["val_accuracy"] for h in r["history"]))
              for r in runs if r["ended_at"] and r["history"]]
    best = max(scored, key=lambda e: e[2], default=(None, None, None))
    return {"runs": len(runs),
            "states": {s: sum(r["state"] == s for r in runs) for s in ("finished", "stopped", "failed", "crashed")},
            "wall_s": max((t for _, t, _ in scored), default=None),
            "time_to_95_s": min((t for r, t, v in scored if r["state"] == "finished" and v >= 0.95), default=None),
            "best_val_accuracy": best[2], "best_run": best[0]["id"] if best[0] else None,
            "best_config": best[0]["config"] if best[0] else None,
            "best_at": best_by([(t, v) for _, t, v in scored], checkpoints)}


def bench_sweep(minutes: float, checkpoints: list[float]) -> dict[str, Any]:
    """The default sweep (sweeps/bayes.yaml) with its run_cap lifted so it fills the same budget as
    Optuna; its first run_cap runs are exactly what `make sweep` runs, and are reported as such."""
    from asl_sweep import agent, sweepfile
    from asl_sweep.ledger import Ledger

    fresh_ledger("sweep")
    ledger = Ledger()
    config = sweepfile.load(REPO / "sweeps/bayes.yaml")
    cap = config.pop("run_cap", None)
    sid = ledger.create_sweep(config, "bench")
    start = time.time()
    agent.local_agent(sid, agent.AgentOptions(minutes=minutes))
    runs = ledger.runs(sid)  # in run-number order
    out = {"sweep_id": sid, "budget": sweep_summary(runs, start, checkpoints)}
    if cap:
        out[f"default_run_cap_{cap}"] = sweep_summary(runs[:cap], start, [])
        out[f"default_run_cap_{cap}"].pop("best_at")
    return out


def bench_robustness(sweep_id: str | None) -> dict[str, Any]:
    """What scoring the robustness suite costs a run (its share of the run's wall time) and how the sweep's
    winner holds up under each change, from a finished sweep's records."""
    from asl_sweep.ledger import Ledger
    from asl_sweep.results import best_run, read_record
    from asl_sweep.sweepfile import metric

    if sweep_id is None:
        return {"skipped": "needs the sweep section or --sweep-id"}
    with Ledger(create=False) as ledger:
        sweep, runs = ledger.sweep(sweep_id), ledger.runs(sweep_id)
    timed = [r["summary"] for r in runs if r["summary"].get("robust_time") is not None]
    shares = [s["robust_time"] / s["wall_time"] for s in timed]
    best = best_run(runs, *metric(sweep["config"]))
    record = read_record(best) or {}
    summary = record.get("summary") or {}
    return {"sweep_id": sweep_id, "runs_timed": len(timed),
            "robust_time_median_s": statistics.median(s["robust_time"] for s in timed) if timed else None,
            "robust_share_median": statistics.median(shares) if shares else None,
            "robust_share_max": max(shares) if shares else None,
            "winner": {"run": (best or {}).get("id"), "clean": summary.get("val_accuracy"),
                       "robust_mean": summary.get("val_robust_accuracy"), "robust_worst": summary.get("val_robust_worst"),
                       "worst_change": summary.get("val_robust_worst_change")},
            "winner_table": record.get("robustness") or {}}


def optuna_suggest(trial, name: str, spec: dict[str, Any]) -> Any:
    """The same search space as the sweep YAML, in Optuna's terms."""
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return trial.suggest_categorical(name, spec["values"])
    dist = spec.get("distribution", "uniform")
    if dist == "int_uniform":
        return trial.suggest_int(name, spec["min"], spec["max"])
    return trial.suggest_float(name, spec["min"], spec["max"], log=dist == "log_uniform_values")


class OptunaReporter:
    """Feeds epochs to an Optuna trial and relays its pruning decision, like the ledger reporter."""

    def __init__(self, trial) -> None:
        self.trial, self.pruned = trial, False

    def epoch(self, row: dict[str, float]) -> bool:
        self.trial.report(row["val_accuracy"], int(row["epoch"]))
        self.pruned = self.trial.should_prune()
        return self.pruned

    def finish(self, record: dict[str, Any]) -> None:
        pass


def bench_optuna(minutes: float, checkpoints: list[float]) -> dict[str, Any]:
    import optuna

    from asl_sweep.data import DataCache
    from asl_sweep.train import execute

    config = yaml.safe_load((REPO / "sweeps/bayes.yaml").read_text())
    et = config["early_terminate"]
    max_epochs = config["parameters"]["epochs"]["value"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0),
                                pruner=optuna.pruners.HyperbandPruner(min_resource=et["min_iter"],
                                                                      max_resource=max_epochs,
                                                                      reduction_factor=et["eta"]))
    cache = DataCache()
    start = time.time()
    events: list[tuple[float, float, bool]] = []  # (elapsed, best value, pruned)

    def objective(trial):
        values = {k: optuna_suggest(trial, k, v) for k, v in config["parameters"].items()}
        reporter = OptunaReporter(trial)
        record = execute(values, cache, reporter=reporter, verbose=0)
        best = max(h["val_accuracy"] for h in record["history"])
        events.append((time.time() - start, best, reporter.pruned))
        print(f"optuna trial {trial.number}: best val_accuracy {best:.4f}{' (pruned)' if reporter.pruned else ''}",
              flush=True)
        if reporter.pruned:
            raise optuna.TrialPruned()
        return best

    study.optimize(objective, timeout=minutes * 60)
    return {"trials": len(study.trials), "best_val_accuracy": max((v for _, v, _ in events), default=None),
            # as for the sweep: time to 95% counts finished (unpruned) trials only
            "time_to_95_s": min((t for t, v, pruned in events if v >= 0.95 and not pruned), default=None),
            "best_at": best_by([(t, v) for t, v, _ in events], checkpoints)}


def table(results: dict[str, Any]) -> str:
    """Two columns, one row per measured number; nested sections become dotted names."""
    rows: list[tuple[str, str]] = []

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and not prefix.endswith(("best_config", "winner_table")):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(value, dict):
            rows.append((prefix, " ".join(f"{k}={fmt(v)}" for k, v in value.items())))
        else:
            rows.append((prefix, fmt(value)))

    walk("", {k: v for k, v in results.items() if k != "meta"})
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("BENCH_MINUTES", 30)),
                        help="wall-clock budget for each of the sweep and optuna sections (default 30)")
    parser.add_argument("--only", nargs="*", default=["overhead", "floor", "agents", "sweep", "robustness", "optuna"])
    parser.add_argument("--overhead-runs", type=int, default=8)
    parser.add_argument("--sweep-id", help="robustness section: a finished local sweep (default: the sweep section's)")
    args = parser.parse_args()
    from asl_sweep import runtime

    runtime.setup(tensorflow=True)
    checkpoints = [m for m in (10, 20, 30) if m < args.minutes] + [args.minutes]
    results: dict[str, Any] = {"meta": {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "cpus": os.cpu_count(),
                                        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                                                 capture_output=True, text=True).stdout.strip(),
                                        "minutes": args.minutes}}
    sections = {
        "overhead": lambda: bench_overhead(args.overhead_runs),
        "floor": bench_floor,
        "agents": lambda: bench_agents(runs=4, epochs=8),
        "sweep": lambda: bench_sweep(args.minutes, checkpoints),
        "optuna": lambda: bench_optuna(args.minutes, checkpoints),
        "robustness": lambda: bench_robustness(args.sweep_id or (results.get("sweep") or {}).get("sweep_id")),
    }
    for name in args.only:
        t0 = time.perf_counter()
        results[name] = sections[name]()
        print(f"[bench] {name} done in {time.perf_counter() - t0:.0f}s", flush=True)
    out = Path("bench-results") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(table(results))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
