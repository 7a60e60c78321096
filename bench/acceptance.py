"""Acceptance check of a finished local sweep on the real data: report -> export -> predict ->
evaluate on the run's own validation images -> re-train from the exported config.yaml.

    .venv/bin/python bench/acceptance.py SWEEP_ID [--skip-retrain]

Prints what it measured; exits non-zero if a check fails (evaluate must equal the recorded
val_accuracy, which is the saved model's; re-training must land within TOLERANCE of it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOLERANCE = 0.02  # CPU thread scheduling makes TensorFlow runs differ slightly even with one seed


def cli(*args: str) -> tuple[str, float]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "asl_sweep", *args], check=True, capture_output=True, text=True)
    return out.stdout, time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("sweep_id")
    parser.add_argument("--skip-retrain", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="asl-acceptance-"))
    failures = []

    _, t_report = cli("report", args.sweep_id, "--out", str(work / "report"))
    html = work / "report" / "index.html"
    print(f"report: {html} ({html.stat().st_size / 1e6:.1f} MB, {len(list(html.parent.glob('*.png')))} PNGs) "
          f"in {t_report:.1f}s")

    _, t_export = cli("export", args.sweep_id, "--out", str(work / "export"))
    metrics = json.loads((work / "export" / "metrics.json").read_text())
    print(f"export: run {metrics['run_id']} in {t_export:.1f}s; best {metrics['metric']['best']:.4f}, "
          f"final {metrics['metric']['final']:.4f}")

    from asl_sweep.ledger import Ledger

    run = next(r for r in Ledger().runs(args.sweep_id) if r.id == metrics["run_id"])
    record = json.loads(Path(run.record_path).read_text())
    val = record["val_predictions"]
    sample = val[:: max(1, len(val) // 5)][:5]
    out, t_predict = cli("predict", str(work / "export"), *[v["path"] for v in sample])
    predicted = [int(line.split("digit ")[1].split()[0]) for line in out.strip().splitlines()]
    print(f"predict: {len(sample)} validation images in {t_predict:.1f}s: true {[v['true'] for v in sample]} "
          f"predicted {predicted}")
    if predicted != [v["pred"] for v in sample]:
        failures.append("predict disagrees with the run's own predictions")

    folder = work / "val"
    for v in val:
        dest = folder / str(v["true"]) / Path(v["path"]).name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.symlink_to(Path(v["path"]).resolve())
    _, t_eval = cli("evaluate", str(work / "export"), "--data-dir", str(folder), "--out", str(work / "eval.json"))
    evaluated = json.loads((work / "eval.json").read_text())["accuracy"]
    recorded = record["summary"]["val_accuracy"]
    print(f"evaluate: {len(val)} validation images, accuracy {evaluated:.4f} vs recorded final {recorded:.4f} "
          f"in {t_eval:.1f}s")
    if abs(evaluated - recorded) > 1e-3:
        failures.append(f"evaluate {evaluated:.4f} != recorded {recorded:.4f}")

    if not args.skip_retrain:
        out, t_train = cli("train", f"--config={work / 'export' / 'config.yaml'}")
        retrained = float(out.split("val_accuracy ")[1].split()[0])
        print(f"re-train from config.yaml: val_accuracy {retrained:.4f} vs recorded {recorded:.4f} "
              f"(tolerance {TOLERANCE}) in {t_train:.0f}s")
        if abs(retrained - recorded) > TOLERANCE:
            failures.append(f"re-train {retrained:.4f} is not within {TOLERANCE} of {recorded:.4f}")
    for f in failures:
        print(f"FAILED: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
