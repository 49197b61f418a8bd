"""One-command check of a machine with an NVIDIA GPU: paper-size training and online inference there.

Logic and options in ``oad.bench.gpu`` (``--help``); figures recorded in docs/benchmarks.md.
"""

import sys

from oad.bench.gpu import main

if __name__ == "__main__":
    sys.exit(main())
