"""`python -m asl_sweep` is the `asl-sweep` command."""

import sys

from asl_sweep.cli import main

sys.exit(main())
