"""Train a model and report its test metric. Configuration: configs/train.yaml (Hydra).

    .venv/bin/python tools/train.py                 # OadTR on the built-in synthetic data
    .venv/bin/python tools/train.py model=trn       # the TRN baseline
The last printed line is ``test/mAP=<value>``.
"""

import hydra
from omegaconf import DictConfig


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
