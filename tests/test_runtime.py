import os
import subprocess
import sys


def test_tensorflow_loads_quietly_and_stderr_still_works():
    """The C++ banner TensorFlow prints at load is hidden; Python's own stderr is restored after."""
    code = ("from asl_sweep import runtime; runtime.setup(tensorflow=True); import sys, os; "
            "print('after', file=sys.stderr); print(os.environ['TF_ENABLE_ONEDNN_OPTS'])")
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}  # conftest sets it
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0 and out.stderr == "after\n" and out.stdout.strip() == "1"

