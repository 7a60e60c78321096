"""An agent's events on the terminal (as Keras Tuner's display): a live progress line, rewritten in place
on a terminal and one line per update otherwise (throttled), with the agent's notes above it."""

from __future__ import annotations

import sys
import time

from asl_sweep.agent import AgentEvents, progress_line
from asl_sweep.ledger import Ledger

THROTTLE_S = 10  # between progress lines when stdout is not a terminal


class Progress(AgentEvents):
    """An agent's events on the terminal: a live progress line and, above it, its notes (both off when
    `enabled` is False, as `--quiet` asks) and warnings (always)."""

    def __init__(self, enabled: bool = True) -> None:
        super().__init__(notes=enabled)
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
        print(f"\r{line}\033[K" if self.tty else line, end="" if self.tty else "\n", flush=True)

    def note(self, text: str) -> None:
        if self.enabled:
            self._line(text, sys.stdout)
            self._last = 0.0

    def warn(self, text: str) -> None:
        self._line(text, sys.stderr)

    def _line(self, text: str, stream) -> None:
        """A line of its own, above the live line on a terminal."""
        print(f"\r{text}\033[K" if self.tty else text, file=stream, flush=True)

    def end(self) -> None:
        if self.enabled and self.tty:
            print()
