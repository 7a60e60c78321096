"""`make bench`: speed and search-quality numbers on the real data, printed as a table and written as JSON.

Sections (each can be chosen with --only):
  overhead  per-run orchestration time (run wall time minus model.fit) in-process vs subprocess
  floor     the seed model's 15-epoch fit time vs the floor set by its FLOPs and this machine's matmul rate
  agents    the same fixed runs with one agent vs two agents on this machine
  sweep     the default bayes sweep (sweeps/bayes.yaml) for --minutes: time to 95%, best at checkpoints
  optuna    Optuna TPE + Hyperband pruner on the same search space and the same wall-clock budget
  robustness  the robustness suite's cost per run and the sweep winner's table (from the sweep section's
            first run_cap runs, i.e. `make sweep`'s winner, or from --sweep-id in the ledger ASL_SWEEP_LEDGER
            names), and the winner re-trained on --winner-folds other signer folds (clean, suite mean, worst)
  ledger    claims per second and time holding the sweep's lock with 1-8 agent processes on sweeps of
            50-400 runs (fake epochs), SQLite vs PostgreSQL (a server started here, as the tests do);
            the lock time of a bayes claim as the sweep grows; a real two-agent sweep on each backend;
            the largest number of agents one sweep serves at the default sweep's run length

  masks     the hand masks (asl_sweep/masks.py) against OpenCV's GrabCut (a colour-model graph cut started from
            another cue, saturation) on 48 real photos: IoU mean, median and
            worst, time per photo; a contact sheet of photo, mask and reference in bench-results/masks.png
  background  the cost of `background` (compositing each epoch): fit seconds per epoch of the default
            sweep's space with background 0 and with it, in one process, and their ratio
  dashboard the ledger section's agents (claims per second, epoch-write time) with an `asl-sweep dashboard`
            and one viewer polling the sweep's page at its rate, against none, on SQLite and PostgreSQL:
            alternating trials, medians, and the ratios (`make bench-dashboard`)

Not a test: nothing here asserts; it measures. Results go to bench-results/<timestamp>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml

if TYPE_CHECKING:
    from asl_sweep.records import Run

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
    return [r.ended_at - r.created_at - r.summary["fit_time"]
            for r in ledger.runs(sweep_id) if r.state == "finished"]


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


MASK_PHOTOS = 48


def grabcut(img, iterations: int = 5):
    """The reference mask: OpenCV's GrabCut (colour models and a graph cut that keeps outlines smooth),
    started from another cue than ours (HSV saturation above its Otsu cut is probably hand, below probably
    wall) and told that a 2-pixel frame at the top and sides is wall (the arm crosses the bottom edge)."""
    import cv2
    import numpy as np

    h, w = img.shape[:2]
    bgr = np.ascontiguousarray(img[..., ::-1])
    sat = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)[..., 1]
    cut, _ = cv2.threshold(cv2.GaussianBlur(sat, (5, 5), 0), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = np.where(sat > cut, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    mask[:2], mask[:, :2], mask[:, -2:] = cv2.GC_BGD, cv2.GC_BGD, cv2.GC_BGD
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(bgr, mask, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)


def bench_masks() -> dict[str, Any]:
    import numpy as np
    from PIL import Image

    from asl_sweep import data, masks

    items = data.list_images(data.locate())
    rng = np.random.default_rng(0)
    photos = [data.decode(items[i][0]) for i in sorted(rng.choice(len(items), MASK_PHOTOS, replace=False))]
    t0 = time.perf_counter()
    ours = [masks.hand_mask(p) for p in photos]
    per_photo_ms = (time.perf_counter() - t0) / len(photos) * 1000
    refs = [grabcut(p) for p in photos]
    iou = np.array([(a & b).sum() / max(1, (a | b).sum()) for a, b in zip(ours, refs)])
    sheet = Image.new("RGB", (100 * 12, 100 * 3 * (len(photos) // 12)))
    for i, (p, a, b) in enumerate(zip(photos, ours, refs)):
        x, y = (i % 12) * 100, (i // 12) * 300
        for k, shown in enumerate((p, np.where(a[..., None], p, 40), np.where(b[..., None], p, 40))):
            sheet.paste(Image.fromarray(np.asarray(shown, np.uint8)).resize((100, 100)), (x, y + 100 * k))
    Path("bench-results").mkdir(exist_ok=True)
    sheet.save("bench-results/masks.png")
    worst = int(np.argmin(iou))
    return {"photos": len(photos), "iou_mean": float(iou.mean()), "iou_median": float(np.median(iou)),
            "iou_worst": float(iou[worst]), "iou_below_0.9": int((iou < 0.9).sum()), "ms_per_photo": per_photo_ms,
            "hand_fraction_mean": float(np.mean([m.mean() for m in ours])), "sheet": "bench-results/masks.png"}


def bench_background(epochs: int = 4) -> dict[str, Any]:
    """Fit seconds per epoch without and with compositing, the default sweep's fixed values, one process."""
    import keras

    from asl_sweep import feed
    from asl_sweep import model as model_lib
    from asl_sweep.config import from_mapping
    from asl_sweep.data import DataCache

    params = yaml.safe_load((REPO / "sweeps" / "bayes.yaml").read_text())["parameters"]
    fixed = {k: v["value"] if "value" in v else v.get("values", [None])[0] for k, v in params.items()}
    cache = DataCache()
    out: dict[str, Any] = {}
    share = float(fixed.get("background") or 0.7)
    for label, value in (("without", 0.0), ("with", share)):
        cfg = from_mapping({**{k: v for k, v in fixed.items() if v is not None}, "background": value,
                            "epochs": epochs})
        dataset = cache.get(cfg)
        tr, _ = cache.split(cfg, dataset)
        t0 = time.perf_counter()
        bank = cache.bank(cfg)
        bank_s = time.perf_counter() - t0
        net = model_lib.compiled_model(cfg, len(tr))
        train_data = feed.training_data(cfg, cache.inputs(cfg, dataset)[tr], dataset.masks[tr], dataset.y[tr], bank)
        times: list[float] = []

        class Timer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.t0 = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                times.append(time.perf_counter() - self.t0)  # noqa: B023 (fit runs within this iteration)

        net.fit(**train_data, epochs=epochs, verbose=0, callbacks=[Timer()])
        out[f"epoch_s_{label}"] = statistics.median(times[1:])  # the first epoch traces the graph
        if label == "with":
            out["bank_s"] = bank_s
    out["background"] = share
    out["ratio"] = out["epoch_s_with"] / out["epoch_s_without"]
    return out


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


def lock_timer(ledger) -> dict[str, float]:
    """Marks when the last transaction got its lock and when it committed (SQLite holds the lock from
    BEGIN IMMEDIATE, PostgreSQL from lock_sweep): the claim's lock time is committed - locked."""
    marks: dict[str, float] = {}
    backend = ledger.backend

    def timed(fn, key):
        def wrapper(*args):
            out = fn(*args)
            marks[key] = time.perf_counter()
            return out
        return wrapper

    backend.begin, backend.lock_sweep = timed(backend.begin, "locked"), timed(backend.lock_sweep, "locked")
    backend.commit = timed(backend.commit, "committed")
    return marks


def claim_worker(location: str, sweep_id: str, epochs: int, ready, go, queue, pause: float = 0.0) -> None:
    """One agent of the ledger bench (its own process): claim, write `epochs` fake epochs (`pause` seconds
    of "training" before each), finish, until the sweep is done; times each claim, how long it held the
    sweep's lock, and each epoch write."""
    import sweeps
    from asl_sweep import controller
    from asl_sweep.ledger import Ledger

    ledger = Ledger(location)
    sweeps.next_run(controller.engine_config(ledger.sweep(sweep_id)["config"]), [])  # the engine's imports (~1 s), as in an agent's preflight
    with ledger.transaction():  # warm this connection's caches with the claim's statements (reaps nothing)
        ledger.backend.lock_sweep(sweep_id)
        ledger.reap_stale(sweep_id, 1e9)
        ledger.runs(sweep_id)
    marks = lock_timer(ledger)
    holds, latencies, writes = [], [], []
    ready.put(os.getpid())
    go.wait()  # every agent imported, connected and warm: none competes with another's start-up
    while True:
        t0 = time.perf_counter()
        run = controller.claim_next(ledger, sweep_id, f"bench:{os.getpid()}")
        latencies.append(time.perf_counter() - t0)
        if run is None:
            break
        holds.append(marks["committed"] - marks["locked"])
        for step in range(1, epochs + 1):
            time.sleep(pause)
            t0 = time.perf_counter()
            ledger.append_epoch(run.id, {"epoch": step, "val_accuracy": 0.5 + step / 100}, attempt=run.attempt,
                                step=step)
            writes.append(time.perf_counter() - t0)
        ledger.finish_run(run.id, "finished", attempt=run.attempt, summary={"val_accuracy": 0.5})
    queue.put({"holds": holds, "latencies": latencies, "writes": writes, "done": time.time()})


def claims_cell(location: str, runs: int, agents: int, epochs: int = 2,
                watch: Callable[[str, str], Any] | None = None, pause: float = 0.0) -> dict[str, Any]:
    """k agent processes on one random sweep of `runs` runs: claims per second, lock and epoch-write time
    (ms); with `watch(location, sweep_id)`, a context manager around the agents' work (a dashboard)."""
    import multiprocessing

    from asl_sweep.ledger import Ledger

    config = {"method": "random", "metric": {"name": "val_accuracy", "goal": "maximize"}, "run_cap": runs,
              "parameters": {"dropout": {"min": 0.0, "max": 0.8}, "learning_rate": {"min": 1e-4, "max": 1e-2}}}
    with Ledger(location) as ledger:
        sid = ledger.create_sweep(config, f"claims-{runs}-{agents}")
    ctx = multiprocessing.get_context("spawn")
    ready, go, queue = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=claim_worker, args=(location, sid, epochs, ready, go, queue, pause))
             for _ in range(agents)]
    with watch(location, sid) if watch else contextlib.nullcontext({}) as watcher:
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=300)
        start_at = time.time()
        go.set()
        results = [queue.get(timeout=900) for _ in procs]
        for p in procs:
            p.join()
    holds = sorted(h for r in results for h in r["holds"])
    latencies = sorted(x for r in results for x in r["latencies"])
    writes = sorted(x for r in results for x in r["writes"])
    wall = max(r["done"] for r in results) - start_at
    return {"claims_per_s": len(holds) / wall, "lock_ms_median": 1000 * statistics.median(holds),
            "lock_ms_p95": 1000 * holds[int(0.95 * (len(holds) - 1))],
            "claim_ms_median": 1000 * statistics.median(latencies),
            "epoch_ms_median": 1000 * statistics.median(writes) if writes else None,
            "epoch_ms_p95": 1000 * writes[int(0.95 * (len(writes) - 1))] if writes else None, **watcher}


def bayes_lock_ms(location: str, runs: int, claims: int = 5) -> float:
    """Median lock time of a bayes claim (the default sweep's space) once the sweep has `runs` finished runs."""
    import random

    import sweeps
    from asl_sweep import controller, sweepfile
    from asl_sweep.ledger import Ledger

    config = sweepfile.load(REPO / "sweeps/bayes.yaml")
    config.pop("run_cap", None)
    with Ledger(location) as ledger:
        sid = ledger.create_sweep(config, f"bayes-{runs}")
        engine = controller.engine_config(config)
        for number in range(1, runs + 1):  # finished runs at random points of the space, scored at random
            values = {k: v["value"] for k, v in sweeps.next_run({**engine, "method": "random"}, []).config.items()}
            with ledger.transaction():
                ledger.insert_run(sid, number, values, "prefill", f"prefill-{sid}-{number}")
            run = ledger.claimed(f"prefill-{sid}-{number}")
            ledger.append_epoch(run.id, {"epoch": 1, "val_score": random.random()}, attempt=1, step=1)
            ledger.finish_run(run.id, "finished", attempt=1)
        marks = lock_timer(ledger)
        holds = []
        for _ in range(claims):
            run = controller.claim_next(ledger, sid, "bench")
            holds.append(marks["committed"] - marks["locked"])
            ledger.finish_run(run.id, "finished", attempt=run.attempt)
    return 1000 * statistics.median(holds)


def real_two_agents(location: str, runs: int = 6, epochs: int = 6) -> float:
    """Wall seconds of a real two-agent sweep (grid over seeds, the seed model) on this ledger."""
    from asl_sweep.ledger import Ledger

    with Ledger(location) as ledger:
        sid = ledger.create_sweep(grid_sweep({"epochs": epochs, "seed": list(range(runs))}), "real-2")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "asl_sweep", "agent", sid, "--agents", "2", "--quiet"], check=True,
                   env={**os.environ, "PYTHONPATH": str(REPO), "ASL_SWEEP_LEDGER": location})
    return time.perf_counter() - t0


def postgres_server():
    """A PostgreSQL server of the bench's own, started as the tests start theirs."""
    sys.path.insert(0, str(REPO))
    from tests.pg import PostgresServer

    return PostgresServer()


def backend_location(server, backend: str, name: str) -> str:
    """A fresh ledger on `backend`: a database on the bench's server, or a new SQLite file."""
    if backend == "postgresql":
        return server.create_database(name.replace("-", "_"))
    fresh_ledger(f"ledger-{name}")
    return os.environ["ASL_SWEEP_LEDGER"]


def bench_ledger(run_length_s: float) -> dict[str, Any]:
    server = postgres_server()
    out: dict[str, Any] = {}
    try:
        for backend in ("sqlite", "postgresql"):
            def location(name: str) -> str:
                return backend_location(server, backend, name)  # noqa: B023 (used within this iteration)

            cells = out[backend] = {}
            for runs in (50, 200, 400):
                for agents in (1, 2, 4, 8):
                    cells[f"{runs}_runs_{agents}_agents"] = claims_cell(location(f"c{runs}-{agents}"), runs, agents)
                    print(f"[bench] ledger {backend} {runs} runs {agents} agents: {cells[f'{runs}_runs_{agents}_agents']}",
                          flush=True)
            cells["bayes_lock_ms"] = {f"{n}_runs": bayes_lock_ms(location(f"b{n}"), n) for n in (50, 200, 400)}
        for trial in range(2):  # alternating, so that a warming cache or a busy moment favours neither
            for backend in ("sqlite", "postgresql"):
                if backend == "sqlite":
                    fresh_ledger(f"ledger-real-{trial}")
                where = server.create_database(f"real_{trial}") if backend == "postgresql" else os.environ["ASL_SWEEP_LEDGER"]
                out[backend].setdefault("real_2_agents_wall_s", []).append(real_two_agents(where))
    finally:
        server.close()
    out["real_throughput_ratio_pg_over_sqlite"] = (statistics.median(out["sqlite"]["real_2_agents_wall_s"]) /
                                                   statistics.median(out["postgresql"]["real_2_agents_wall_s"]))
    worst = max(out["postgresql"]["bayes_lock_ms"].values())
    out["run_length_s"] = run_length_s
    out["max_agents_one_sweep"] = {
        "bayes_400_runs": int(run_length_s / (worst / 1000)),
        "random_400_runs": int(run_length_s / (out["postgresql"]["400_runs_8_agents"]["lock_ms_p95"] / 1000))}
    return out


@contextlib.contextmanager
def watched(location: str, sweep_id: str):
    """`asl-sweep dashboard` on the ledger and one viewer polling its sweep page's JSON every POLL_S seconds,
    as the page does (figures are sent again only when they changed); yields what the viewer measured."""
    import threading
    import urllib.request

    from asl_sweep.dashboard import POLL_S

    proc = subprocess.Popen([sys.executable, "-m", "asl_sweep", "dashboard", sweep_id, "--port", "0", "--ledger", location],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    page = [proc.stdout.readline() for _ in range(2)][1].split()[-1]
    api = page.replace("/sweep/", "/api/sweep/")
    stop, polls, measured, first = threading.Event(), [], {}, threading.Event()

    def viewer() -> None:
        version = ""
        while not stop.is_set():
            t0 = time.perf_counter()
            with urllib.request.urlopen(f"{api}?since={version}", timeout=60) as r:
                version = json.loads(r.read())["version"]
            polls.append(time.perf_counter() - t0)
            first.set()
            stop.wait(max(0.0, POLL_S - (time.perf_counter() - t0)))

    thread = threading.Thread(target=viewer, daemon=True)
    thread.start()
    first.wait(timeout=120)  # its imports and first drawing are done: what follows is its steady state
    try:
        yield measured
    finally:
        stop.set()
        thread.join(timeout=120)
        proc.terminate()
        proc.wait(timeout=30)
        measured.update(polls=len(polls), poll_ms_median=1000 * statistics.median(polls) if polls else None)


def bench_dashboard(runs: int = 300, agents: int = 2, epochs: int = 5, pause: float = 0.02,
                    trials: int = 3) -> dict[str, Any]:
    """The ledger section's agents with and without a dashboard watching, in alternating trials; each epoch
    "trains" `pause` seconds, so that a run ends every few tenths of a second: the dashboard redraws (and
    refits importance) as often as it ever does, far more often than in a real sweep."""
    server = postgres_server()
    out: dict[str, Any] = {"runs": runs, "agents": agents, "epochs_per_run": epochs, "epoch_pause_s": pause,
                           "trials": trials}
    keys = ("claims_per_s", "claim_ms_median", "epoch_ms_median", "epoch_ms_p95")
    try:
        for backend in ("sqlite", "postgresql"):
            cells: dict[str, list[dict[str, Any]]] = {"none": [], "dashboard": []}
            for trial in range(trials):
                for mode in cells:
                    where = backend_location(server, backend, f"dash-{mode}-{trial}")
                    cells[mode].append(claims_cell(where, runs, agents, epochs, watched if mode == "dashboard" else None,
                                                   pause))
                    print(f"[bench] dashboard {backend} {mode} trial {trial}: {cells[mode][-1]}", flush=True)
            med = {mode: {k: statistics.median(c[k] for c in cells[mode]) for k in keys} for mode in cells}
            med["dashboard"]["polls"] = sum(c["polls"] for c in cells["dashboard"])
            med["dashboard"]["poll_ms_median"] = statistics.median(c["poll_ms_median"] for c in cells["dashboard"])
            out[backend] = {**med, "ratio": {k: med["dashboard"][k] / med["none"][k] for k in keys}}
    finally:
        server.close()
    return out


def best_by(events: list[tuple[float, float]], checkpoints: list[float]) -> dict[str, float | None]:
    """Best value among (elapsed_s, value) events completed by each checkpoint (minutes)."""
    return {f"{m:g}min": max((v for t, v in events if t <= m * 60), default=None) for m in checkpoints}


def sweep_summary(runs: list[Run], start: float, checkpoints: list[float]) -> dict[str, Any]:
    """Time to the first finished run at >= 95%, best value, winning config and best-by-checkpoint of `runs`."""
    scored = [(r, r.ended_at - start, max(h["val_accuracy"] for h in r.history))
              for r in runs if r.ended_at and r.history]
    best = max(scored, key=lambda e: e[2], default=(None, None, None))
    return {"runs": len(runs),
            "states": {s: sum(r.state == s for r in runs) for s in ("finished", "stopped", "failed", "crashed")},
            "wall_s": max((t for _, t, _ in scored), default=None),
            "time_to_95_s": min((t for r, t, v in scored if r.state == "finished" and v >= 0.95), default=None),
            "best_val_accuracy": best[2], "best_run": best[0].id if best[0] else None,
            "best_config": best[0].config if best[0] else None,
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
    out = {"sweep_id": sid, "run_cap": cap, "budget": sweep_summary(runs, start, checkpoints)}
    if cap:
        out[f"default_run_cap_{cap}"] = sweep_summary(runs[:cap], start, [])
        out[f"default_run_cap_{cap}"].pop("best_at")
    return out


def robustness_scores(record: dict[str, Any]) -> dict[str, Any]:
    """Clean accuracy, the suite's mean and worst case (and which change), and apart: its background changes
    (mean, worst, the small off-centre hand) and the rest of the suite (mean, worst), from a run's record."""
    from asl_sweep.robustness import BACKGROUND_CHANGES

    summary, table = record.get("summary") or {}, record.get("robustness") or {}
    rest = {k: v for k, v in table.items() if k not in BACKGROUND_CHANGES}
    return {"clean": summary.get("val_accuracy"), "robust_mean": summary.get("val_robust_accuracy"),
            "robust_worst": summary.get("val_robust_worst"), "worst_change": summary.get("val_robust_worst_change"),
            "background_mean": summary.get("val_background_accuracy"),
            "background_worst": summary.get("val_background_worst"),
            "small_offcentre": table.get("bg_small_offcentre"),
            "rest_mean": statistics.mean(rest.values()) if rest else None,
            "rest_worst": min(rest.values()) if rest else None}


def bench_robustness(sweep_id: str | None, folds: int, run_cap: int | None = None) -> dict[str, Any]:
    """What scoring the robustness suite costs a run (its share of the run's wall time), how the winner of
    the sweep's first `run_cap` runs (the bench's sweep lifts the cap: its first runs are what `make sweep`
    runs) holds up under each change, and the same configuration re-trained on `folds` other signer folds
    (the same seed's other folds: validation signers the winner was not chosen on)."""
    from asl_sweep.config import folds as signer_folds
    from asl_sweep.data import DataCache
    from asl_sweep.ledger import Ledger
    from asl_sweep.ranking import best_run
    from asl_sweep.results import read_record
    from asl_sweep.sweepfile import metric
    from asl_sweep.train import execute

    if sweep_id is None:
        return {"skipped": "needs the sweep section or --sweep-id"}
    with Ledger(create=False) as ledger:
        sweep, runs = ledger.sweep(sweep_id), ledger.runs(sweep_id)
    timed = [r.summary for r in runs if r.summary.get("robust_time") is not None]
    shares = [s["robust_time"] / s["wall_time"] for s in timed]
    cap = run_cap or sweep["config"].get("run_cap") or len(runs)
    best = best_run(runs[:cap], *metric(sweep["config"]))  # runs come in run-number order
    record = read_record(best) or {}
    out = {"sweep_id": sweep_id, "runs_timed": len(timed),
           "robust_time_median_s": statistics.median(s["robust_time"] for s in timed) if timed else None,
           "robust_share_median": statistics.median(shares) if shares else None,
           "robust_share_max": max(shares) if shares else None,
           "winner": {"run": best.id if best else None, **robustness_scores(record)},
           "winner_table": record.get("robustness") or {}}
    if record.get("config"):
        config, cache = record["config"], DataCache()
        others = [f for f in range(signer_folds(config.get("val_fraction", 0.2))) if f != config.get("fold", 0)]
        out["winner_other_folds"] = {
            f"fold_{f}": robustness_scores(execute({**config, "fold": f}, cache, verbose=0))
            for f in others[:folds]}
    return out


def suggest(name: str, spec: dict[str, Any], *, choice, integer, floating) -> Any:
    """A sweep YAML parameter drawn through another tool's API (Optuna's trial, Keras Tuner's hp)."""
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return choice(name, spec["values"])
    dist = spec.get("distribution", "uniform")
    if dist == "int_uniform":
        return integer(name, spec["min"], spec["max"])
    return floating(name, spec["min"], spec["max"], dist == "log_uniform_values")


def optuna_suggest(trial, name: str, spec: dict[str, Any]) -> Any:
    """The same search space as the sweep YAML, in Optuna's terms."""
    return suggest(name, spec, choice=trial.suggest_categorical, integer=trial.suggest_int,
                   floating=lambda n, lo, hi, log: trial.suggest_float(n, lo, hi, log=log))


def best_of(history: list[dict[str, float]], metric: dict[str, Any]) -> float:
    """A run's best value of a sweep's metric, in its goal (NaN epochs, from a diverged run, skipped), as
    the report ranks it; the worst value there is when no epoch has one."""
    from asl_sweep.ranking import best_epoch
    from asl_sweep.sweepfile import DEFAULT_GOAL

    goal = metric.get("goal", DEFAULT_GOAL)
    row = best_epoch(history, metric["name"], goal)
    if row is None:
        return -math.inf if goal == "maximize" else math.inf
    return row[metric["name"]]


class OptunaReporter:
    """Feeds epochs to an Optuna trial and relays its pruning decision, like the ledger reporter."""

    def __init__(self, trial, metric: str = "val_accuracy", deadline: float = float("inf")) -> None:
        self.trial, self.metric, self.pruned, self.deadline = trial, metric, False, deadline

    def epoch(self, row: dict[str, float]) -> bool:
        """Stop when pruned, or at the budget's end (what ends later does not count)."""
        self.trial.report(row[self.metric], int(row["epoch"]))
        self.pruned = self.trial.should_prune()
        return self.pruned or time.time() > self.deadline

    def finish(self, record: dict[str, Any]) -> None:
        pass


def optuna_events(config: dict[str, Any], seed: int, minutes: float) -> list[tuple[float, float, bool, dict, float]]:
    """Optuna TPE + Hyperband pruner on a sweep YAML's space and metric (a trial's value is its best
    `metric.name` in the metric's goal, as our sweep ranks runs), training with `train.execute`, until
    `minutes` have passed (no new trial after that): per trial (elapsed s at its end, its best val_accuracy,
    finished (not pruned), its config, its best metric value)."""
    import optuna

    from asl_sweep import sweepfile
    from asl_sweep.data import DataCache
    from asl_sweep.train import execute

    et = config["early_terminate"]
    max_epochs = config["parameters"]["epochs"]["value"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    metric, goal = sweepfile.metric(config)
    study = optuna.create_study(direction=goal, sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.HyperbandPruner(min_resource=et["min_iter"],
                                                                      max_resource=max_epochs,
                                                                      reduction_factor=et["eta"]))
    cache = DataCache()
    start = time.time()
    events: list[tuple[float, float, bool, dict, float]] = []

    def objective(trial):
        values = {k: optuna_suggest(trial, k, v) for k, v in config["parameters"].items()}
        reporter = OptunaReporter(trial, metric, deadline=start + minutes * 60)
        history = execute(values, cache, reporter=reporter, verbose=0)["history"]
        best = max(h["val_accuracy"] for h in history)
        events.append((time.time() - start, best, not reporter.pruned, values, best_of(history, config["metric"])))
        print(f"optuna trial {trial.number}: best val_accuracy {best:.4f}{' (pruned)' if reporter.pruned else ''}",
              flush=True)
        if reporter.pruned:
            raise optuna.TrialPruned()
        return best_of(history, config["metric"])

    study.optimize(objective, timeout=minutes * 60)
    return events


def bench_optuna(minutes: float, checkpoints: list[float]) -> dict[str, Any]:
    events = optuna_events(yaml.safe_load((REPO / "sweeps/bayes.yaml").read_text()), 0, minutes)
    return {"trials": len(events), "best_val_accuracy": max((e[1] for e in events), default=None),
            # as for the sweep: time to 95% counts finished (unpruned) trials only
            "time_to_95_s": min((t for t, v, finished, *_ in events if v >= 0.95 and finished), default=None),
            "best_at": best_by([(t, v) for t, v, *_ in events], checkpoints)}


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
    parser.add_argument("--only", nargs="*",
                        default=["overhead", "floor", "agents", "ledger", "masks", "background", "sweep", "robustness",
                                 "optuna"])
    parser.add_argument("--overhead-runs", type=int, default=8)
    parser.add_argument("--sweep-id", help="robustness section: a finished local sweep (default: the sweep section's)")
    parser.add_argument("--winner-folds", type=int, default=3,
                        help="robustness section: the winner's seed's other signer folds to re-train it on (default 3)")
    parser.add_argument("--run-length", type=float, default=77.0,
                        help="ledger section: seconds one run takes (default: the default sweep's median here)")
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
        "robustness": lambda: bench_robustness(args.sweep_id or (results.get("sweep") or {}).get("sweep_id"),
                                               args.winner_folds, None if args.sweep_id else
                                               (results.get("sweep") or {}).get("run_cap")),
        "ledger": lambda: bench_ledger(args.run_length),
        "masks": bench_masks,
        "background": bench_background,
        "dashboard": bench_dashboard,
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
