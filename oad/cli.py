"""The command-line tools: one function per tool, each a console script of ``pyproject.toml`` (``oad-train``,
``oad-eval``, ...) and called by the matching ``tools/*.py``, so that both spell the same command:

    oad-train data=thumos14 data.root=<dir>        ==  .venv/bin/python tools/train.py data=thumos14 data.root=<dir>

The Hydra tools (train, eval, stream, export, extract, leaderboard) read ``configs/`` at the repository
root (:data:`oad.config.CONFIG_DIR`) and take Hydra's flags anywhere on the command line (``--cfg job``,
``--help``, ``-m`` for a multirun). Nothing heavy is imported before the command line is parsed, so
``--cfg``/``--help`` answer at once.

Errors: every tool runs through :func:`run_reported`: a failure ends with one line ``error: <file or config
key>: <problem>`` on standard error (the details of a many-problem error on the lines above it) and exit
code 2 for a user error (a bad file, config value or command line: ``ValueError``, ``OSError``, config and
import errors) or 1 for anything else (a bug: the line says so). The traceback is printed only with
``OAD_DEBUG=1`` in the environment; the Hydra tools also write it to the run's log file. The Hydra tools
check the composed config first (:func:`oad.config.check_config`) and the run folder before Hydra
configures its log file there (:class:`RunFolderCheck`, a Hydra callback of ``configs/hydra/default.yaml``).
Hydra's own errors (an override it cannot parse or merge) keep Hydra's format (``HYDRA_FULL_ERROR=1``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from oad.config import CONFIG_DIR, check_config, register_configs

__all__ = ["DEBUG_ENV", "RunFolderCheck", "convert", "evaluate", "export", "extract", "leaderboard", "prepare",
           "run_reported", "stream", "train"]

DEBUG_ENV = "OAD_DEBUG"  # OAD_DEBUG=1: tracebacks on the terminal
EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
EXIT_SOME_FAILED = 1  # extract: some videos failed, the others are done; leaderboard: every run failed

log = logging.getLogger(__name__)


def _config_errors() -> tuple[type[BaseException], ...]:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return OmegaConfBaseException, HydraException


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a user's input causes: a bad file or value (``ValueError``, incl. ``DataError``, ``VideoError``,
    ``ConfigError``), a missing or unwritable file (``OSError``), a config that does not compose or
    instantiate, a package that is not installed."""
    return ValueError, OSError, ImportError, *_config_errors()


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _problem(e: BaseException) -> str:
    """The text of an error: an ``OSError`` as ``<file>: <reason>``, others as their message."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return str(e) or type(e).__name__


def _log_traceback_to_files(e: BaseException) -> None:
    """The traceback into the log files of the run (Hydra's ``<run dir>/<task>.log``), not the console."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s: %s", (type(e).__name__, _problem(e)),
                            (type(e), e, e.__traceback__))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _report_error(e: BaseException, internal: bool = False) -> int:
    """Print ``e`` as the tools do (see the module docstring); returns the exit code."""
    _log_traceback_to_files(e)
    if _debug():
        traceback.print_exception(e, file=sys.stderr)
    lines = _problem(e).strip().splitlines() or [type(e).__name__]
    if isinstance(e, _config_errors()):  # Hydra's and OmegaConf's put the key on a line of its own
        rest = [line.strip() for line in lines[1:] if line.strip()]
        lines = [" ".join([lines[0], "; ".join(rest)]) if rest else lines[0]]
    for line in lines[1:]:  # a many-problem error: its details first, the error line last
        print(line, file=sys.stderr)
    head = lines[0].rstrip(":") + (" (above)" if len(lines) > 1 else "")
    if internal:
        hint = "" if _debug() else f"; {DEBUG_ENV}=1 shows the traceback"
        print(f"error: internal error, {type(e).__name__}: {head}{hint}", file=sys.stderr)
        return EXIT_INTERNAL_ERROR
    print(f"error: {head}", file=sys.stderr)
    return EXIT_USER_ERROR


def _unwrapped(e: BaseException) -> BaseException:
    """A user error raised inside Hydra's ``instantiate`` (e.g. a ``DataError`` of a data constructor) is
    reported as itself, not as Hydra's wrapper."""
    from hydra.errors import InstantiationException

    while isinstance(e, InstantiationException) and isinstance(e.__cause__, _user_errors()):
        e = e.__cause__
    return e


def run_reported(job: Callable[[], int | None]) -> int:
    """Run ``job``; its exit code (0 for None), or after the error line 2 for a user error and 1 for any
    other ``Exception``."""
    try:
        return job() or 0
    except _user_errors() as e:
        return _report_error(_unwrapped(e))
    except Exception as e:  # noqa: BLE001 - reported in the one error style, exit code 1
        return _report_error(e, internal=True)


class RunFolderCheck(Callback):
    """A Hydra callback (``configs/hydra/default.yaml``): the run folder (a multirun's sweep folder) must
    be writable before Hydra creates it and opens its log file there; else the error line names it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir, "hydra.sweep.dir")

    @staticmethod
    def _check(folder: str, key: str) -> None:
        path = Path(str(folder))
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as e:
            print(f"error: {path}: the run folder cannot be written ({e.strerror or e}); choose another with "
                  f"{key}=<folder>", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)


def _hydra_tool(config_name: str) -> Callable[[Callable[[DictConfig], int | None]], Callable[[], None]]:
    """``hydra.main`` on ``configs/<config_name>.yaml``; the job is named by the config's ``task_name``
    (configs/hydra/default.yaml), so its log file is ``<run dir>/<task_name>.log``. The configs derived
    from the model registry are registered first (:func:`oad.config.register_configs`). The job checks the
    composed config (:func:`oad.config.check_config`) and runs in :func:`run_reported`: a failure exits
    with the error line."""
    register_configs()

    def wrap(tool: Callable[[DictConfig], int | None]) -> Callable[[], None]:
        @functools.wraps(tool)
        def job(cfg: DictConfig) -> None:
            def checked() -> int | None:
                check_config(cfg)
                return tool(cfg)

            code = run_reported(checked)
            if code:
                sys.exit(code)

        return hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)(job)

    return wrap


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

    The last printed line is the real-time factor, or with ``report=true`` the path of ``report.html``. The
    outputs are one set, swapped in whole (:mod:`oad.tasks.streaming`): a refused input or a failed run
    leaves the output folder as it was.
    """
    from oad.tasks.streaming import stream as run
    from oad.tasks.streaming import summary_lines

    result = run(cfg)
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
def extract(cfg: DictConfig) -> int | None:
    """Extract per-chunk features of a folder of videos. Configuration: configs/extract.yaml.

        oad-extract videos=<folder> output=<dir>
        oad-extract videos=<folder> output=<dir> flow=true device=cuda

    The last printed line is the summary; if any video failed (the others are done), the error line
    follows on standard error and the exit code is 1.
    """
    from oad.video.extract import extract as run

    summary = run(cfg)
    for name, error in summary.failed.items():
        print(f"FAILED {name}: {error}")
    print(summary.line())
    if not summary.ok:
        print(f"error: {summary.failure_line()}", file=sys.stderr)
        return EXIT_SOME_FAILED
    return None


@_hydra_tool("leaderboard")
def leaderboard(cfg: DictConfig) -> int | None:
    """Train and evaluate several models on the same data under the same protocol; one table.
    Configuration: configs/leaderboard.yaml.

        oad-leaderboard trainer=cpu                     # the models on the built-in data (demo size)
        oad-leaderboard trainer=gpu data=thumos14 data.root=<dir> data.layout=lstr   # paper size
        oad-leaderboard 'models=[{name: linear, model: linear, overrides: []}, {name: trn, model: trn, overrides: []}]'

        oad-leaderboard suite=robustness seeds=[20,21]       # every model on the robustness datasets, 2 seeds
        oad-leaderboard merge=[<run dir>,<run dir>]          # pieces run apart (only_models=...) as one board
        oad-leaderboard merge=[<old>,<rerun>] merge_replace=[linear]   # a model rerun after its recipe changed

    Writes leaderboard.json, leaderboard.md and leaderboard.png in the run directory (and each model's run
    in runs/<name>/). The last printed line is ``winner: <name> mAP=<value> (all protocol)`` (several
    datasets: the best mean rank), or ``below the floor (linear): ...`` when a temporal model scored at or
    below the floor on a dataset (with ``fail_below_floor=true`` an error line follows and the exit code
    is 1). When every run failed, the error line of the first failure follows on standard error and the
    exit code is 1.
    """
    from oad.console import single_console_logging
    from oad.tasks.leaderboard import format_report, last_line, merge_reports
    from oad.tasks.leaderboard import leaderboard as run

    single_console_logging()
    if cfg.get("merge"):
        report = merge_reports(list(cfg.merge), Path(cfg.output_dir), int(cfg.get("floor_bootstrap") or 0),
                               list(cfg.get("merge_replace") or []), cfg.get("only_datasets"))
    else:
        report = run(cfg)
    print(format_report(report, with_floor_line=False))
    print(f"leaderboard: {cfg.output_dir}/leaderboard.md")
    print(last_line(report))
    rows = [r for res in report.get("datasets", [report]) for r in res["rows"]]
    if rows and all("error" in r for r in rows):
        first = rows[0]
        problem = " ".join(str(first.get("error")).split())
        print(f"error: every run failed (the table in {cfg.output_dir}/leaderboard.md); the first, "
              f"{first['model']}: {problem}", file=sys.stderr)
        return EXIT_SOME_FAILED
    if report.get("below_floor") and cfg.get("fail_below_floor"):
        print(f"error: {cfg.output_dir}/leaderboard.md: {last_line(report)}", file=sys.stderr)
        return EXIT_SOME_FAILED
    return None


def prepare(argv: Sequence[str] | None = None) -> int:
    """Prepare public feature releases (``oad/data/prepare.py``): convert the OadTR pickles to the LSTR
    layout, pool per-chunk feature maps to vectors, or build per-chunk targets from temporal annotations.

        oad-prepare oadtr_to_lstr src=<OadTR folder> dst=<LSTR folder>
        oad-prepare pool src=<root>/inceptionresnetv2 dst=<root>/inceptionresnetv2_mean
        oad-prepare targets annotations=<dir> out=<root>/target_perframe lengths_from=<root>/<features>
        oad-prepare --help

    Prints the summary as JSON; returns 2 (after the error line) when the data are wrong.
    """
    from oad.data.prepare import USAGE
    from oad.data.prepare import main as run

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_reported(lambda: print(json.dumps(run(argv), indent=1)))


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
    written file last. Returns 2 (after the usage) on a wrong command line, 2 (after the error line) on a
    checkpoint it cannot convert."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = [a for a in argv if "=" not in a]
    if len(args) != 2:
        print(CONVERT_USAGE, file=sys.stderr)
        return 2
    kw = {key: _number_or_text(value) for key, value in (a.split("=", 1) for a in argv if "=" in a)}

    def run() -> None:
        from oad.checkpoint import convert_reference_checkpoint

        dataset = kw.pop("dataset", None)
        arch = kw.pop("arch", None)
        result = convert_reference_checkpoint(args[0], args[1], dataset=dataset, arch=arch, **kw)
        print(json.dumps({k: v for k, v in result.items() if k != "data_info"}, indent=2))
        print(f"wrote {args[1]} ({result['model']}, {result['num_parameters']:,} parameters)")

    return run_reported(run)
