"""Peak memory of training on a THUMOS-sized dataset in the LSTR layout (memory-mapped features).

Writes 200 training videos with the real THUMOS'14 chunk counts (from the label file given, by default
../shared/data/thumos14_val_labels.npz, whose real labels become the targets) and 20 test videos, with
random 3072-d features (rgb 2048 + flow 1024, float32: about 2.5 GB on disk), then trains the demo-size
OadTR on them through the real entry point (``tools/train.py data=thumos14 data.layout=lstr``) for a few
hundred steps and reports the child process's peak resident memory against the budget: the size of the
feature files plus 2 GiB. Memory-mapped pages that were read count in the resident size, so the figure is
an upper bound on what training itself holds.

    .venv/bin/python tools/bench_memory.py [--root DIR] [--steps 300] [--labels FILE] [--keep]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
GIB = 1024**3


def write_dataset(root: Path, labels: dict[str, np.ndarray], num_test: int, seed: int = 0) -> int:
    """LSTR layout under ``root``; returns the bytes of the feature files."""
    rng = np.random.default_rng(seed)
    info = json.loads((REPO / "oad" / "data" / "info" / "thumos14.json").read_text())
    train = sorted(labels)
    test_src = train[:num_test]
    test = [f"synthetic_test_{i:03d}" for i in range(num_test)]
    dirs = {"rgb": root / "rgb_kinetics_resnet50", "flow": root / "flow_kinetics_bninception",
            "target": root / "target_perframe"}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    total = 0
    for name, src in [(s, s) for s in train] + list(zip(test, test_src)):
        lab = labels[src].astype(np.int64)
        T = len(lab)
        for stream, dim in (("rgb", 2048), ("flow", 1024)):
            path = dirs[stream] / f"{name}.npy"
            if not path.exists():
                np.save(path, rng.standard_normal((T, dim), dtype=np.float32))
            total += path.stat().st_size
        np.save(dirs["target"] / f"{name}.npy", np.eye(22, dtype=np.float32)[lab])
    data_info = {"THUMOS": {"class_names": info["class_names"], "num_classes": 22, "ignore_index": 21,
                            "metrics": "AP", "fps": 4, "train_session_set": train, "test_session_set": test}}
    (root / "data_info.json").write_text(json.dumps(data_info))
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="outputs/bench_memory/data")
    ap.add_argument("--labels", default=str(REPO / "datasets" / "thumos14" / "thumos14_val_labels.npz"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--test-videos", type=int, default=20)
    ap.add_argument("--keep", action="store_true", help="keep the dataset folder afterwards")
    args = ap.parse_args()

    with np.load(args.labels) as z:
        labels = {k: z[k] for k in z.files}
    root = Path(args.root)
    t0 = time.time()
    feature_bytes = write_dataset(root, labels, args.test_videos)
    chunks = sum(len(v) for v in labels.values())
    print(f"dataset: {root}, {len(labels)} train videos / {chunks:,} chunks (real THUMOS'14 lengths), "
          f"{args.test_videos} test videos; feature files {feature_bytes / GIB:.2f} GiB "
          f"(written in {time.time() - t0:.0f} s)")

    cmd = [sys.executable, str(REPO / "tools" / "train.py"), "data=thumos14", f"data.root={root}",
           "data.layout=lstr", "data.val_split=null", "trainer=cpu", "trainer.enable_progress_bar=false",
           f"++trainer.max_steps={args.steps}", "trainer.max_epochs=1", "checkpoint.every_n_train_steps=0",
           f"hydra.run.dir={root}/run"]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # kB -> bytes (Linux)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        return proc.returncode
    budget = feature_bytes + 2 * GIB
    print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; "
          f"machine: {platform.platform()}, {platform.processor() or 'cpu'}")
    print(f"command: {' '.join(cmd[1:])}")
    print(f"training: {args.steps} steps of the demo OadTR (batch 128, window 32) + test scoring, {wall:.0f} s; "
          f"{last}")
    print(f"peak RSS of the training process: {peak / GIB:.2f} GiB; budget (features + 2 GiB): "
          f"{budget / GIB:.2f} GiB -> {'within budget' if peak <= budget else 'OVER BUDGET'}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if peak <= budget else 1

