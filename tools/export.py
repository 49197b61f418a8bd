"""Export a checkpoint's online step model as TorchScript and ONNX. Configuration: configs/export.yaml.

    .venv/bin/python tools/export.py ckpt_path=<checkpoint> output_dir=<dir>
Writes ``step.pt``, ``step.onnx`` and ``export.json`` to ``output_dir`` (see ``oad/export.py``) after
checking both against PyTorch; the last line printed gives the largest differences.
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../configs", config_name="export")
def main(cfg: DictConfig) -> None:
    from oad.export import export_checkpoint

    manifest = export_checkpoint(cfg.ckpt_path, cfg.output_dir, ignore_index=cfg.ignore_index,
                                 opset_version=cfg.opset_version)
    print(f"exported {manifest['model']} step: {cfg.output_dir}/{manifest['torchscript']}, "
          f"{cfg.output_dir}/{manifest['onnx']}, {cfg.output_dir}/export.json")
    print("max |exported - pytorch|: " + ", ".join(f"{k} {v:.2e}" for k, v in manifest["max_abs_diff"].items()))


if __name__ == "__main__":
    main()
