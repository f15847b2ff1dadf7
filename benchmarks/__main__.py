"""``python -m benchmarks [CASE...] [--reps N]``: see benchmarks/run.py and the README."""

import sys

from benchmarks.run import main

sys.exit(main())
