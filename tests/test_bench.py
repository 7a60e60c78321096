import importlib.util
from pathlib import Path

from asl_sweep.config import Config

spec = importlib.util.spec_from_file_location("bench", Path(__file__).resolve().parents[1] / "bench/bench.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_flop_count_of_the_seed_model():
    cfg = Config()
    conv1 = 2 * 32 * 32 * 3 * 3 * 1 * 32
    conv2 = 2 * 16 * 16 * 3 * 3 * 32 * 64
    dense = 2 * (8 * 8 * 64) * 128 + 2 * 128 * 10
    forward, training = bench.model_flops(cfg)
    assert forward == conv1 + conv2 + dense
    assert training == 3 * forward - conv1  # no input gradient for the first layer


def test_sweep_summary_counts_only_finished_runs_for_time_to_95():
    start = 1000.0
    runs = [
        {"id": "a", "state": "stopped", "ended_at": start + 50, "history": [{"val_accuracy": 0.97}], "config": {"x": 1}},
        {"id": "b", "state": "finished", "ended_at": start + 90, "history": [{"val_accuracy": 0.96}], "config": {"x": 2}},
        {"id": "c", "state": "running", "ended_at": None, "history": [{"val_accuracy": 0.99}], "config": {"x": 3}},
    ]
    out = bench.sweep_summary(runs, start, [1])
    assert out["time_to_95_s"] == 90 and out["best_run"] == "a" and out["best_val_accuracy"] == 0.97
    assert out["states"]["finished"] == 1 and out["best_at"] == {"1min": 0.97} and out["wall_s"] == 90


def test_best_by_checkpoint():
    events = [(100.0, 0.5), (700.0, 0.9), (1300.0, 0.95)]
    assert bench.best_by(events, [10, 20, 30]) == {"10min": 0.5, "20min": 0.9, "30min": 0.95}
