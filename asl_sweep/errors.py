"""One exception type for problems the user can fix, and the exit policy every entry point shares."""

from __future__ import annotations

import sys
import traceback
from typing import Callable


class UserError(Exception):
    """Bad input (config, data, sweep file, id): shown as one clear line, exit code 2."""


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
