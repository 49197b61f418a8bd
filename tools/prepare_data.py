"""Prepare public feature releases (oad/data/prepare.py; --help).

Usage and options: ``oad.cli.prepare`` (the same command as the console script ``oad-prepare``).
"""

import sys

from oad.cli import prepare

if __name__ == "__main__":
    sys.exit(prepare())
