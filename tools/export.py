"""Export a checkpoint's online step as TorchScript and ONNX (configs/export.yaml).

Usage and options: ``oad.cli.export`` (the same command as the console script ``oad-export``).
"""

from oad.cli import export

if __name__ == "__main__":
    export()
