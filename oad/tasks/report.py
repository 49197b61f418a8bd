"""What a task prints and draws: the per-class tables, the headline line, timelines and the per-class
AP chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def make_plots(scores, targets, report, class_names, output_dir: Path, ignore_index, max_videos: int = 20) -> dict:
    """Timeline PNG per video (up to ``max_videos``) and the per-class AP bar chart."""
    from oad.plots import plot_per_class_ap, plot_timeline

    C = next(iter(scores.values())).shape[1]
    names = class_names or [str(i) for i in range(C)]
    timelines = []
    for session in sorted(scores)[:max_videos]:
        path = output_dir / "timelines" / f"{session}.png"
        plot_timeline(scores[session], targets[session], names, path, title=session, ignore_index=ignore_index)
        timelines.append(str(path))
    per_class = {str(k): v for k, v in report["per_class_AP"].items() if v is not None}
    bar = plot_per_class_ap(per_class, output_dir / "per_class_ap.png", title=f"per-class AP ({report['protocol']})")
    return {"timelines": timelines, "per_class_ap": str(bar)}


def format_report(metrics: dict[str, Any]) -> str:
    """A per-class table and the means, one block per protocol, for the terminal."""
    key = metrics["metric"]
    lines = []
    for protocol, rep in metrics["protocols"].items():
        if "error" in rep:
            lines.append(f"protocol '{protocol}': not reported ({rep['error']})")
            continue
        extra = f", post-processing: {'+'.join(rep['postprocess'])}" if rep.get("postprocess") else ""
        if protocol == "windows":
            extra = f", window {rep['window']}, {rep['num_queries']} future chunks" + extra
        lines.append(f"protocol '{protocol}': {rep['num_videos']} videos, {rep['num_chunks_scored']} chunks scored{extra}")
        width = max([len(str(c)) for c in rep["per_class_AP"]] + [10])
        lines.append(f"  {'class':<{width}}  {'cAP' if key == 'mcAP' else 'AP':>7}")
        for c, ap in rep["per_class_AP"].items():
            lines.append(f"  {str(c):<{width}}  {'   n/a' if ap is None else f'{100 * ap:7.2f}'}")
        lines.append(f"  {'mean':<{width}}  {100 * rep[key]:7.2f}")
        stage = rep.get("per_stage")
        if stage and stage.get("mAP"):
            lines.append("  per-stage mAP (deciles): " + " ".join(
                "  n/a" if v is None else f"{100 * v:5.1f}" for v in stage["mAP"]))
        ant = rep.get("anticipation")
        if ant and ant.get("mAP"):
            lines.append("  anticipation mAP (step 1..Q): " + " ".join(
                "  n/a" if v is None else f"{100 * v:5.1f}" for v in ant["mAP"]))
    return "\n".join(lines)


def headline(metrics: dict[str, Any]) -> str:
    """The last line every task prints: ``test/mAP=<value>`` (or ``test/mcAP=``)."""
    key = metrics["metric"]
    return f"test/{key}={metrics['headline'][key]:.4f}"


