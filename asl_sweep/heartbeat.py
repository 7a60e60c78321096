"""Heartbeats: how a running run shows that its agent is alive, and how long silence means it died
(as Optuna's `storages/_heartbeat.py`). The ledger writes and reads them (`Ledger.heartbeat`, its
`SILENT` rule, `reap_stale` inside every claim); this module holds the two settings and the thread
that beats while a run trains (or the pacer of an agent that beats for its run's process)."""

from __future__ import annotations

import threading
import time
from typing import Callable, Protocol

from asl_sweep.runtime import env_number


def interval() -> float:
    """Seconds between a running run's heartbeats (ASL_SWEEP_HEARTBEAT_S)."""
    return env_number("ASL_SWEEP_HEARTBEAT_S", 5.0, minimum=0.01)


def timeout() -> float:
    """Seconds without a heartbeat after which a running run is crashed (shown so at once, recorded so by
    the next claim; ASL_SWEEP_HEARTBEAT_TIMEOUT_S)."""
    return env_number("ASL_SWEEP_HEARTBEAT_TIMEOUT_S", 60.0, minimum=0.01)


def pacer() -> Callable[[], bool]:
    """For a loop that beats as it waits (an agent watching its run's process): True once `interval()`
    seconds have passed since the last True."""
    last = time.monotonic()

    def due() -> bool:
        nonlocal last
        if time.monotonic() - last <= interval():
            return False
        last = time.monotonic()
        return True

    return due


class Beating(Protocol):
    """What the thread beats through (a `Ledger` of its own)."""

    def heartbeat(self, run_id: str, attempt: int | None = None) -> bool: ...

    def close(self) -> None: ...


class Heartbeat:
    """Beats for one attempt of a run every `interval()` seconds from a daemon thread, through a connection
    of its own (`connect()`, made again after any error: a dead heartbeat would get a live run reaped).
    Once a beat is refused the attempt is no longer the run's (ended, reaped or requeued): `fenced` is set
    and the beating stops. A context manager; `stop()` ends it."""

    def __init__(self, connect: Callable[[], Beating], run_id: str, attempt: int) -> None:
        self.connect, self.run_id, self.attempt = connect, run_id, attempt
        self.fenced = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        own: Beating | None = None
        try:
            while not self._stop.wait(interval()):
                try:
                    own = own or self.connect()
                    if not own.heartbeat(self.run_id, self.attempt):
                        self.fenced.set()
                        return
                except Exception:  # whatever the ledger raised, the next beat tries with a new connection
                    if own is not None:
                        own.close()
                    own = None
        finally:
            if own is not None:
                own.close()

    def stop(self) -> None:
        self._stop.set()

    def __enter__(self) -> Heartbeat:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
