"""The terminal side that both entry points (`cli.main`, `python -m asl_sweep.train`) share, besides each
command's own answer: the one writer, the log handler, the exit policy and one-line usage errors. The library
only logs (logger `asl_sweep`) and returns values; the entry points install this handler, and a run's
summary goes out through it as notes. An agent's live progress line is `display.Progress`, written here too.

Notes go to stdout as they are, warnings to stderr as `asl-sweep: warning: ...`, errors as
`asl-sweep: error: ...`, each on the current sys.stdout/sys.stderr (so a redirected one gets it).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from typing import Callable, NoReturn

from asl_sweep.errors import UserError
from asl_sweep.records import RunRecord
from asl_sweep.state import RunState

LOGGER = "asl_sweep"
log = logging.getLogger(f"{LOGGER}.console")


def write(text: str, end: str = "\n", error: bool = False) -> None:
    """The one place the command line's messages reach the terminal: stderr when `error`, else stdout."""
    stream = sys.stderr if error else sys.stdout
    stream.write(f"{text}{end}")
    stream.flush()


class ConsoleHandler(logging.Handler):
    """The library's records as the CLI prints them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            warning = record.levelno >= logging.WARNING
            write(f"asl-sweep: warning: {text}" if warning else text, error=warning)
        except Exception:
            self.handleError(record)


def guarded(fn: Callable[[], int | None], *, debug: bool = False) -> int:
    """Run a command: UserError -> one line and exit 2, Ctrl-C -> exit 130, real bugs -> traceback."""
    try:
        return int(fn() or 0)
    except UserError as exc:
        if debug:
            traceback.print_exc()
        write(f"asl-sweep: error: {exc}", error=True)
        return 2
    except KeyboardInterrupt:
        write("\nasl-sweep: interrupted", error=True)
        return 130


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line too (the usage block is what --help is for), exit code 2."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""
        self.exit(2, f"asl-sweep: error: {command}{message} (see: {self.prog} --help)\n")


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
