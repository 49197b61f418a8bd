"""Extract per-chunk features of a folder of videos. Configuration: configs/extract.yaml (Hydra).

    .venv/bin/python tools/extract_features.py videos=<folder> output=<dir>
    .venv/bin/python tools/extract_features.py videos=<folder> output=<dir> flow=true device=cuda
The last printed line is the summary; the exit code is 1 if any video failed (the others are done).
"""

import sys

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../configs", config_name="extract")
def main(cfg: DictConfig) -> None:
    from oad.video.extract import extract

    summary = extract(cfg)
    for name, error in summary.failed.items():
        print(f"FAILED {name}: {error}")
    print(summary.line())
    if not summary.ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
