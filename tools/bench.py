"""Benchmark of the online steps at paper size (``--models``: every model side by side; ``--int8``).

Usage and options: ``oad.bench.cli.main`` (the same command as the console script ``oad-bench``).
"""

import sys

from oad.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
