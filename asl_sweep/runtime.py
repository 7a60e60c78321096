"""Process set-up shared by every command: quiet TensorFlow, wandb mode and folders, threads.

Must run before TensorFlow is imported, so it imports nothing heavy itself.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import netrc
import os
import socket
import sys
import warnings
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse


def has_wandb_key() -> bool:
    """True when W&B credentials exist (env var or ~/.netrc), i.e. online is possible."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


# wandb's own `Settings.mode` values: anything else is a 40-line pydantic traceback at `wandb.init`
WANDB_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")
DEFAULT_BASE_URL = "https://api.wandb.ai"
REACH_TIMEOUT_S = 3.0  # a W&B host that does not answer a TCP connection in this long counts as unreachable


def wandb_mode() -> str:
    """`WANDB_MODE` when set, else online with credentials and offline without. Empty counts as unset (what
    `export WANDB_MODE=` leaves, meant as "no mode"); a value wandb does not know is one line."""
    from asl_sweep.errors import UserError

    mode = os.environ.get("WANDB_MODE", "").strip()
    if mode and mode not in WANDB_MODES:
        raise UserError(f"WANDB_MODE={mode!r} is not a W&B mode: use online, offline or disabled, or unset it "
                        "(then online with an API key, offline without)")
    return mode or ("online" if has_wandb_key() else "offline")


def require_wandb_key() -> None:
    """Online work needs credentials: without them wandb would stop to prompt for a login."""
    from asl_sweep.errors import UserError

    if not has_wandb_key():
        raise UserError("W&B is online (WANDB_MODE=online) but no API key is set: run 'wandb login', "
                        "set WANDB_API_KEY, or use WANDB_MODE=offline for a local sweep")


def base_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL


@functools.cache
def unreachable() -> str | None:
    """Why W&B's host does not answer (None when it does), decided once per process by one TCP connection
    of at most REACH_TIMEOUT_S: wandb's own first call would retry for about 20 s, then raise."""
    parsed = urlparse(base_url())
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname or "", port), timeout=REACH_TIMEOUT_S).close()
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
    return None


def require_online(what: str) -> None:
    """Online work needs an API key and a W&B that answers; else one line saying what to do instead."""
    from asl_sweep.errors import UserError

    require_wandb_key()
    why = unreachable()
    if why is not None:
        raise UserError(f"W&B is not reachable at {base_url()} ({why}), so {what} cannot use it though an API key "
                        "is set: work offline with --local (asl-sweep sweep FILE --local) or WANDB_MODE=offline")


def setup(*, debug: bool = False, workdir: Path | None = None, tensorflow: bool = False) -> None:
    """Silence start-up noise unless debugging, keep every wandb file under the working directory, and
    turn on TensorFlow's oneDNN kernels; `tensorflow=True` imports it now, quietly, for commands that train."""
    workdir = (workdir or Path.cwd()).resolve()
    # TensorFlow enables oneDNN by default only on CPUs with AVX-512; on AVX2 (this project's 2-core
    # machines) it measured 1.5x faster for the seed CNN's fit (30.7 s -> 20.2 s).
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    os.environ["WANDB_MODE"] = wandb_mode()  # also replaces an empty one, which wandb itself refuses
    os.environ.setdefault("WANDB_DIR", str(workdir))
    for var, sub in (("WANDB_CACHE_DIR", ".cache"), ("WANDB_CONFIG_DIR", ".config"), ("WANDB_DATA_DIR", ".data")):
        os.environ.setdefault(var, str(workdir / "wandb" / sub))
    if not debug:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ.setdefault("WANDB_CONSOLE", "off")
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        logging.getLogger("absl").setLevel(logging.ERROR)
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
    if tensorflow:
        load_tensorflow(quiet=not debug)


@contextlib.contextmanager
def _stderr_fd_silenced() -> Iterator[None]:
    """File descriptor 2 points at /dev/null inside the block (C++ writes bypass sys.stderr)."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def load_tensorflow(*, quiet: bool) -> None:
    """Import TensorFlow now and pin its thread pools to `ASL_SWEEP_THREADS` (set per agent when
    several share the machine; one agent per core scales best). When quiet, TensorFlow's C++ banner
    (printed to file descriptor 2 at load, before any log level applies) goes to /dev/null; Python
    errors still surface, raised after the restore."""
    threads = int(env_number("ASL_SWEEP_THREADS", 0, integer=True, minimum=0))  # checked before the slow import
    if "tensorflow" not in sys.modules:
        with _stderr_fd_silenced() if quiet else contextlib.nullcontext():
            import tensorflow  # noqa: F401
    if threads == 0:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
    except RuntimeError:
        pass  # already initialised in this process: the first setting stays, which is what we want.


MEMORY_LIMIT_ENV = "ASL_SWEEP_MEMORY_LIMIT_MB"
CGROUP = Path("/sys/fs/cgroup")  # cgroup v2: a container's own memory limit, below the host's MemAvailable


def available_memory() -> int | None:
    """Bytes a new model may use: `ASL_SWEEP_MEMORY_LIMIT_MB` when set, else the kernel's MemAvailable
    (free plus reclaimable) capped by a container's cgroup headroom; None where neither can be read."""
    limit_mb = env_number(MEMORY_LIMIT_ENV, 0, minimum=0)
    if limit_mb:
        return int(limit_mb * 2**20)
    found: list[int] = []
    try:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        found.append(int(meminfo["MemAvailable"].split()[0]) * 1024)
    except (OSError, KeyError, ValueError):
        try:
            found.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
        except (OSError, ValueError, AttributeError):
            pass
    try:
        cap = (CGROUP / "memory.max").read_text().strip()
        if cap != "max":
            found.append(int(cap) - int((CGROUP / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def size_text(n: float) -> str:
    """Bytes as a person reads them: GiB, or MiB below 1 GiB (a small limit would read '0.0 GiB')."""
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def env_number(name: str, default: float, *, integer: bool = False, minimum: float | None = None) -> float:
    """One of our numeric environment variables (`default` when unset or empty); a value that is not
    a (whole, finite) number or is below `minimum` is one clear line naming the variable, not a traceback."""
    import math

    from asl_sweep.errors import UserError

    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    kind = "a whole number" if integer else "a number"
    try:
        value = float(raw)
    except ValueError:
        value = math.nan  # refused just below, with infinities and fractions where a whole number is due
    if not math.isfinite(value) or (integer and value != int(value)):
        raise UserError(f"environment variable {name} must be {kind}, got {raw!r}")
    if minimum is not None and value < minimum:
        raise UserError(f"environment variable {name} must be {kind} of at least {minimum:g}, got {raw!r}")
    return int(value) if integer else value
