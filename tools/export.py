"""Export a checkpoint's online step model as TorchScript and ONNX. Configuration: configs/export.yaml.

    .venv/bin/python tools/export.py ckpt_path=<checkpoint> output_dir=<dir> [precision=int8]
Writes ``step.pt``, ``step.onnx`` and ``export.json`` to ``output_dir`` (see ``oad/export.py``) after
checking both against PyTorch; the last line printed gives the largest differences. ``precision=int8`` also
writes ``step_int8.onnx``, checked against the PyTorch int8 step and fp32 (printed, and in export.json).
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../configs", config_name="export")
def main(cfg: DictConfig) -> None:
    from oad.export import export_checkpoint

    manifest = export_checkpoint(cfg.ckpt_path, cfg.output_dir, ignore_index=cfg.ignore_index,
                                 opset_version=cfg.opset_version, precision=cfg.get("precision", "fp32"))
    int8 = manifest.get("int8")
    print(f"exported {manifest['model']} step: {cfg.output_dir}/{manifest['torchscript']}, "
          f"{cfg.output_dir}/{manifest['onnx']}, " + (f"{cfg.output_dir}/{int8['onnx']}, " if int8 else "")
          + f"{cfg.output_dir}/export.json")
    print("max |exported - pytorch|: " + ", ".join(f"{k} {v:.2e}" for k, v in manifest["max_abs_diff"].items()))
    if int8 and "check" in int8:
        c, tol = int8["check"], int8["tolerance"]
        print("int8 max |p_a - p_b| (tolerance): " + ", ".join(
            f"{k} {c[k]:.2e}" + (f" ({tol[k]})" if k in tol else "") for k in c if not k.startswith("same")))
        print("int8 same top class: " + ", ".join(
            f"{k.removeprefix('same_top_class_')} {100 * c[k]:.1f}%" for k in c if k.startswith("same")))


if __name__ == "__main__":
    main()
