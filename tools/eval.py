"""Evaluate a checkpoint or a predictions file (configs/eval.yaml).

Usage and options: ``oad.cli.evaluate`` (the same command as the console script ``oad-eval``).
"""

from oad.cli import evaluate

if __name__ == "__main__":
    evaluate()
