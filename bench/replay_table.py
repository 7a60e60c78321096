"""The replay benchmark's table (issue 23): configurations sampled from `sweeps/wide.yaml`, each trained
for the YAML's full epochs on one thread, with every epoch's metrics and wall time, as HPO research
measures (HPOBench, LCBench, YAHPO): a simulator then replays search methods on the table instead of
training, so hundreds of replays cost minutes.

Configurations come from W&B's own random sampler (`sweeps.next_run` with `method: random`) over the
YAML's space, numbered in the order drawn (seed 0). Every `--repeat-every`-th job trains an earlier
configuration again with `seed: 1` (the noise between two trainings of one configuration). Each run goes
through `train.execute`, as an in-process agent runs it (offline W&B run, per-epoch robustness estimate,
end-of-run suite, saved model), and the clock is read at start, at every epoch boundary and at the end:
  setup_s  `execute` called -> first epoch starts (wandb.init, data split, model build)
  epoch_s  one per epoch, boundary to boundary (training, validation, the per-epoch estimate, logging;
           the first epoch's estimate counts in setup_s)
  fit_s    one per epoch, Keras's training and validation alone (what a tool without our extras pays)
  end_s    last epoch -> `execute` returns (robustness suite, examples, confusion matrix, model save, finish)

The times are the process's CPU seconds (`time.process_time`), not wall time: a one-thread run's CPU time
is what it takes on a core of its own, so a table trained beside other work still times right (`wall_s`,
the wall-clock total, and `load`, the 1-minute load average, show how busy the machine was).
Resumable: rows already in --out are skipped; `--shard i/n` trains every n-th job (n processes, one
thread each, share one table). One JSON line per run; floats rounded to 5 digits.
    ASL_SWEEP_THREADS=1 python bench/replay_table.py --out bench/replay/table.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
WIDE = REPO / "sweeps" / "wide.yaml"
KEPT = ("val_soft_accuracy", "val_accuracy", "val_loss", "val_robust_accuracy", "val_score", "accuracy")


def sample_configs(sweep: dict[str, Any], count: int, seed: int = 0) -> list[dict[str, Any]]:
    """`count` configurations drawn by W&B's random sampler over the sweep's parameters, in order."""
    import sweeps

    space = {**copy.deepcopy(sweep), "method": "random"}
    space.pop("early_terminate", None)
    np.random.seed(seed)
    return [{k: v["value"] for k, v in sweeps.next_run(space, []).config.items()} for _ in range(count)]


def jobs(configs: int, repeats: int, every: int) -> list[tuple[int, int]]:
    """(configuration number, seed): all configurations with seed 0, a repeat with seed 1 after every
    `every` of them, so a partial table already has its noise rows."""
    out, repeated = [], 0
    for i in range(configs):
        out.append((i, 0))
        if (i + 1) % every == 0 and repeated < repeats:
            out.append((repeated * every, 1))
            repeated += 1
    return out + [(i * every, 1) for i in range(repeated, repeats)]


class Clock:
    """A reporter that reads the CPU and wall clocks at each epoch boundary and stops the run after
    `stop_after` epochs (None: never, as the table's runs)."""

    sweep_id = None

    def __init__(self, stop_after: int | None = None) -> None:
        self.stop_after = stop_after
        self.cpu: list[float] = []
        self.wall: list[float] = []

    def epoch(self, row: dict[str, float]) -> bool:
        self.cpu.append(time.process_time())
        self.wall.append(time.monotonic())
        return self.stop_after is not None and len(self.cpu) >= self.stop_after

    def finish(self, record: dict[str, Any]) -> None:
        """Nothing: the row is read from the record."""


def train_row(number: int, seed: int, values: dict[str, Any], cache) -> dict[str, Any]:
    """Train one configuration and return its table row. An epoch's Keras part (`fit_s`) is its CPU time
    times the share of its wall time that the run's own epoch timer (`epoch_time`, wall) gives Keras."""
    from asl_sweep import train

    clock = Clock()
    wall, start = time.monotonic(), time.process_time()
    record = train.execute({**values, "seed": seed}, cache, reporter=clock, verbose=0)
    done, wall_done = time.process_time(), time.monotonic()
    history = record["history"]
    n = len(history)
    fit_wall = [h["epoch_time"] for h in history]
    wall_marks = [clock.wall[0] - fit_wall[0], *clock.wall[:n]] if n else [wall_done]
    share = np.asarray(fit_wall) / np.maximum(np.diff(wall_marks), 1e-9) if n else np.zeros(0)
    first_epoch = clock.cpu[0] - fit_wall[0] * min(1.0, (clock.cpu[0] - start) / max(clock.wall[0] - wall, 1e-9)) if n else done
    epoch_s = np.diff([first_epoch, *clock.cpu[:n]])
    return {"config": number, "seed": seed, "values": values, "state": str(record["state"]),
            "setup_s": round(first_epoch - start, 3), "epoch_s": [round(float(t), 3) for t in epoch_s],
            "end_s": round(done - (clock.cpu[n - 1] if n else start), 3),
            "fit_s": [round(float(t), 3) for t in epoch_s * np.minimum(share, 1.0)],
            "wall_s": round(wall_done - wall, 1), "load": round(os.getloadavg()[0], 2),
            "history": {k: [round(float(h[k]), 5) if h.get(k) is not None else None for h in history]
                        for k in KEPT if any(k in h for h in history)}}


def main() -> int:
    import yaml

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "replay" / "table.jsonl")
    parser.add_argument("--configs", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--repeat-every", type=int, default=6)
    parser.add_argument("--sweep", type=Path, default=WIDE)
    parser.add_argument("--limit", type=int, default=0, help="stop after this many new rows (0: all)")
    parser.add_argument("--shard", default="0/1", help="i/n: train jobs i, i+n, i+2n, ...")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_DIR", tempfile.mkdtemp(prefix="replay-wandb-"))
    from asl_sweep import runtime
    from asl_sweep.data import DataCache

    runtime.setup(tensorflow=True)
    sweep = yaml.safe_load(args.sweep.read_text())
    configs = sample_configs(sweep, args.configs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if args.out.exists():
        done = {(r["config"], r["seed"]) for r in map(json.loads, args.out.read_text().splitlines())}
    cache = DataCache(None)
    added = 0
    index, count = map(int, args.shard.split("/"))
    for number, seed in jobs(args.configs, args.repeats, args.repeat_every)[index::count]:
        if (number, seed) in done:
            continue
        row = train_row(number, seed, configs[number], cache)
        with args.out.open("a") as f:
            f.write(json.dumps(row, separators=(",", ":")) + "\n")
        added += 1
        print(f"{time.strftime('%H:%M:%S')} config {number} seed {seed}: {row['state']}, "
              f"best {max(v for v in row['history']['val_soft_accuracy'] if v is not None):.4f}, "
              f"{row['setup_s'] + sum(row['epoch_s']) + row['end_s']:.0f}s", flush=True)
        if args.limit and added >= args.limit:
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
