"""A stand-in for `python -m asl_sweep.train` in multi-machine tests: it reports epochs to the ledger through
the same reporter as the real program (`controller.reporter_from_env`), with no TensorFlow, so that dozens
of runs take seconds. val_accuracy depends on the seed, so every grid point's result is known."""

from __future__ import annotations

import os
import sys
import time

from asl_sweep import controller
from asl_sweep.config import parse_overrides


def main() -> int:
    offset = float(os.environ.get("FAULT_CLOCK_OFFSET_S", "0"))  # this machine's clock is off (faulty_agent.py)
    if offset:
        real = time.time
        time.time = lambda: real() + offset  # type: ignore[assignment]
    values = parse_overrides(sys.argv[1:])
    epochs, pause = int(values.get("epochs", 3)), float(os.environ.get("FAKE_EPOCH_S", "0.2"))
    reporter = controller.reporter_from_env()
    assert reporter is not None, "not launched by an agent of a local sweep"
    history, state = [], "finished"
    with reporter:
        for epoch in range(1, epochs + 1):
            time.sleep(pause)
            row = {"epoch": epoch, "val_accuracy": round(0.5 + int(values.get("seed", 0)) / 100 + epoch / 1000, 4)}
            history.append(row)
            if reporter.epoch(row):
                state = "stopped"
                break
        reporter.finish({"run_id": os.environ["WANDB_RUN_ID"], "sweep_id": reporter.sweep_id, "state": state,
                         "config": values, "history": history, "summary": {"val_accuracy": history[-1]["val_accuracy"]},
                         "confusion_matrix": [], "robustness": {}, "val_predictions": [],
                         "paths": {"record": None, "run_dir": None, "model": None}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
