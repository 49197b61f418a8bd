"""Crash safety: a run killed mid-epoch resumes from ``last.ckpt`` and finishes its planned epochs; a kill
during a checkpoint write leaves the previous ``last.ckpt`` loadable; a failed evaluation leaves earlier
results untouched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from oad.callbacks import AtomicCheckpointIO
from oad.tasks import evaluate, train
from tests.conftest import REPO, TINY, compose_cfg

EPOCHS, BATCHES = 3, 8
TRAIN_ARGS = [
    "trainer=cpu", f"trainer.max_epochs={EPOCHS}", f"trainer.limit_train_batches={BATCHES}",
    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "data.batch_size=16",
    "data.source.num_videos={train: 4, val: 1, test: 2}", "data.source.length_scale=0.1",
    "checkpoint.every_n_train_steps=2",
]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_killed_run_resumes_and_finishes_the_planned_epochs(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "tools" / "train.py"), *TRAIN_ARGS, f"hydra.run.dir={run}"]
    last = run / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not last.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        assert last.exists(), "no step checkpoint appeared"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed = load(last)
    assert killed["global_step"] < EPOCHS * BATCHES, "the run finished before it was killed"
    assert not (run / "metrics.json").exists()

    res = subprocess.run(cmd[:-1] + ["ckpt_path=last", f"hydra.run.dir={run}"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Restored all states" in res.stderr + res.stdout
    assert res.stdout.strip().splitlines()[-1].startswith("test/mAP=")
    final = load(last)
    assert final["epoch"] == EPOCHS - 1 and final["global_step"] == EPOCHS * BATCHES
    assert (run / "metrics.json").is_file()


_KILLED_MID_WRITE = """
import os, signal, sys, torch
from oad.callbacks import AtomicCheckpointIO

def dying_save(obj, f, *args, **kwargs):  # half a checkpoint reaches the disk, then the process is killed
    f.write(b"PK\\x03\\x04" + b"x" * 4096)
    f.flush()
    os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)

torch.save = dying_save
AtomicCheckpointIO().save_checkpoint({"step": 2}, sys.argv[1])
"""


def test_kill_during_checkpoint_write_leaves_the_previous_one(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "w": torch.arange(10)}, path)
    res = subprocess.run([sys.executable, "-c", _KILLED_MID_WRITE, str(path)], cwd=REPO, timeout=120)
    assert res.returncode == -signal.SIGKILL
    ckpt = io.load_checkpoint(path)
    assert ckpt["step"] == 1 and torch.equal(ckpt["w"], torch.arange(10))
    leftovers = list(path.parent.glob(".last.ckpt.*.tmp"))
    assert leftovers, "the killed write should have left its temp file"
    # the next successful write replaces the checkpoint and sweeps the dead process's temp file
    io.save_checkpoint({"step": 3}, path)
    assert io.load_checkpoint(path)["step"] == 3
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_failed_checkpoint_write_raises_and_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"torn")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_training_writes_checkpoints_through_the_atomic_plugin(tmp_path, monkeypatch):
    written = []
    save = AtomicCheckpointIO.save_checkpoint

    def spy(self, checkpoint, path, storage_options=None):
        written.append(Path(path).name)
        return save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", spy)
    cfg = compose_cfg("train", [*TINY, "trainer.limit_train_batches=4", "checkpoint.every_n_train_steps=2",
                                "test=false"], tmp_path)
    train(cfg)
    # step checkpoints at steps 2 and 4, then the end of the epoch: last.ckpt and the epoch checkpoint
    assert written.count("last.ckpt") == 3 and "epoch000.ckpt" in written
    assert load(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 4


@pytest.mark.parametrize("failure", ["while scoring", "after scoring"])
def test_failed_evaluation_leaves_earlier_results_intact(failure, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(compose_cfg("train", [*TINY, "trainer.limit_train_batches=2"], run))
    ckpt = run / "checkpoints" / "last.ckpt"
    out = tmp_path / "eval"
    base = [f"ckpt_path={ckpt}", "trainer=cpu", "trainer.enable_progress_bar=false"]
    evaluate(compose_cfg("eval", base, out))
    files = {name: (out / name).read_bytes() for name in ("metrics.json", "predictions.pkl")}
    stamps = {name: os.stat(out / name).st_mtime_ns for name in files}
    if failure == "while scoring":
        bad = ["postprocess=[no_such_step]"]
    else:  # everything scored, then the plots fail
        def broken_plots(*args, **kwargs):
            raise ValueError("plotting failed")

        monkeypatch.setattr("oad.tasks.evaluation.make_plots", broken_plots)
        bad = ["plot=true"]
    with pytest.raises(ValueError):
        evaluate(compose_cfg("eval", [*base, *bad, f"output={out / 'metrics.json'}"], out))
    for name, data in files.items():
        assert (out / name).read_bytes() == data and os.stat(out / name).st_mtime_ns == stamps[name], name
    assert not list(out.glob(".*.tmp"))
