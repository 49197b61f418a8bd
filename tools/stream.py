"""Online action detection on a video file (or a features file). Configuration: configs/stream.yaml (Hydra).

    .venv/bin/python tools/stream.py video=<file> ckpt_path=<checkpoint> output_dir=<dir>
    .venv/bin/python tools/stream.py features=<(T, D) .npy> ckpt_path=<checkpoint>
    .venv/bin/python tools/stream.py video=<file> ckpt_path=<checkpoint> output_dir=<dir> report=true
The last printed line is the real-time factor, or with ``report=true`` the path of ``report.html``; an
unreadable input prints ``error: ...`` and exits with 2.
"""

import sys

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../configs", config_name="stream")
def main(cfg: DictConfig) -> None:
    from oad.tasks.streaming import stream, summary_lines

    try:
        result = stream(cfg)
    except (ValueError, FileNotFoundError) as e:  # VideoError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for line in summary_lines(result):
        print(line)


if __name__ == "__main__":
    main()
