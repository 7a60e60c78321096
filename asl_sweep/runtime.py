"""Process set-up shared by every command: quiet TensorFlow, wandb mode and folders, threads.

Must run before TensorFlow is imported, so it imports nothing heavy itself.
"""

from __future__ import annotations

import contextlib
import logging
import netrc
import os
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


def wandb_mode() -> str:
    """`WANDB_MODE` when set, else online with credentials and offline without."""
    return os.environ.get("WANDB_MODE") or ("online" if has_wandb_key() else "offline")


def require_wandb_key() -> None:
    """Online work needs credentials: without them wandb would stop to prompt for a login."""
    from asl_sweep.errors import UserError

    if not has_wandb_key():
        raise UserError("W&B is online (WANDB_MODE=online) but no API key is set: run 'wandb login', "
                        "set WANDB_API_KEY, or use WANDB_MODE=offline for a local sweep")


def setup(*, debug: bool = False, workdir: Path | None = None, tensorflow: bool = False) -> None:
    """Silence start-up noise unless debugging, keep every wandb file under the working directory, and
    turn on TensorFlow's oneDNN kernels; `tensorflow=True` imports it now, quietly, for commands that train."""
    workdir = (workdir or Path.cwd()).resolve()
    # TensorFlow enables oneDNN by default only on CPUs with AVX-512; on AVX2 (this project's 2-core
    # machines) it measured 1.5x faster for the seed CNN's fit (30.7 s -> 20.2 s).
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    os.environ.setdefault("WANDB_MODE", wandb_mode())
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
