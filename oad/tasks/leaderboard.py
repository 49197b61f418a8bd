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

Seeds (``seeds: [20, 21]``): every entry is trained once per seed and its row holds the mean (and each
seed's figure). Datasets (``datasets: [{name, overrides}, ...]``, e.g. ``suite=robustness``): the
whole leaderboard once per dataset, the dataset's overrides (``data.*``, or ``data=<option>`` and its
keys) applied to every run after the leaderboard's own data choice and ``data.*`` overrides (a dataset's
``data=<option>`` replaces the leaderboard's choice); one table per dataset and a summary of each
model's rank and margin over the floor on each.

The floor (``floor: linear``, an entry name): every other model is a temporal model, which sees the
current chunk too and should never score below a linear map of it; a row at or below the floor's figure
is flagged in its table, in the summary and in the last printed line (``fail_below_floor: true`` makes
that an error exit).

Files in the leaderboard's run directory (rewritten after every model, so a long run shows progress):
``leaderboard.json``, ``leaderboard.md`` (rows sorted by the headline metric, failed rows last; one table
per dataset, then the summary) and ``leaderboard.png`` (metric vs training time, metric vs online step
latency; ``leaderboard_<dataset>.png`` per dataset).
"""

from __future__ import annotations

import gc
import io
import json
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

__all__ = ["compose_train", "data_name", "format_table", "leaderboard", "merge_reports", "run_size",
           "time_online_step", "winner_line"]


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


def run_overrides(cfg: DictConfig, entry: dict, dataset: dict | None = None, seed: int | None = None
                  ) -> tuple[list[str], bool]:
    """The Hydra overrides of one entry's training run (on ``dataset``, with ``seed``), and whether the
    leaderboard's ``data`` and ``trainer`` nodes must be put into the composed config instead (no Hydra
    runtime to read the leaderboard's command line from)."""
    runtime = _leaderboard_runtime()
    shared: list[str] = []
    replace_data = runtime is None
    data_overrides = [str(o) for o in ((dataset or {}).get("overrides") or [])]
    own_data_choice = any(_override_key(o) == "data" for o in data_overrides)
    if runtime is not None:
        choices, task = runtime
        for group in FORWARDED_GROUPS:
            if choices.get(group) and not (group == "data" and own_data_choice):
                shared.append(f"{group}={choices[group]}")
        shared += [o for o in task if _forwarded(_override_key(o)) and _override_key(o) not in FORWARDED_GROUPS]
    shared += data_overrides
    replace_data = replace_data and not data_overrides
    own = [str(o) for o in (entry.get("overrides") or [])]
    overrides = [f"model={entry['model']}", *shared]
    own_keys = {_override_key(o) for o in own}
    if "size" not in own_keys and "experiment" not in own_keys:
        overrides.append(f"size={run_size(cfg)}")
    window = cfg.get("eval_window")
    overrides += [f"eval.window={'null' if window is None else int(window)}",
                  f"seed={int(cfg.seed if seed is None else seed)}", *own]
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


def compose_train(cfg: DictConfig, entry: dict, output_dir: Path, dataset: dict | None = None,
                  seed: int | None = None) -> DictConfig:
    """The training config of one entry (on ``dataset``, with ``seed``), with its ``hydra`` node (Hydra's
    runtime of the run: its recipe choice), outputs in ``output_dir``."""
    overrides, replace_data = run_overrides(cfg, entry, dataset, seed)
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


def run_entry(cfg: DictConfig, entry: dict, run_dir: Path, dataset: dict | None = None,
              seed: int | None = None) -> dict[str, Any]:
    """Train, evaluate and time one entry (on ``dataset``, with ``seed``); its row (exceptions propagate)."""
    import torch

    from oad.checkpoint import load_network
    from oad.tasks.training import train

    full = compose_train(cfg, entry, run_dir, dataset, seed)
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
        "ignore_index": ignore_index,
        "unseen_classes": list((metrics.get("class_coverage") or {}).get("unseen_in_training") or []),
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


def ran_size(result: dict) -> str:
    """The size the rows ran, read from their recipes (``<model>_<size>``): one size, or ``mixed``."""
    sizes = {str(r["recipe"]).rpartition("_")[2] for r in result["rows"] if _ok(r) and r.get("recipe")}
    return sizes.pop() if len(sizes) == 1 else ("mixed (see the recipe column)" if sizes else str(result.get("size")))


def format_table(result: dict) -> str:
    """One dataset's leaderboard as a markdown table, sorted by the headline metric; failed rows last.
    With a floor, a column of each row's margin over it (flagged when not above)."""
    key = _key(result)
    window = result.get("window")
    seeds = result.get("seeds") or [result.get("seed")]
    floor = result.get("floor")
    head = ["rank", "model", f"{key} (all)", f"{key} (windows, L={window})", "params", "train s", "step ms",
            "recipe"]
    if len(seeds) > 1:
        head.insert(3, "per seed")
    if floor:
        head.insert(3, f"vs {floor}")
    title = (f"Leaderboard: data {result.get('data')}, size {ran_size(result)}, headline {key} on the "
             f"\"{result.get('protocol', 'all')}\" protocol"
             + (f" (mean of seeds {', '.join(map(str, seeds))})" if len(seeds) > 1 else f", seed {seeds[0]}")
             + f"; online step: float32, batch {result.get('step_streams', [1])[0]}, "
             f"{result.get('step_device', 'cpu')}.")
    numeric = {"rank", f"{key} (all)", f"{key} (windows, L={window})", "params", "train s", "step ms", f"vs {floor}"}
    lines = [title, "", "| " + " | ".join(head) + " |",
             "|" + "|".join("---:" if h in numeric else "---" for h in head) + "|"]
    rank = 0
    for r in sorted_rows(result):
        if _ok(r):
            rank += 1
            cells = {"rank": str(rank), "model": r["model"], f"{key} (all)": _fmt(r[key], ".4f"),
                     f"{key} (windows, L={window})": _fmt(r.get(f"{key}_windows"), ".4f"),
                     "params": f"{r['params']:,}", "train s": _fmt(r.get("train_s"), ".1f"),
                     "step ms": _fmt(r.get("step_ms"), ".3f"), "recipe": str(r.get("recipe", "-")),
                     "per seed": " / ".join(_fmt(v, ".4f") for v in (r.get("per_seed") or {}).values()),
                     f"vs {floor}": _margin_cell(r, floor)}
        else:
            err = str(r["error"]).replace("|", "\\|").replace("\n", " ")
            cells = {h: "-" for h in head} | {"model": r["model"], f"{key} (all)": f"failed: {err}"}
        lines.append("| " + " | ".join(cells[h] for h in head) + " |")
    lines.append("")
    interval = next((r["margin_interval"] for r in result["rows"] if _ok(r) and r.get("margin_interval")), None)
    if interval:
        lines.append(f"[low, high] after a margin: its {interval['level']:.0%} interval over the test videos (paired "
                     f"bootstrap of the {interval['num_videos']} videos, {interval['num_resamples']} resamples, seeds "
                     "averaged): how much the margin depends on the videos drawn, not on the training seed")
    unseen = sorted({c for r in result["rows"] if _ok(r) for c in r.get("unseen_classes") or []})
    if unseen:  # above the winner line, which stays the table's last line
        lines.append(f"caution: {len(unseen)} scored test classes have no training chunk ({', '.join(unseen)}): "
                     "their AP measures guesses (each run's metrics.json: class_coverage)")
    lines.append(winner_line(result))
    return "\n".join(lines)


def _margin_cell(row: dict, floor: str | None) -> str:
    if row.get("margin") is None:
        return "floor" if row["model"] == floor else "-"
    return (f"{row['margin']:+.4f}" + _interval_text(row.get("margin_interval"))
            + ("" if row["margin"] > 0 else " **below the floor**"))


def _datasets_text(n: int) -> str:
    return f"{n} dataset" + ("" if n == 1 else "s")


def _interval_text(interval: dict | None) -> str:
    return "" if not interval else f" [{interval['low']:+.4f}, {interval['high']:+.4f}]"


def floor_margins(result: dict) -> None:
    """Each successful row's margin over the floor row (``result['floor']``), in place; the rows at or
    below it listed in ``result['below_floor']``. With ``result['floor_bootstrap'] = R > 0`` and the per-frame
    mAP as the metric, each margin also gets ``margin_interval``: the 95 % interval of a paired bootstrap
    over the test videos (:func:`margin_interval`), computed once per row and floor (a row keeps its interval
    while the floor row it was computed against stays the same; a merge that replaces the floor recomputes
    it)."""
    floor, key = result.get("floor"), _key(result)
    base = next((r for r in result["rows"] if r["model"] == floor and _ok(r)), None)
    result["below_floor"] = []
    loaded: dict[Path, dict] = {}  # predictions read once per table (the floor's serve every row)
    for r in result["rows"]:
        r.pop("margin", None)
        if base is None or not _ok(r) or r is base:
            _drop_interval(r)
            continue
        r["margin"] = float(r[key]) - float(base[key])
        if result.get("floor_bootstrap") and key == "mAP":
            against = f"{base.get('run_dir')} {float(base[key])!r} {int(result['floor_bootstrap'])}"
            if r.get("margin_interval_floor") != against:
                r["margin_interval"] = margin_interval(r, base, int(result["floor_bootstrap"]), loaded=loaded)
                r["margin_interval_floor"] = against
        else:
            _drop_interval(r)
        if r["margin"] <= 0:
            result["below_floor"].append({"model": r["model"], "data": result.get("data"), "margin": r["margin"],
                                          "interval": r.get("margin_interval")})


def _drop_interval(row: dict) -> None:
    row.pop("margin_interval", None)
    row.pop("margin_interval_floor", None)


def margin_interval(row: dict, base: dict, num_resamples: int, level: float = 0.95,
                    loaded: dict[Path, dict] | None = None) -> dict | None:
    """How much ``row``'s margin over ``base`` depends on which test videos were drawn: a paired bootstrap of
    the per-frame mAP difference over the test videos of their runs' ``predictions.pkl``, the seeds
    averaged (:func:`oad.metrics.bootstrap_map_difference`). None (and a warning) when a run has no
    predictions or the two scored other videos. ``loaded``: predictions already read, by path (filled in)."""
    from oad.io import load_predictions
    from oad.metrics import bootstrap_map_difference

    mine, theirs = _seed_run_dirs(row), _seed_run_dirs(base)
    try:
        if sorted(mine) != sorted(theirs):
            raise ValueError(f"seeds {sorted(mine)} against the floor's {sorted(theirs)}")
        runs = []
        for seed in mine:
            a, b = (_cached(loaded, Path(d[seed]) / "predictions.pkl", load_predictions) for d in (mine, theirs))
            runs.append((a["perframe_pred_scores"], b["perframe_pred_scores"], a["perframe_gt_targets"]))
        if "ignore_index" in row:
            ignore = row["ignore_index"]
        else:  # not recorded (an older leaderboard.json): the evaluation's default, Ambiguous of THUMOS's 22
            ignore = 21 if next(iter(runs[0][2].values())).shape[1] == 22 else None
        out = bootstrap_map_difference(runs, ignore_index=ignore, num_resamples=num_resamples, level=level)
    except (OSError, ValueError) as e:
        log.warning("%s: no interval for its margin over the floor: %s", row["model"], e)
        return None
    return {k: out[k] for k in ("low", "high", "level", "p_not_above", "num_videos", "num_resamples")}


def _cached(cache: dict | None, path: Path, load: Any) -> Any:
    """``load(path)``, read once per ``cache`` (None: no cache)."""
    if cache is None:
        return load(path)
    if path not in cache:
        cache[path] = load(path)
    return cache[path]


def _seed_run_dirs(row: dict) -> dict[str, str]:
    """Each seed's run folder of a row, by the leaderboard's layout: ``run_dir`` itself for one seed,
    ``run_dir/seed<s>`` for several (:func:`_run_dir`)."""
    seeds = list(row.get("per_seed") or {})
    if len(seeds) > 1:
        return {s: str(_run_dir(Path(row["run_dir"]), int(s), several=True)) for s in seeds}
    return {seeds[0] if seeds else "-": row["run_dir"]}


def _run_dir(entry_dir: Path, seed: int, several: bool) -> Path:
    """Where one seed of an entry runs: the entry's folder, or its ``seed<s>`` subfolder with several seeds."""
    return entry_dir / f"seed{seed}" if several else entry_dir


def floor_line(below: list[dict], floor: str | None) -> str | None:
    """``below the floor (linear): oadtr on synthetic by 0.0123, ...`` or None when no model is."""
    if not below:
        return None
    return f"below the floor ({floor}): " + ", ".join(
        f"{b['model']} on {b['data']} by {-b['margin']:.4f}"
        + (f" (margin interval{_interval_text(b.get('interval'))})" if b.get("interval") else "") for b in below)


def winner_line(result: dict) -> str:
    """``winner: oadtr mAP=0.5163 (all protocol)`` (``winner: none`` when every run failed)."""
    name = result.get("winner")
    if name is None:
        return "winner: none (every run failed)" if result["rows"] else "winner: none (nothing run yet)"
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
    fig.suptitle(f"leaderboard: data {result.get('data')}, size {ran_size(result)}")
    failed = [r["model"] for r in result["rows"] if not _ok(r)]
    if failed:
        fig.text(0.01, 0.01, "failed: " + ", ".join(failed), fontsize=8, color="tab:red")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def format_report(report: dict, with_floor_line: bool = True) -> str:
    """The whole leaderboard as markdown: one table per dataset, then (several datasets) the summary; the
    floor line last when a model is at or below the floor (``with_floor_line``)."""
    parts = [format_table(r) for r in report["datasets"]] if "datasets" in report else [format_table(report)]
    if "summary" in report:
        parts.append(format_summary(report))
    line = floor_line(report.get("below_floor") or [], report.get("floor")) if with_floor_line else None
    return "\n\n".join(parts) + (f"\n{line}" if line else "")


def summarize(report: dict) -> dict[str, Any]:
    """Per model: its rank and margin over the floor on each dataset, its mean rank (failed rows rank last)."""
    models: dict[str, dict[str, Any]] = {}
    for res in report["datasets"]:
        ranked = [r for r in sorted_rows(res) if _ok(r)]
        for r in res["rows"]:
            m = models.setdefault(r["model"], {"model": r["model"], "ranks": {}, "margins": {}, "values": {}})
            if _ok(r):
                m["ranks"][res["data"]] = ranked.index(r) + 1
                m["values"][res["data"]] = float(r[r["metric"]])
                m["margins"][res["data"]] = r.get("margin")
            else:
                m["ranks"][res["data"]] = None
    n = len(report["datasets"])
    for m in models.values():
        ranks = [v if v is not None else len(models) + 1 for v in m["ranks"].values()]
        m["mean_rank"] = sum(ranks) / len(ranks) if len(ranks) == n else None
    order = sorted(models.values(), key=lambda m: (m["mean_rank"] is None, m["mean_rank"] or 0, m["model"]))
    return {"models": order, "winner": order[0]["model"] if order and order[0]["mean_rank"] is not None else None}


def format_summary(report: dict) -> str:
    names = [r["data"] for r in report["datasets"]]
    floor = report.get("floor")
    head = ["model", "mean rank", *[f"{d}: rank, vs {floor}" if floor else f"{d}: rank" for d in names]]
    lines = [f"Summary over {_datasets_text(len(names))}: each model's rank (1 = best) and its margin over the floor "
             f"({floor}) on each.", "", "| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * len(names)]
    for m in report["summary"]["models"]:
        cells = [m["model"], _fmt(m["mean_rank"], ".2f")]
        for d in names:
            rank, margin = m["ranks"].get(d), m["margins"].get(d)
            if d not in m["ranks"]:  # the files are rewritten after every run: this one has not run yet
                cells.append("not run yet")
            elif rank is None:
                cells.append("failed")
            else:
                cells.append(f"{rank}" + ("" if margin is None else
                                          f", {margin:+.4f}" + ("" if margin > 0 else " **below**")))
        lines.append("| " + " | ".join(cells) + " |")
    winner = report["summary"]["winner"]
    lines += ["", f"winner: {winner} (best mean rank over {_datasets_text(len(names))})" if winner else "winner: none"]
    return "\n".join(lines)


def write_files(report: dict, out: Path) -> None:
    write_json(out / "leaderboard.json", report)
    atomic_write_bytes(out / "leaderboard.md", (format_report(report) + "\n").encode())
    results = report["datasets"] if "datasets" in report else [report]
    for res in results:
        name = "leaderboard.png" if res is report else f"leaderboard_{res['data']}.png"
        try:
            plot_leaderboard(res, out / name)
        except Exception:  # a figure must not lose the table
            log.exception("%s could not be drawn", name)


def last_line(report: dict) -> str:
    """The last printed line: the floor line when a model is at or below the floor, else the winner."""
    line = floor_line(report.get("below_floor") or [], report.get("floor"))
    if line:
        return line
    if "summary" in report:
        w = report["summary"]["winner"]
        return f"winner: {w} (best mean rank over {_datasets_text(len(report['datasets']))})" if w else "winner: none"
    return winner_line(report)


def merge_reports(paths: Sequence[str | Path], out: Path, floor_bootstrap: int = 0,
                  replace: Sequence[str] = (), only_datasets: Sequence[str] | None = None) -> dict[str, Any]:
    """One leaderboard from pieces run apart (``only_models`` / ``only_datasets``, one job each): the rows of
    every piece's ``leaderboard.json`` by dataset, then the margins over the floor (with their intervals,
    read from the runs' predictions), the winners and the summary recomputed; written to ``out`` like a
    leaderboard run. Nothing is trained.

    Pieces must agree: the same floor, protocol and seeds on a dataset, and a model in several pieces (the
    floor, run in each) the same figure in each, since a run is deterministic for its seed; otherwise a
    ``ValueError`` names the two files. The models named in ``replace`` are the exception, for a model rerun
    after its recipe changed: their rows come from the last piece (in ``paths`` order) that holds them, and
    the report lists what was replaced (``replaced``). ``only_datasets`` keeps those datasets of the pieces
    (an unknown name is an error that lists the known ones).
    """
    if not paths:
        raise ValueError("merge: no leaderboard given")
    replace = [str(m) for m in replace]
    replaced: list[dict[str, str]] = []
    merged: dict[str, dict] = {}
    origin: dict[tuple[str, str], Path] = {}  # (dataset, model) -> the file its row came from
    first_file: dict[str, Path] = {}
    floor, seeds, multi = None, None, False
    for p in paths:
        f = Path(p)
        f = f / "leaderboard.json" if f.is_dir() else f
        if not f.is_file():
            raise ValueError(f"merge: {f}: no such file (give a leaderboard's run directory or its leaderboard.json)")
        try:
            piece = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"merge: {f}: not a readable leaderboard.json ({type(e).__name__}: {e})") from e
        if not isinstance(piece, dict) or piece.get("task") != "leaderboard":
            raise ValueError(f"merge: {f}: not a leaderboard (no task: leaderboard)")
        multi = multi or "datasets" in piece
        for res in piece.get("datasets", [piece]):
            name = res["data"]
            if name not in merged:
                merged[name] = json.loads(json.dumps(res)) | {"rows": []}
                first_file[name] = f
            for k in ("floor", "seeds", "protocol", "window", "size"):
                if res.get(k) != merged[name].get(k):
                    raise ValueError(f"merge: {name}: {k} {res.get(k)!r} in {f} but {merged[name].get(k)!r} "
                                     f"in {first_file[name]}")
            for row in res["rows"]:
                have = next((r for r in merged[name]["rows"] if r["model"] == row["model"]), None)
                if have is None:
                    merged[name]["rows"].append(row)
                    origin[(name, row["model"])] = f
                elif row["model"] in replace:
                    rows = merged[name]["rows"]
                    rows[rows.index(have)] = row
                    if row.get(row.get("metric", "mAP")) != have.get(have.get("metric", "mAP")):
                        replaced.append({"data": name, "model": row["model"], "from": str(f),
                                         "instead_of": str(origin[(name, row["model"])])})
                    origin[(name, row["model"])] = f
                elif _ok(have) and _ok(row) and abs(float(have[have["metric"]]) - float(row[row["metric"]])) > 1e-9:
                    raise ValueError(f"merge: {name}: {row['model']} scored {row[row['metric']]:.6f} in {f} but "
                                     f"{have[have['metric']]:.6f} in {origin[(name, row['model'])]}: not the same runs")
            floor = floor or res.get("floor")
            seeds = seeds or res.get("seeds")
    if only_datasets:
        kept = _only([{"name": n} for n in merged], only_datasets, "only_datasets", "datasets of the pieces")
        merged = {d["name"]: merged[d["name"]] for d in kept}
        replaced = [r for r in replaced if r["data"] in merged]
    unknown = sorted(set(replace) - {m for (_, m) in origin})
    if unknown:
        raise ValueError(f"merge: replace names {unknown}, which no piece holds; models: "
                         f"{sorted({m for (_, m) in origin})}")
    results = list(merged.values())
    for res in results:
        res["floor_bootstrap"] = int(floor_bootstrap)
        res["winner"] = _winner(res["rows"])
        res["metric"] = _key(res)
        floor_margins(res)
    if multi or len(results) > 1:
        report = {"task": "leaderboard", "floor": floor, "seeds": seeds, "datasets": results,
                  "below_floor": [b for r in results for b in r["below_floor"]]}
        report["summary"] = summarize(report)
    else:
        report = results[0]
    report["merged_from"] = [str(p) for p in paths]
    if replace:
        report["replaced"] = replaced
        for r in replaced:
            log.info("merge: %s on %s from %s (replacing %s)", r["model"], r["data"], r["from"], r["instead_of"])
    out.mkdir(parents=True, exist_ok=True)
    write_files(report, out)
    return report


def _datasets(cfg: DictConfig) -> list[dict] | None:
    """``cfg.datasets`` as ``[{name, overrides}]``, or None for the leaderboard's own data alone."""
    raw = cfg.get("datasets")
    if not raw:
        return None
    out = []
    for i, d in enumerate(raw):
        d = OmegaConf.to_container(d, resolve=True) if isinstance(d, DictConfig) else dict(d)
        if not d.get("name") or not _NAME.match(str(d["name"])):
            raise ValueError(f"datasets[{i}]: a plain 'name' (letters, digits, . _ -) is required, got {d.get('name')!r}")
        out.append({"name": str(d["name"]), "overrides": [str(o) for o in d.get("overrides") or []],
                     "about": d.get("about")})
    names = [d["name"] for d in out]
    if len(set(names)) != len(names):
        raise ValueError(f"dataset names must be unique (they name the run folders): {names}")
    return _only(out, cfg.get("only_datasets"), "only_datasets", "datasets")


def _only(items: list[dict], keep: Sequence[str] | None, key: str, what: str) -> list[dict]:
    """The ``items`` named in ``keep`` (in their configured order), all of them for None; an unknown name is
    an error listing the known ones (a suite run in pieces, e.g. one dataset or model per job)."""
    if keep is None:
        return items
    keep = [str(k) for k in keep]
    names = [i["name"] for i in items]
    unknown = [k for k in keep if k not in names]
    if unknown or not keep:
        raise ValueError(f"{key}: {unknown or 'an empty list'} not among the {what} {names}")
    return [i for i in items if i["name"] in keep]


def _mean_row(rows: list[dict], seeds: list[int]) -> dict[str, Any]:
    """One entry's row over its seeds: the mean of the figures, each seed's headline, the first seed's
    step timing; an error row when any seed failed."""
    failed = [r for r in rows if not _ok(r)]
    if failed and len(rows) == 1:
        return failed[0]
    if failed:
        return {**failed[0], "error": "; ".join(f"seed {s}: {r['error']}" for s, r in zip(seeds, rows) if not _ok(r))}
    first, key = rows[0], rows[0]["metric"]
    row = dict(first)
    for k in (key, f"{key}_windows", "train_s"):
        vals = [r.get(k) for r in rows]
        row[k] = None if any(v is None for v in vals) else sum(vals) / len(vals)
    row["per_seed"] = {str(s): r[key] for s, r in zip(seeds, rows)}
    row["run_dir"] = str(Path(first["run_dir"]).parent) if len(rows) > 1 else first["run_dir"]
    return row


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
    return _only(entries, cfg.get("only_models"), "only_models", "models")


def leaderboard(cfg: DictConfig) -> dict[str, Any]:
    """Train, evaluate and time every entry of ``cfg.models`` (per seed, per dataset); write and return the
    leaderboard: one dataset's result (``rows``, ``winner``, ...), or ``{'datasets': [...], 'summary'}``."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = _entries(cfg)
    datasets = _datasets(cfg)
    seeds = [int(s) for s in (cfg.get("seeds") or [cfg.seed])]
    floor = cfg.get("floor")
    if floor and floor not in {e["name"] for e in entries}:
        log.warning("floor %r is not one of the models: no floor margins", floor)
        floor = None
    window = cfg.get("eval_window")

    def new_result(data: str) -> dict[str, Any]:
        return {"task": "leaderboard", "data": data, "size": run_size(cfg), "protocol": "all",
                "window": None if window is None else int(window), "seed": seeds[0], "seeds": seeds,
                "floor": floor, "step_streams": [int(n) for n in (cfg.get("step_streams") or [1])],
                "step_repeats": int(cfg.get("step_repeats") or 30), "step_device": str(cfg.get("step_device") or "cpu"),
                "rows": [], "winner": None, "below_floor": [],
                "floor_bootstrap": int(cfg.get("floor_bootstrap") or 0)}

    if datasets is None:
        report = new_result(data_name(cfg))
        results = [(None, report, out / "runs")]
    else:
        report = {"task": "leaderboard", "floor": floor, "seeds": seeds, "datasets": [], "below_floor": []}
        results = []
        for d in datasets:
            res = new_result(d["name"]) | {"dataset_overrides": d["overrides"], "about": d["about"]}
            report["datasets"].append(res)
            results.append((d, res, out / "runs" / d["name"]))

    total = len(results) * len(entries) * len(seeds)
    done = 0
    for dataset, result, runs in results:
        for entry in entries:
            rows = []
            for seed in seeds:
                done += 1
                run_dir = _run_dir(runs / entry["name"], seed, several=len(seeds) > 1)
                log.info("leaderboard %d/%d: %s (model=%s)%s seed %d -> %s", done, total, entry["name"],
                         entry["model"], f" on {dataset['name']}" if dataset else "", seed, run_dir)
                try:
                    row = run_entry(cfg, entry, run_dir, dataset, seed)
                    log.info("%s: %s=%.4f, %.1f s, step %.3f ms", entry["name"], row["metric"], row[row["metric"]],
                             row["train_s"], row["step_ms"])
                except Exception as e:  # one model's failure is its row, the others still run
                    log.exception("%s (model=%s) failed", entry["name"], entry["model"])
                    row = {"model": entry["name"], "model_option": entry["model"],
                           "error": f"{type(e).__name__}: {e}".strip(), "run_dir": str(run_dir)}
                rows.append(row)
                gc.collect()
            result["rows"].append(_mean_row(rows, seeds))
            result["winner"] = _winner(result["rows"])
            result["metric"] = _key(result)
            floor_margins(result)
            if datasets is not None:
                report["below_floor"] = [b for r in report["datasets"] for b in r["below_floor"]]
                report["summary"] = summarize(report)
            write_files(report, out)
    return report
