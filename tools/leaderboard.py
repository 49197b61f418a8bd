"""Train and evaluate several models, one table (configs/leaderboard.yaml).

Usage and options: ``oad.cli.leaderboard`` (the same command as the console script ``oad-leaderboard``).
"""

from oad.cli import leaderboard

if __name__ == "__main__":
    leaderboard()
