"""Train and evaluate several models on the same data under the same protocol; one table.
Configuration: configs/leaderboard.yaml (Hydra).

    .venv/bin/python tools/leaderboard.py trainer=cpu           # the six models on the built-in data (demo size)
    .venv/bin/python tools/leaderboard.py trainer=gpu data=thumos14 data.root=<dir> data.layout=lstr   # paper size
    .venv/bin/python tools/leaderboard.py 'models=[{name: linear, model: linear, overrides: []}, {name: trn, model: trn, overrides: []}]'
Writes leaderboard.json, leaderboard.md and leaderboard.png in the run directory (and each model's run in
runs/<name>/). The last printed line is ``winner: <name> mAP=<value> (all protocol)``.
"""

import hydra
from omegaconf import DictConfig

from oad.config import register_configs

register_configs()  # the default model list: every registered model (oad/models/registry.py)


@hydra.main(version_base="1.3", config_path="../configs", config_name="leaderboard")
def main(cfg: DictConfig) -> None:
    from oad.console import single_console_logging
    from oad.tasks.leaderboard import format_table, leaderboard, winner_line

    single_console_logging()
    result = leaderboard(cfg)
    print(format_table(result).rsplit("\n\n", 1)[0])
    print(f"leaderboard: {cfg.output_dir}/leaderboard.md")
    print(winner_line(result))


if __name__ == "__main__":
    main()
