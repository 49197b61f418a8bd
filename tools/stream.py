"""Online action detection on a video or features file (configs/stream.yaml).

Usage and options: ``oad.cli.stream`` (the same command as the console script ``oad-stream``).
"""

from oad.cli import stream

if __name__ == "__main__":
    stream()
