"""`asl-sweep agent` with a fault injected, for multi-machine tests (environment variables):
FAULT_CLOCK_OFFSET_S shifts this machine's clock; FAULT_SLOW_CLAIM_S makes the claim hold the sweep's lock
that long (after touching FAULT_MARK), so the test can kill the agent while it holds it."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def main() -> int:
    offset = float(os.environ.get("FAULT_CLOCK_OFFSET_S", "0"))
    if offset:
        real = time.time
        time.time = lambda: real() + offset  # type: ignore[assignment]
    slow = float(os.environ.get("FAULT_SLOW_CLAIM_S", "0"))
    if slow:
        import sweeps

        real_next = sweeps.next_run

        def next_run(*args, **kwargs):
            Path(os.environ["FAULT_MARK"]).touch()
            time.sleep(slow)
            return real_next(*args, **kwargs)

        sweeps.next_run = next_run
    from asl_sweep.cli import main as cli

    return cli(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
