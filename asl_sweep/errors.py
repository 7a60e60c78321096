"""One exception type for problems the user can fix, and the exit policy every entry point shares."""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Callable, NoReturn


class UserError(Exception):
    """Bad input (config, data, sweep file, id): shown as one clear line, exit code 2."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """A library's (often multi-line) error message as one line for ours: whitespace folded, cut at `limit`."""
    return " ".join(str(exc).split())[:limit] or type(exc).__name__


def guarded(fn: Callable[[], int | None], *, debug: bool = False) -> int:
    """Run a command: UserError -> one line and exit 2, Ctrl-C -> exit 130, real bugs -> traceback."""
    try:
        return int(fn() or 0)
    except UserError as exc:
        if debug:
            traceback.print_exc()
        print(f"asl-sweep: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nasl-sweep: interrupted", file=sys.stderr)
        return 130


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line too (the usage block is what --help is for), exit code 2."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""
        self.exit(2, f"asl-sweep: error: {command}{message} (see: {self.prog} --help)\n")
