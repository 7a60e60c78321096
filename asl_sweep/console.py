"""What the command line prints besides each command's own answer: the library only logs (logger
`asl_sweep`) and returns values; the entry points (`cli.main`, `python -m asl_sweep.train`) install this
handler, and a run's summary goes out through it as notes. An agent's live progress line is `display.Progress`.

The handler shows notes on stdout as they are and warnings on stderr as `asl-sweep: warning: ...`, each
line on the current sys.stdout/sys.stderr (so a redirected one gets it).
"""

from __future__ import annotations

import logging
import os
import sys

from asl_sweep.records import RunRecord
from asl_sweep.state import RunState

LOGGER = "asl_sweep"
log = logging.getLogger(f"{LOGGER}.console")


class ConsoleHandler(logging.Handler):
    """The library's records as the CLI prints them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if record.levelno >= logging.WARNING:
                sys.stderr.write(f"asl-sweep: warning: {text}\n")
                sys.stderr.flush()
            else:
                sys.stdout.write(f"{text}\n")
                sys.stdout.flush()
        except Exception:
            self.handleError(record)


def install(*, debug: bool = False) -> None:
    """Show the library's logs (INFO and up; DEBUG too with --debug), once per process."""
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(h, ConsoleHandler) for h in logger.handlers):
        logger.addHandler(ConsoleHandler())
    logger.setLevel(logging.DEBUG if debug else logging.INFO)


def report_run(record: RunRecord) -> int:
    """Tell a trained run's summary, where its record is and how to upload it (notes the handler shows on
    stdout); the exit code (1: failed)."""
    s = record["summary"]
    acc = f"{s['val_accuracy']:.4f} (saved model: best epoch {s['best_epoch']})" if s["val_accuracy"] is not None else "n/a"
    last = f"{s['last_epoch_val_accuracy']:.4f}" if s["last_epoch_val_accuracy"] is not None else "n/a"
    log.info("run %s %s: val_accuracy %s, last epoch %s, %s epochs in %.1fs", record["run_id"], record["state"], acc,
             last, s["epochs_run"], s["wall_time"])
    log.info("record: %s", record["paths"]["record"])
    if os.environ.get("WANDB_MODE") == "offline":
        log.info("logged offline; upload later with: wandb sync %s", record["paths"]["run_dir"])
    return 1 if record["state"] == RunState.FAILED else 0
