"""Convert a reference checkpoint into one this project loads.

Usage and options: ``oad.cli.convert`` (the same command as the console script ``oad-convert``).
"""

import sys

from oad.cli import convert

if __name__ == "__main__":
    sys.exit(convert())
