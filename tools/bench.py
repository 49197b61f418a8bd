"""Benchmark of the online steps at paper size: a table of latencies, FLOPs and the machine.

Logic and options in ``oad.bench.streaming`` (``--help``); figures recorded in docs/benchmarks.md.
"""

import sys

from oad.bench.streaming import main

if __name__ == "__main__":
    sys.exit(main())
