"""Waiting out a database that went away: the one place where the ledger reconnects and repeats work.

A unit of work (one ledger transaction) that loses its connection is rolled back, the connection made
again with backoff, and the unit repeated, for up to ASL_SWEEP_LEDGER_RETRY_S seconds: long enough for
a database restart or a failover, as agents and their runs need. The units are written to be safe to
repeat; `Retrier.repeating` tells one that its first try may have landed before the answer was lost.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Protocol, TypeVar

from asl_sweep.errors import UserError, one_line
from asl_sweep.runtime import env_number

log = logging.getLogger(__name__)
T = TypeVar("T")
FIRST_PAUSE_S, LONGEST_PAUSE_S = 0.1, 5.0


class Reconnectable(Protocol):
    """What a retrier needs of a backend (`storage.Backend` has it)."""

    display: str
    can_reconnect: bool

    def is_lost(self, exc: BaseException) -> bool: ...

    def rollback(self) -> None: ...

    def reconnect(self) -> None: ...


def retry_seconds() -> float:
    return env_number("ASL_SWEEP_LEDGER_RETRY_S", 600.0, minimum=0.0)


def pauses(first: float = FIRST_PAUSE_S) -> Callable[[], None]:
    """A sleep that doubles on each call, up to LONGEST_PAUSE_S."""
    pause = first

    def sleep() -> None:
        nonlocal pause
        time.sleep(pause)
        pause = min(pause * 2, LONGEST_PAUSE_S)

    return sleep


def patiently(connect: Callable[[], T], unreachable: type[Exception], *, patient: bool) -> T:
    """`connect()`; when `patient`, a database that does not answer yet (`unreachable`) is waited for up to
    ASL_SWEEP_LEDGER_RETRY_S, as agents and runs do through a restart. Commands people type fail at once."""
    deadline, sleep = time.monotonic() + retry_seconds(), pauses(0.2)
    while True:
        try:
            return connect()
        except unreachable:
            if not patient or time.monotonic() > deadline:
                raise
            sleep()


class Retrier:
    """Runs units of work over one backend; nested units run once (only the outermost is repeated)."""

    def __init__(self, backend: Reconnectable, scrub: Callable[[str], str], unreachable: type[Exception]) -> None:
        self.backend, self.scrub, self.unreachable = backend, scrub, unreachable
        self._local = threading.local()

    def repeating(self) -> bool:
        """Inside a unit of work that runs again after a lost connection: its first run may have landed."""
        return getattr(self._local, "repeat", False)

    def run(self, work: Callable[[], T]) -> T:
        if getattr(self._local, "inside", False) or not self.backend.can_reconnect:
            return work()
        deadline, told = time.monotonic() + retry_seconds(), False
        self._local.inside, self._local.repeat = True, False
        try:
            while True:
                try:
                    result = work()
                except Exception as exc:
                    if not self.backend.is_lost(exc):
                        raise
                    self._local.repeat = True  # the unit may have landed before its answer was lost
                    self.backend.rollback()
                    if not told:
                        log.warning("ledger %s: connection lost (%s); reconnecting", self.backend.display,
                                    self.scrub(one_line(exc, 200)))
                        told = True
                    self._reconnect(deadline, self.scrub(one_line(exc, 200)))
                    continue
                if told:
                    log.warning("ledger %s: reconnected", self.backend.display)
                return result
        finally:
            self._local.inside = self._local.repeat = False

    def _reconnect(self, deadline: float, reason: str) -> None:
        sleep = pauses()
        while True:
            if time.monotonic() > deadline:
                raise UserError(f"ledger {self.backend.display} unreachable for {retry_seconds():.0f}s: {reason}") from None
            sleep()
            try:
                self.backend.reconnect()
                return
            except self.unreachable as down:
                reason = str(down)
