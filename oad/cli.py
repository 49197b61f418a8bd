"""The command-line tools: one function per tool, each a console script of ``pyproject.toml`` (``oad-train``,
``oad-eval``, ...) and called by the matching ``tools/*.py``, so that both spell the same command:

    oad-train data=thumos14 data.root=<dir>        ==  .venv/bin/python tools/train.py data=thumos14 data.root=<dir>

The Hydra tools (train, eval, stream, export, extract, leaderboard) read ``configs/`` at the repository
root (:data:`oad.config.CONFIG_DIR`) and take Hydra's flags anywhere on the command line (``--cfg job``,
``--help``, ``-m`` for a multirun). Nothing heavy is imported before the command line is parsed, so
``--cfg``/``--help`` answer at once.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence

import hydra
from omegaconf import DictConfig

from oad.config import CONFIG_DIR, register_configs

__all__ = ["convert", "evaluate", "export", "extract", "leaderboard", "prepare", "stream", "train"]


def _hydra_tool(config_name: str) -> Callable[[Callable[[DictConfig], None]], Callable[[], None]]:
    """``hydra.main`` on ``configs/<config_name>.yaml``; the job is named by the config's ``task_name``
    (configs/hydra/default.yaml), so its log file is ``<run dir>/<task_name>.log``. The configs derived
    from the model registry are registered first (:func:`oad.config.register_configs`)."""
    register_configs()
    return hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)


@_hydra_tool("train")
def train(cfg: DictConfig) -> None:
    """Train a model and report its test metric. Configuration: configs/train.yaml.

        oad-train                                            # OadTR on the built-in synthetic data (demo size)
        oad-train model=trn                                  # the TRN baseline
        oad-train data=thumos14 data.root=<dir>              # paper size on real data
        oad-train data=thumos14 data.root=<dir> size=demo    # the small model there
        oad-train logger=tensorboard                         # TensorBoard event files

    The last printed line is ``test/mAP=<value>``.
    """
    from oad.console import single_console_logging
    from oad.tasks import headline
    from oad.tasks import train as run

    single_console_logging()
    result = run(cfg)
    if "metrics" in result:
        print(f"metrics: {result['output_dir']}/metrics.json")
        print(headline(result["metrics"]))


@_hydra_tool("eval")
def evaluate(cfg: DictConfig) -> None:
    """Evaluate a checkpoint (``ckpt_path=``) or any method's predictions file (``predictions=``).
    Configuration: configs/eval.yaml.

    Prints a per-class table per protocol; the last line is ``test/mAP=<value>`` (or ``test/mcAP=``).
    """
    from oad.console import single_console_logging
    from oad.tasks import evaluate as run
    from oad.tasks import format_report, headline

    single_console_logging()
    result = run(cfg)
    if "metrics" in result:
        print(format_report(result["metrics"]))
        print(f"metrics: {result['metrics_path']}")
        print(headline(result["metrics"]))


@_hydra_tool("stream")
def stream(cfg: DictConfig) -> None:
    """Online action detection on a video file (or a features file). Configuration: configs/stream.yaml.

        oad-stream video=<file> ckpt_path=<checkpoint> output_dir=<dir>
        oad-stream features=<(T, D) .npy> ckpt_path=<checkpoint>
        oad-stream video=<file> ckpt_path=<checkpoint> output_dir=<dir> report=true

    The last printed line is the real-time factor, or with ``report=true`` the path of ``report.html``; an
    unreadable input prints ``error: ...`` and exits with 2.
    """
    from oad.tasks.streaming import stream as run
    from oad.tasks.streaming import summary_lines

    try:
        result = run(cfg)
    except (ValueError, FileNotFoundError) as e:  # VideoError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for line in summary_lines(result):
        print(line)


@_hydra_tool("export")
def export(cfg: DictConfig) -> None:
    """Export a checkpoint's online step model as TorchScript and ONNX. Configuration: configs/export.yaml.

        oad-export ckpt_path=<checkpoint> output_dir=<dir> [precision=int8]

    Writes ``step.pt``, ``step.onnx`` and ``export.json`` to ``output_dir`` (see ``oad/export.py``) after
    checking both against PyTorch; the last line printed gives the largest differences. ``precision=int8``
    also writes ``step_int8.onnx``, checked against the PyTorch int8 step and fp32 (printed, and in
    export.json).
    """
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


@_hydra_tool("extract")
def extract(cfg: DictConfig) -> None:
    """Extract per-chunk features of a folder of videos. Configuration: configs/extract.yaml.

        oad-extract videos=<folder> output=<dir>
        oad-extract videos=<folder> output=<dir> flow=true device=cuda

    The last printed line is the summary; the exit code is 1 if any video failed (the others are done).
    """
    from oad.video.extract import extract as run

    summary = run(cfg)
    for name, error in summary.failed.items():
        print(f"FAILED {name}: {error}")
    print(summary.line())
    if not summary.ok:
        sys.exit(1)


@_hydra_tool("leaderboard")
def leaderboard(cfg: DictConfig) -> None:
    """Train and evaluate several models on the same data under the same protocol; one table.
    Configuration: configs/leaderboard.yaml.

        oad-leaderboard trainer=cpu                     # the models on the built-in data (demo size)
        oad-leaderboard trainer=gpu data=thumos14 data.root=<dir> data.layout=lstr   # paper size
        oad-leaderboard 'models=[{name: linear, model: linear, overrides: []}, {name: trn, model: trn, overrides: []}]'

        oad-leaderboard suite=robustness seeds=[20,21]       # every model on the robustness datasets, 2 seeds

    Writes leaderboard.json, leaderboard.md and leaderboard.png in the run directory (and each model's run
    in runs/<name>/). The last printed line is ``winner: <name> mAP=<value> (all protocol)`` (several
    datasets: the best mean rank), or ``below the floor (linear): ...`` when a temporal model scored at or
    below the floor on a dataset (an error exit with ``fail_below_floor=true``).
    """
    from oad.console import single_console_logging
    from oad.tasks.leaderboard import format_report, last_line
    from oad.tasks.leaderboard import leaderboard as run

    single_console_logging()
    report = run(cfg)
    print(format_report(report, with_floor_line=False))
    print(f"leaderboard: {cfg.output_dir}/leaderboard.md")
    print(last_line(report))
    if report.get("below_floor") and cfg.get("fail_below_floor"):
        sys.exit(1)


def prepare(argv: Sequence[str] | None = None) -> int:
    """Prepare public feature releases (``oad/data/prepare.py``): convert the OadTR pickles to the LSTR
    layout, pool per-chunk feature maps to vectors, or build per-chunk targets from temporal annotations.

        oad-prepare oadtr_to_lstr src=<OadTR folder> dst=<LSTR folder>
        oad-prepare pool src=<root>/inceptionresnetv2 dst=<root>/inceptionresnetv2_mean
        oad-prepare targets annotations=<dir> out=<root>/target_perframe lengths_from=<root>/<features>
        oad-prepare --help

    Prints the summary as JSON; returns 2 (after ``error: ...``) when the data are wrong.
    """
    from oad.data.prepare import USAGE
    from oad.data.prepare import main as run

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from oad.data.readers import DataError

    try:
        print(json.dumps(run(argv), indent=1))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


CONVERT_USAGE = """\
Convert a reference OadTR, TRN, MiniROAD, LSTR or TeSTra checkpoint into one this project's tools load.

    oad-convert SRC DST [dataset=thumos14] [num_heads=8] ...
    (or: .venv/bin/python tools/convert_reference_checkpoint.py SRC DST ...)

SRC: a checkpoint of github.com/wangxiang1230/OadTR (``torch.save({'model': state_dict, ...})``),
xumingze0308/TRN.pytorch, jbistanbul/MiniROAD, amazon-science/long-short-term-transformer or
zhaoyue-zephyrus/TeSTra (``arch=lstr|testra``: their parameter names are the same). DST: the converted
file, for ``tools/eval.py ckpt_path=DST`` and the streaming runner. Extra ``key=value`` arguments are
constructor overrides (head counts, and window / num_queries for TRN, which the tensors do not tell) or
``dataset=<thumos14|tvseries|hdd>``."""


def _number_or_text(value: str) -> int | float | str:
    if value.lstrip("-").isdigit():
        return int(value)
    return float(value) if value.replace(".", "", 1).isdigit() else value


def convert(argv: Sequence[str] | None = None) -> int:
    """Convert a reference checkpoint (usage: :data:`CONVERT_USAGE`); prints the result as JSON and the
    written file last. Returns 2 (after the usage) on a wrong command line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = [a for a in argv if "=" not in a]
    if len(args) != 2:
        print(CONVERT_USAGE, file=sys.stderr)
        return 2
    kw = {key: _number_or_text(value) for key, value in (a.split("=", 1) for a in argv if "=" in a)}
    from oad.checkpoint import convert_reference_checkpoint

    dataset = kw.pop("dataset", None)
    arch = kw.pop("arch", None)
    result = convert_reference_checkpoint(args[0], args[1], dataset=dataset, arch=arch, **kw)
    print(json.dumps({k: v for k, v in result.items() if k != "data_info"}, indent=2))
    print(f"wrote {args[1]} ({result['model']}, {result['num_parameters']:,} parameters)")
    return 0
