"""Speed of the per-frame mAP on a THUMOS'14-test-sized problem, against scikit-learn's loop.

Logic and options in ``oad.bench.metrics`` (``--help``); figures recorded in docs/benchmarks.md.
"""

import sys

from oad.bench.metrics import main

if __name__ == "__main__":
    sys.exit(main())
