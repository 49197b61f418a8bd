"""Extract per-chunk features of a folder of videos (configs/extract.yaml).

Usage and options: ``oad.cli.extract`` (the same command as the console script ``oad-extract``).
"""

from oad.cli import extract

if __name__ == "__main__":
    extract()
