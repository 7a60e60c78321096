"""An agent's events on the terminal (as Keras Tuner's display): a live progress line, rewritten in place
on a terminal and one line per update otherwise (throttled), with the agent's notes above it. It decides
what to show and when; the entry points' `console.write` puts it on the terminal."""

from __future__ import annotations

import sys
import time
from typing import Callable

from asl_sweep.agent import AgentEvents, progress_line
from asl_sweep.ledger import Ledger

THROTTLE_S = 10  # between progress lines when stdout is not a terminal
Write = Callable[[str, str, bool], None]  # (text, end, to stderr)


class Progress(AgentEvents):
    """An agent's events on the terminal: a live progress line and, above it, its notes (both off when
    `enabled` is False, as `--quiet` asks) and warnings (always)."""

    def __init__(self, write: Write, enabled: bool = True) -> None:
        super().__init__(notes=enabled)
        self.write = write
        self.enabled = enabled
        self.ledger: Ledger | None = None
        self.sweep_id = ""
        self.started_at = time.time()
        self.tty = sys.stdout.isatty()
        self._last = 0.0

    def started(self, ledger: Ledger, sweep_id: str) -> None:
        self.ledger, self.sweep_id, self.started_at = ledger, sweep_id, time.time()

    def show(self, force: bool = False) -> None:
        if self.ledger is None or not self.enabled or (not force and not self.tty and time.time() - self._last < THROTTLE_S):
            return
        self._last = time.time()
        line = progress_line(self.ledger, self.sweep_id, self.started_at)
        self.write(f"\r{line}\033[K" if self.tty else line, "" if self.tty else "\n", False)

    def note(self, text: str) -> None:
        if self.enabled:
            self._line(text, error=False)
            self._last = 0.0

    def warn(self, text: str) -> None:
        self._line(text, error=True)

    def _line(self, text: str, error: bool) -> None:
        """A line of its own, above the live line on a terminal."""
        self.write(f"\r{text}\033[K" if self.tty else text, "\n", error)

    def end(self) -> None:
        if self.enabled and self.tty:
            self.write("", "\n", False)
