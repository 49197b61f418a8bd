"""Evaluate a checkpoint (``ckpt_path=``) or any method's predictions file (``predictions=``).

Configuration: configs/eval.yaml (Hydra). Prints a per-class table per protocol; the last line is
``test/mAP=<value>`` (or ``test/mcAP=``).
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    from oad.console import single_console_logging
    from oad.tasks import evaluate, format_report, headline

    single_console_logging()
    result = evaluate(cfg)
    if "metrics" in result:
        print(format_report(result["metrics"]))
        print(f"metrics: {result['metrics_path']}")
        print(headline(result["metrics"]))


if __name__ == "__main__":
    main()
