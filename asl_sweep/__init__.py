"""asl-sweep: W&B hyperparameter sweeps for an ASL digits CNN, online or fully offline."""

__version__ = "0.1.0"
