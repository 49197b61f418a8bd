"""Training throughput of the models (steps/s, windows/s, memory) at demo and paper size.

Logic and options in ``oad.bench.train`` (``--help``); figures recorded in docs/benchmarks.md.
"""

import sys

from oad.bench.train import main

if __name__ == "__main__":
    sys.exit(main())
