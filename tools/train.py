"""Train a model and report its test metric (configs/train.yaml).

Usage and options: ``oad.cli.train`` (the same command as the console script ``oad-train``).
"""

from oad.cli import train

if __name__ == "__main__":
    train()
