"""Peak memory of training on a THUMOS-sized dataset in the LSTR layout (memory-mapped features).

Logic and options in ``oad.bench.memory`` (``--help``); figures recorded in docs/benchmarks.md.
"""

import sys

from oad.bench.memory import main

if __name__ == "__main__":
    sys.exit(main())
