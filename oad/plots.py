"""Figures for evaluation reports: a per-video score timeline and a per-class AP bar chart.

matplotlib (Agg backend, no display needed) is imported inside the functions, so that importing
``oad.metrics`` or this module stays light. Colours are fixed per class index (``tab20`` cycled), so the
same class has the same colour in its ground-truth band, its score line and its event bar.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["class_color", "plot_per_class_ap", "plot_timeline"]


def _figure(**kwargs: Any) -> Any:
    """A matplotlib ``Figure`` on the Agg canvas, without pyplot: no global backend switch, no window, and
    nothing to close (the figure is freed with its last reference)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def class_color(class_index: int) -> tuple[float, float, float, float]:
    """RGBA colour of a class, the same in every figure.

    Classes 1..10 take the saturated ``tab20`` colours, 11..20 their light variants (so 20 actions get 20
    distinct colours); higher indices cycle; background is grey.
    """
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    if class_index <= 0:
        return cmap(14)  # grey
    i = (class_index - 1) % 20
    return cmap((i % 10) * 2 + i // 10)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of True as ``(start, end)`` chunk indices, end exclusive."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def plot_timeline(
    scores: np.ndarray,
    targets: np.ndarray | None,
    class_names: Sequence[str],
    path: str | Path,
    fps: float = 4.0,
    top_k: int = 3,
    title: str | None = None,
    ignore_index: int | None = 21,
    events: Sequence[Mapping[str, Any]] | None = None,
    background_index: int = 0,
) -> Path:
    """Per-chunk scores of one video over time, against its ground truth; written as a PNG.

    Chunk ``t`` covers ``[t / fps, (t + 1) / fps)`` seconds; its score is drawn at the chunk centre. The
    figure shows: shaded bands for the ground-truth action instances (one colour per class, hatched grey for
    the ignore class), a score line for every ground-truth action class present plus the ``top_k`` action
    classes with the highest maximum score, a legend with the class names and, when ``events`` are given,
    one bar per detected event in a strip above the scores.

    Args:
        scores: ``(T, C)`` per-chunk scores (probabilities).
        targets: ``(T, C)`` per-chunk targets, or None when there is no ground truth (nothing shaded).
        class_names: the C class names.
        path: output PNG path (parent folders are created).
        fps: chunks per second (x axis in seconds).
        top_k: number of highest-scoring action classes drawn besides the ground-truth classes.
        title: figure title.
        ignore_index: ignore class column (never drawn as a line), or None.
        events: optional list of ``{'class_name', 'start_s', 'end_s'}`` dicts (e.g. from an event detector).
        background_index: background class column (never drawn as a line).

    Returns:
        The path written.
    """
    scores = np.asarray(scores, dtype=np.float64)
    has_gt = targets is not None
    targets = np.zeros_like(scores) if targets is None else np.asarray(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(f"plot_timeline: scores {scores.shape} and targets {targets.shape} must be the same (T, C)")
    num_chunks, num_classes = scores.shape
    if len(class_names) != num_classes:
        raise ValueError(f"plot_timeline: {len(class_names)} class names for {num_classes} columns")
    actions = [c for c in range(num_classes) if c not in (background_index, ignore_index)]
    gt_classes = [c for c in actions if (targets[:, c] > 0).any()]
    top = sorted(actions, key=lambda c: -scores[:, c].max())[: max(top_k, 0)] if num_chunks else []
    shown = sorted(set(gt_classes) | set(top))

    from matplotlib.patches import Patch

    duration = num_chunks / fps
    width = float(np.clip(duration / 12.0, 9.0, 24.0))
    if events:
        fig = _figure(figsize=(width, 5.2))
        ax_ev, ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 5], "hspace": 0.05})
    else:
        fig = _figure(figsize=(width, 4.5))
        ax = fig.subplots()
        ax_ev = None
    for c in gt_classes:
        for start, end in _runs(targets[:, c] > 0):
            ax.axvspan(start / fps, end / fps, color=class_color(c), alpha=0.18, linewidth=0)
    if ignore_index is not None and 0 <= ignore_index < num_classes:
        for start, end in _runs(targets[:, ignore_index] > 0):
            ax.axvspan(start / fps, end / fps, facecolor="none", edgecolor="0.6", hatch="//", linewidth=0)
    times = (np.arange(num_chunks) + 0.5) / fps
    for c in shown:
        in_gt = c in gt_classes
        ax.plot(
            times,
            scores[:, c],
            color=class_color(c),
            linewidth=1.8 if in_gt else 1.2,
            linestyle="-" if in_gt or not has_gt else "--",
            label=f"{class_names[c]}" + ("" if in_gt or not has_gt else " (no GT)"),
        )
    handles, labels = ax.get_legend_handles_labels()
    if has_gt:
        handles.append(Patch(facecolor="0.5", alpha=0.25, label="shaded: ground truth"))
        labels.append("shaded: ground truth")
    if ignore_index is not None and 0 <= ignore_index < num_classes and (targets[:, ignore_index] > 0).any():
        handles.append(Patch(facecolor="none", edgecolor="0.6", hatch="//"))
        labels.append(f"hatched: {class_names[ignore_index]} (not scored)")
    # Outside the axes, right of the plot, so it never hides a score peak.
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_xlim(0, max(duration, 1.0 / fps))
    ax.set_ylim(0, 1.05 if scores.size == 0 or scores.max() <= 1.0 else scores.max() * 1.05)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("score")
    ax.grid(True, axis="y", alpha=0.3)
    if ax_ev is not None:
        name_to_index = {n: i for i, n in enumerate(class_names)}
        ev_classes = sorted({e["class_name"] for e in events})
        for e in events:
            row = ev_classes.index(e["class_name"])
            color = class_color(name_to_index.get(e["class_name"], 0))
            ax_ev.broken_barh([(e["start_s"], e["end_s"] - e["start_s"])], (row - 0.4, 0.8), color=color)
        ax_ev.set_yticks(range(len(ev_classes)))
        ax_ev.set_yticklabels(ev_classes, fontsize=7)
        ax_ev.set_ylim(-0.6, len(ev_classes) - 0.4)
        ax_ev.set_title(title or "", fontsize=11)
        ax_ev.tick_params(axis="x", labelbottom=False)
        ax_ev.set_ylabel("events", fontsize=8)
    elif title:
        ax.set_title(title, fontsize=11)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    logger.info("timeline written to %s", path)
    return path


def plot_per_class_ap(per_class_ap: Mapping[str, float | None], path: str | Path, title: str = "per-class AP") -> Path:
    """Horizontal bar chart of per-class AP, sorted (best on top), with the mean marked; written as a PNG.

    Values are shown in percent. Classes whose AP is None or nan (no positive) are left out of the bars and
    of the mean, as in :func:`oad.metrics.perframe_map`.

    Args:
        per_class_ap: class name -> AP in [0, 1] (or None / nan).
        path: output PNG path (parent folders are created).
        title: figure title.

    Returns:
        The path written.
    """
    items = [(str(k), float(v)) for k, v in per_class_ap.items() if v is not None and not math.isnan(float(v))]
    if not items:
        raise ValueError("plot_per_class_ap: no finite AP to plot")
    items.sort(key=lambda kv: kv[1])  # ascending, so the best class ends up at the top of a barh chart
    names = [k for k, _ in items]
    values = np.array([v for _, v in items]) * 100.0
    mean = float(values.mean())

    fig = _figure(figsize=(7.5, max(2.5, 0.32 * len(items) + 1.2)))
    ax = fig.subplots()
    colors = ["tab:blue" if v >= mean else "tab:orange" for v in values]
    ax.barh(np.arange(len(items)), values, color=colors, height=0.7)
    for i, v in enumerate(values):
        ax.text(v + 0.5, i, f"{v:.1f}", va="center", fontsize=8)
    ax.axvline(mean, color="k", linestyle="--", linewidth=1.2, label=f"mean {mean:.1f}")
    ax.set_yticks(np.arange(len(items)))
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlim(0, max(100.0, values.max() + 8.0))
    ax.set_xlabel("AP (%)")
    ax.set_title(title, fontsize=11)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(True, axis="x", alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    logger.info("per-class AP chart written to %s", path)
    return path
