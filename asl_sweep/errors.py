"""One exception type for problems the user can fix, and how another library's message becomes one line
of ours. A leaf: every module raises UserError; the entry points' exit policy that shows it is in `console`."""

from __future__ import annotations


class UserError(Exception):
    """Bad input (config, data, sweep file, id): shown as one clear line, exit code 2."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """A library's (often multi-line) error message as one line for ours: whitespace folded, cut at `limit`."""
    return " ".join(str(exc).split())[:limit] or type(exc).__name__
