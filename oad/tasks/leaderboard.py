"""``leaderboard(cfg)``: train and evaluate several models on the same data under the same protocol
(``configs/leaderboard.yaml``, ``tools/leaderboard.py``) and write one table.

Each entry of ``cfg.models`` is a real training run: ``configs/train.yaml`` composed with
``model=<entry.model>``, the leaderboard's data and trainer (its ``data``/``trainer`` choices and the
``data.*``/``trainer.*`` overrides of its command line, applied after the recipe as on the
``tools/train.py`` command line), ``size=<size>``, ``eval.window=<eval_window>``, ``seed=<seed>``, the
run folder ``<run dir>/runs/<name>``, then the entry's ``overrides``. The run goes through
:func:`oad.tasks.training.train`; its final weights (``last.ckpt``) are loaded back with
:func:`oad.checkpoint.load_network` and the online step (:class:`oad.online.OnlineDetector`, float32)
is timed on random features.

A run that fails (any ``Exception``: a config that does not compose, a model that does not train)
becomes a row ``{'model': name, 'error': 'Type: message'}``; the others still run.

Files in the leaderboard's run directory (rewritten after every model, so a long run shows progress):
``leaderboard.json``, ``leaderboard.md`` (rows sorted by the headline metric, failed rows last) and
``leaderboard.png`` (metric vs training time, metric vs online step latency).
"""

from __future__ import annotations

import gc
import io
import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from oad.config import CONFIG_DIR
from oad.io import atomic_write_bytes, write_json

log = logging.getLogger(__name__)

WARMUP_STEPS = 5
FORWARDED_GROUPS = ("data", "trainer")  # the leaderboard's choices (and their keys) every run gets
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

__all__ = ["compose_train", "data_name", "format_table", "leaderboard", "run_size", "time_online_step", "winner_line"]


# -- composition -------------------------------------------------------------------------------------------
def _override_key(override: str) -> str:
    return override.lstrip("+~").partition("=")[0].strip()


def _forwarded(key: str) -> bool:
    return any(key == g or key.startswith(g + ".") for g in FORWARDED_GROUPS)


def _leaderboard_runtime() -> tuple[dict, list[str]] | None:
    """The choices and the command-line overrides of the leaderboard run (Hydra's runtime), or None when
    the config was composed without it."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    choices = OmegaConf.to_container(hc.runtime.choices) if "choices" in hc.runtime else {}
    task = list(hc.overrides.task) if "task" in hc.overrides else []
    return dict(choices or {}), task


def data_name(cfg: DictConfig) -> str:
    """The leaderboard's ``data`` choice (Hydra's runtime; without it, guessed from the data node)."""
    runtime = _leaderboard_runtime()
    if runtime and runtime[0].get("data"):
        return str(runtime[0]["data"])
    source = str(OmegaConf.select(cfg, "data.source._target_", default="") or "")
    return "synthetic" if source.endswith("SyntheticSource") else "unknown"


def run_size(cfg: DictConfig) -> str:
    """The model size of every run: the leaderboard's ``size`` (``configs/size/``: it follows the data
    unless ``size=`` is given)."""
    return str(cfg.size)


def run_overrides(cfg: DictConfig, entry: dict) -> tuple[list[str], bool]:
    """The Hydra overrides of one entry's training run, and whether the leaderboard's ``data`` and
    ``trainer`` nodes must be put into the composed config instead (no Hydra runtime to read the
    leaderboard's command line from)."""
    runtime = _leaderboard_runtime()
    shared: list[str] = []
    replace_data = runtime is None
    if runtime is not None:
        choices, task = runtime
        for group in FORWARDED_GROUPS:
            if choices.get(group):
                shared.append(f"{group}={choices[group]}")
        shared += [o for o in task if _forwarded(_override_key(o)) and _override_key(o) not in FORWARDED_GROUPS]
    own = [str(o) for o in (entry.get("overrides") or [])]
    overrides = [f"model={entry['model']}", *shared]
    own_keys = {_override_key(o) for o in own}
    if "size" not in own_keys and "experiment" not in own_keys:
        overrides.append(f"size={run_size(cfg)}")
    window = cfg.get("eval_window")
    overrides += [f"eval.window={'null' if window is None else int(window)}", f"seed={int(cfg.seed)}", *own]
    return overrides, replace_data


def _compose(config_name: str, overrides: list[str]) -> DictConfig:
    """``hydra.compose`` of a config of ``configs/``: in Hydra's context when one is initialised (under
    ``@hydra.main``), else in a temporary one (as ``oad.bench.train.recipe``, without clearing a live one)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name, overrides=overrides, return_hydra_config=True)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name, overrides=overrides, return_hydra_config=True)


def compose_train(cfg: DictConfig, entry: dict, output_dir: Path) -> DictConfig:
    """The training config of one entry, with its ``hydra`` node (Hydra's runtime of the run: its recipe
    choice), outputs in ``output_dir``."""
    overrides, replace_data = run_overrides(cfg, entry)
    log.info("%s: train %s", entry["name"], " ".join(overrides))
    full = _compose("train", overrides)
    with open_dict(full):
        if replace_data:
            log.warning("no Hydra runtime to read the leaderboard's command line from: its data and trainer "
                        "nodes replace the run's (the recipe's data.* and trainer.* keys, e.g. data.batch_size "
                        "and trainer.max_epochs, are not applied)")
            for group in FORWARDED_GROUPS:
                full[group] = OmegaConf.create(OmegaConf.to_container(cfg[group], resolve=False))
        full.paths.output_dir = str(output_dir)
        full.output_dir = str(output_dir)
        full.recipe_name = str(full.hydra.runtime.choices.get("recipe"))  # recipe_name() without a runtime
    return full


class run_hydra_config:
    """Hydra's runtime of the training run while it runs (``recipe_name`` reads the recipe from it), and
    its config without the ``hydra`` node; the leaderboard's runtime is put back afterwards."""

    def __init__(self, full: DictConfig):
        self.full = full

    def __enter__(self) -> DictConfig:
        from hydra.core.hydra_config import HydraConfig

        self.saved = HydraConfig.instance().cfg
        try:
            HydraConfig.instance().set_config(self.full)
        except Exception:  # only the recipe name in the run's reports depends on it
            log.debug("could not set the run's Hydra config", exc_info=True)
        cfg = self.full
        with open_dict(cfg):
            del cfg.hydra
        return cfg

    def __exit__(self, *exc: object) -> None:
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().cfg = self.saved


# -- timing ------------------------------------------------------------------------------------------------
def time_online_step(net: Any, streams: int = 1, repeats: int = 30, warmup: int = WARMUP_STEPS,
                     device: str = "cpu", ignore_index: int | None = None, seed: int = 0) -> float:
    """Median milliseconds of one :meth:`OnlineDetector.step` of ``streams`` streams (float32) on random
    features, after ``warmup`` steps (:func:`oad.timing.round_robin`)."""
    import torch

    from oad.online.runner import OnlineDetector
    from oad.timing import device_sync, median_ms, round_robin

    dev = torch.device(device)
    det = OnlineDetector(net.to(dev), dtype=torch.float32, device=dev, ignore_index=ignore_index)
    gen = torch.Generator().manual_seed(seed)
    xs = iter(torch.randn(warmup + repeats, int(streams), det.in_dim, generator=gen).to(dev))  # a new chunk per step
    det.reset()
    times = round_robin({"step": lambda: det.step(next(xs))}, repeats, warmup=warmup, sync=device_sync(dev))
    return median_ms(times["step"])


# -- one row -----------------------------------------------------------------------------------------------
def _protocol_value(report: Any, key: str) -> float | None:
    if not isinstance(report, dict) or "error" in report or report.get(key) is None:
        return None
    return float(report[key])


def run_entry(cfg: DictConfig, entry: dict, run_dir: Path) -> dict[str, Any]:
    """Train, evaluate and time one entry; its row (exceptions propagate)."""
    import torch

    from oad.checkpoint import load_network
    from oad.tasks.training import train

    full = compose_train(cfg, entry, run_dir)
    recipe = str(full.recipe_name)
    with run_hydra_config(full) as train_cfg:
        t0 = time.perf_counter()
        result = train(train_cfg)
        train_s = time.perf_counter() - t0
    metrics = result.get("metrics")
    if not metrics:
        raise RuntimeError("the run reported no test metrics (test=false?)")
    key = metrics["metric"]
    protocols = metrics.get("protocols") or {}
    headline = _protocol_value(protocols.get("all"), key)
    if headline is None:
        raise RuntimeError(f"the run reported no 'all' protocol {key}")
    windows = protocols.get("windows")
    if isinstance(windows, dict) and "error" in windows:
        log.warning("%s: windows protocol not reported: %s", entry["name"], windows["error"])

    net, info = load_network(result["ckpt"])
    ignore_index = (info.get("data_info") or {}).get("ignore_index")
    threads = torch.get_num_threads()
    step_ms = {}
    for n in cfg.get("step_streams") or [1]:
        step_ms[str(int(n))] = time_online_step(net, int(n), int(cfg.get("step_repeats") or 30),
                                                device=str(cfg.get("step_device") or "cpu"),
                                                ignore_index=ignore_index, seed=int(cfg.seed))
    del net
    window = cfg.get("eval_window")
    return {
        "model": entry["name"],
        "model_option": entry["model"],
        "metric": key,
        key: headline,
        f"{key}_windows": _protocol_value(windows, key),
        "window": None if window is None else int(window),
        "params": int(metrics["num_parameters"]),
        "train_s": train_s,
        "step_ms": next(iter(step_ms.values())),
        "step_ms_by_streams": step_ms,
        "step_threads": threads,
        "recipe": recipe,
        "run_dir": str(run_dir),
    }


# -- results -----------------------------------------------------------------------------------------------
def _ok(row: dict) -> bool:
    return "error" not in row


def _key(result: dict) -> str:
    for row in result["rows"]:
        if _ok(row):
            return row["metric"]
    return result.get("metric") or "mAP"


def sorted_rows(result: dict) -> list[dict]:
    """Successful rows by the headline metric (best first), then the failed ones in their order."""
    key = _key(result)
    ok = sorted((r for r in result["rows"] if _ok(r)), key=lambda r: -float(r[key]))
    return ok + [r for r in result["rows"] if not _ok(r)]


def _winner(rows: Sequence[dict]) -> str | None:
    ok = [r for r in rows if _ok(r)]
    if not ok:
        return None
    key = ok[0]["metric"]
    return max(ok, key=lambda r: float(r[key]))["model"]


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(result: dict) -> str:
    """The leaderboard as a markdown table, sorted by the headline metric; failed rows last."""
    key = _key(result)
    window = result.get("window")
    head = ["rank", "model", f"{key} (all)", f"{key} (windows, L={window})", "params", "train s", "step ms",
            "recipe"]
    title = (f"Leaderboard: data {result.get('data')}, size {result.get('size')}, headline {key} on the "
             f"\"{result.get('protocol', 'all')}\" protocol; online step: float32, batch "
             f"{result.get('step_streams', [1])[0]}, {result.get('step_device', 'cpu')}.")
    lines = [
        title,
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---:" if i in (0, 2, 3, 4, 5, 6) else "---" for i in range(len(head))) + "|",
    ]
    rank = 0
    for r in sorted_rows(result):
        if _ok(r):
            rank += 1
            cells = [str(rank), r["model"], _fmt(r[key], ".4f"), _fmt(r.get(f"{key}_windows"), ".4f"),
                     f"{r['params']:,}", _fmt(r.get("train_s"), ".1f"), _fmt(r.get("step_ms"), ".3f"),
                     str(r.get("recipe", "-"))]
        else:
            err = str(r["error"]).replace("|", "\\|").replace("\n", " ")
            cells = ["-", r["model"], f"failed: {err}", "-", "-", "-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", winner_line(result)]
    return "\n".join(lines)


def winner_line(result: dict) -> str:
    """``winner: oadtr mAP=0.5163 (all protocol)`` (``winner: none`` when every run failed)."""
    name = result.get("winner")
    if name is None:
        return "winner: none (every run failed)"
    row = next(r for r in result["rows"] if r["model"] == name)
    key = row["metric"]
    return f"winner: {name} {key}={row[key]:.4f} ({result.get('protocol', 'all')} protocol)"


def plot_leaderboard(result: dict, path: str | Path) -> Path:
    """Two scatter panels of the successful rows: metric vs training time, metric vs online step latency."""
    from oad.plots import _figure

    key = _key(result)
    rows = [r for r in result["rows"] if _ok(r)]
    fig = _figure(figsize=(10, 4.2))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, field, label in ((axes[0], "train_s", "training time (s)"),
                             (axes[1], "step_ms", "online step latency (ms, batch 1, float32)")):
        for r in rows:
            x, y = r.get(field), r[key]
            if x is None:
                continue
            ax.scatter([x], [y], s=36, color="tab:red" if r["model"] == result.get("winner") else "tab:blue")
            ax.annotate(r["model"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=9)
        ax.set_xlabel(label)
        if rows and all((r.get(field) or 0) > 0 for r in rows) and len(rows) > 1:
            xs = [r[field] for r in rows]
            if max(xs) / min(xs) > 20:
                from matplotlib.ticker import LogFormatter, NullFormatter

                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
                ax.xaxis.set_minor_formatter(NullFormatter())
        ax.margins(x=0.15, y=0.1)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(f"{key} (all protocol)")
    fig.suptitle(f"leaderboard: data {result.get('data')}, size {result.get('size')}")
    failed = [r["model"] for r in result["rows"] if not _ok(r)]
    if failed:
        fig.text(0.01, 0.01, "failed: " + ", ".join(failed), fontsize=8, color="tab:red")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_files(result: dict, out: Path) -> None:
    write_json(out / "leaderboard.json", result)
    atomic_write_bytes(out / "leaderboard.md", (format_table(result) + "\n").encode())
    try:
        plot_leaderboard(result, out / "leaderboard.png")
    except Exception:  # a figure must not lose the table
        log.exception("leaderboard.png could not be drawn")


def _entries(cfg: DictConfig) -> list[dict]:
    entries = []
    for i, e in enumerate(cfg.models or []):
        e = OmegaConf.to_container(e, resolve=True) if isinstance(e, DictConfig) else dict(e)
        if not e.get("model"):
            raise ValueError(f"models[{i}]: no 'model' (a configs/model option)")
        e.setdefault("name", e["model"])
        e["name"] = str(e["name"])
        if not _NAME.match(e["name"]):
            raise ValueError(f"models[{i}]: name {e['name']!r} is not a plain label (letters, digits, . _ -)")
        entries.append(e)
    names = [e["name"] for e in entries]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"model names must be unique (they name the run folders): {dup}")
    if not entries:
        raise ValueError("models: empty list")
    return entries


def leaderboard(cfg: DictConfig) -> dict[str, Any]:
    """Train, evaluate and time every entry of ``cfg.models``; write and return the leaderboard."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = _entries(cfg)
    window = cfg.get("eval_window")
    result: dict[str, Any] = {
        "task": "leaderboard",
        "data": data_name(cfg),
        "size": run_size(cfg),
        "protocol": "all",
        "window": None if window is None else int(window),
        "seed": int(cfg.seed),
        "step_streams": [int(n) for n in (cfg.get("step_streams") or [1])],
        "step_repeats": int(cfg.get("step_repeats") or 30),
        "step_device": str(cfg.get("step_device") or "cpu"),
        "rows": [],
        "winner": None,
    }
    for i, entry in enumerate(entries):
        run_dir = out / "runs" / entry["name"]
        log.info("leaderboard %d/%d: %s (model=%s) -> %s", i + 1, len(entries), entry["name"], entry["model"],
                 run_dir)
        try:
            row = run_entry(cfg, entry, run_dir)
            log.info("%s: %s=%.4f, %.1f s, step %.3f ms", entry["name"], row["metric"], row[row["metric"]],
                     row["train_s"], row["step_ms"])
        except Exception as e:  # one model's failure is its row, the others still run
            log.exception("%s (model=%s) failed", entry["name"], entry["model"])
            row = {"model": entry["name"], "model_option": entry["model"],
                   "error": f"{type(e).__name__}: {e}".strip(), "run_dir": str(run_dir)}
        result["rows"].append(row)
        result["winner"] = _winner(result["rows"])
        result["metric"] = _key(result)
        write_files(result, out)
        gc.collect()
    return result
