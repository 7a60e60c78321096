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
    assert bench.model_flops(cfg) == conv1 + conv2 + dense


def test_best_by_checkpoint():
    events = [(100.0, 0.5), (700.0, 0.9), (1300.0, 0.95)]
    assert bench.best_by(events, [10, 20, 30]) == {"10min": 0.5, "20min": 0.9, "30min": 0.95}
