"""Train a model and report its test metric. Configuration: configs/train.yaml (Hydra).

    .venv/bin/python tools/train.py                 # OadTR on the built-in synthetic data (demo size)
    .venv/bin/python tools/train.py model=trn       # the TRN baseline
    .venv/bin/python tools/train.py data=thumos14 data.root=<dir>            # paper size on real data
    .venv/bin/python tools/train.py data=thumos14 data.root=<dir> size=demo  # the small model there
The last printed line is ``test/mAP=<value>``.
"""

import sys

import hydra
from omegaconf import DictConfig

from oad.config import with_default_size

sys.argv[1:] = with_default_size(sys.argv[1:])  # the size follows the data unless size= is given


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    from oad.console import single_console_logging
    from oad.tasks import headline, train

    single_console_logging()
    result = train(cfg)
    if "metrics" in result:
        print(f"metrics: {result['output_dir']}/metrics.json")
        print(headline(result["metrics"]))


if __name__ == "__main__":
    main()
