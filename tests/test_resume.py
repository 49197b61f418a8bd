"""Crash safety: a run killed at any point (inside an epoch, at an epoch end) and resumed from
``last.ckpt`` ends with the weights and the test figure of the run that was never interrupted, for every
kind of training samples; a kill during a checkpoint write leaves the previous ``last.ckpt`` loadable; a
failed evaluation leaves earlier results untouched."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import RandomSampler
from torch.utils.data.distributed import DistributedSampler

from oad.callbacks import AtomicCheckpointIO
from oad.data.sampling import ShardedShuffledSampler, ShuffledSampler
from oad.tasks import evaluate, train
from tests.conftest import REPO, TINY, compose_cfg
from tests.helpers import tool_env

EPOCHS, BATCHES = 2, 4
TRAIN_ARGS = [
    "trainer=cpu", f"trainer.max_epochs={EPOCHS}", f"trainer.limit_train_batches={BATCHES}",
    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "data.batch_size=2",
    "data.source.num_videos={train: 4, val: 1, test: 2}", "data.source.length_scale=0.1",
    "checkpoint.every_n_train_steps=2", "logger=none",
]


def test_samplers_keep_the_usual_order_and_resume_its_tail():
    """The training order is DataLoader(shuffle=True)'s (RandomSampler: the same draws from the global RNG)
    and Lightning's DDP one (DistributedSampler); a resumed iteration yields the rest of the same one."""
    data = list(range(50))
    torch.manual_seed(0)
    usual, after = list(RandomSampler(data)), torch.get_rng_state()
    torch.manual_seed(0)
    sampler = ShuffledSampler(data)
    assert list(sampler) == usual and torch.equal(torch.get_rng_state(), after)
    sampler.resume(sampler.epoch_seed, 17)
    assert list(sampler) == usual[17:] and torch.equal(torch.get_rng_state(), after)  # nothing drawn
    for rank in (0, 1):
        plain, sharded = DistributedSampler(data, 2, rank, seed=20), ShardedShuffledSampler(data, 2, rank, seed=20)
        plain.set_epoch(3)
        sharded.set_epoch(3)
        assert list(sharded) == list(plain)
        sharded.resume(None, 5)
        assert list(sharded) == list(plain)[5:]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_same_weights(a: dict, b: dict) -> None:
    """The same weights; with an EMA, the same average (state_dict), trained weights and averaged count."""
    for key in ("state_dict", "current_model_state", "averaging_state"):
        assert (key in a) == (key in b), key
        if key in a:
            assert a[key].keys() == b[key].keys()
            for name, tensor in a[key].items():
                assert torch.equal(tensor, b[key][name]), f"{key} {name}"


def train_tool(run: Path, *args: str, base: list[str] = TRAIN_ARGS) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), *base, *args, f"hydra.run.dir={run}"],
                          cwd=run.parent, env=tool_env(), capture_output=True, text=True, timeout=600)


def kill(point: str) -> list[str]:
    """Overrides that SIGKILL the run at ``point`` (``step=<n>`` or ``epoch=<n>``: tests/helpers.py)."""
    return ["+callbacks.kill._target_=tests.helpers.KillAt", f"+callbacks.kill.{point}"]


@pytest.mark.slow
@pytest.mark.parametrize(("model", "ema"), [("trn", []), ("miniroad", []), ("oadtr_sw", []),
                                            ("oadtr", ["ema={decay: 0.6}"]), ("lstr", ["augment.video_shift=0.5"])],
                         ids=["trn", "miniroad", "oadtr_sw", "oadtr_ema", "lstr_video_shift"])
def test_killed_and_resumed_run_ends_as_the_uninterrupted_one(model, ema, tmp_path, one_torch_thread):
    """Killed after step 3 (its step checkpoint is step 2's: step 3 is trained again), resumed, killed again
    at the end of epoch 0 (after its validation and last.ckpt), resumed to the end: the final weights are
    bit-identical to an uninterrupted run's, and so is test/mAP; with an EMA, so are the average and the
    trained weights (the resumed run continues the average); with a random video shift, so are its draws.
    One model per kind of training samples (oad.data.samples: OadTR's last-chunk windows, TRN's dense
    windows, MiniROAD's strided windows with a random offset per epoch, OadTR-SW's dense sequences, LSTR's
    memory windows); OadTR's and LSTR's runs also carry an EMA and a random video shift, which hold the
    plain runs' checks too (the trained weights are compared with the average). The uninterrupted run
    trains in this process, with one torch thread as the tool's processes have."""
    ref = tmp_path / "uninterrupted"
    train(compose_cfg("train", [*TRAIN_ARGS, f"model={model}", *ema], ref))

    run = tmp_path / "killed"
    last = run / "checkpoints" / "last.ckpt"
    res = train_tool(run, f"model={model}", *ema, *kill("step=3"))
    assert res.returncode == -signal.SIGKILL, res.stderr[-3000:]
    assert load(last)["global_step"] == 2 and not (run / "metrics.json").exists()
    record = (run / ".hydra" / "overrides.yaml").read_bytes()
    res = train_tool(run, f"model={model}", *ema, "ckpt_path=last", *kill("epoch=0"))
    assert res.returncode == -signal.SIGKILL, res.stderr[-3000:]
    assert "Restored all states" in res.stderr + res.stdout
    assert load(last)["global_step"] == BATCHES and not (run / "metrics.json").exists()
    res = train_tool(run, f"model={model}", *ema, "ckpt_path=last")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1].startswith("test/mAP=")

    final, expected = load(last), load(ref / "checkpoints" / "last.ckpt")
    assert final["epoch"] == expected["epoch"] == EPOCHS - 1
    assert final["global_step"] == expected["global_step"] == EPOCHS * BATCHES
    assert_same_weights(final, expected)
    metrics, ref_metrics = (json.loads((d / "metrics.json").read_text()) for d in (run, ref))
    assert metrics["protocols"] == ref_metrics["protocols"]
    # the run's config record is the first command's; each resume's is kept beside it
    assert (run / ".hydra" / "overrides.yaml").read_bytes() == record
    assert sorted(p.name for p in (run / ".hydra").glob("resume_*")) == ["resume_1", "resume_2"]


@pytest.mark.slow
def test_killed_and_resumed_ddp_run_ends_as_the_uninterrupted_one(tmp_path):
    """Two CPU processes: every process's position and random generators are restored (each its own)."""
    base = ["trainer=ddp_cpu", *TRAIN_ARGS[1:], "test=false"]
    ref = tmp_path / "uninterrupted"
    res = train_tool(ref, base=base)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "killed"
    for point in ("step=3", "epoch=0"):  # each process kills itself at the same point
        res = train_tool(run, *(["ckpt_path=last"] if point == "epoch=0" else []), *kill(point), base=base)
        assert res.returncode == -signal.SIGKILL, res.stderr[-3000:]
    res = train_tool(run, "ckpt_path=last", base=base)
    assert res.returncode == 0, res.stderr[-3000:]
    final, expected = load(run / "checkpoints" / "last.ckpt"), load(ref / "checkpoints" / "last.ckpt")
    assert final["global_step"] == expected["global_step"] == EPOCHS * BATCHES
    assert len(final["OadDataModule"]["resume_point"]["rng"]) == 2
    assert_same_weights(final, expected)


@pytest.mark.parametrize(("model", "validation", "ema"), [
    ("oadtr", True, []), ("miniroad", False, []), ("oadtr", True, ["ema={decay: 0.6, every_n_steps: 2, start_step: 1}"])])
def test_resuming_from_every_checkpoint_gives_the_uninterrupted_weights(model, validation, ema, tmp_path, monkeypatch,
                                                                        one_torch_thread):
    """Every checkpoint an uninterrupted run writes (step checkpoints, last.ckpt after each validation or
    epoch, the epoch files) resumes to the same final weights; without a validation split the epoch-end
    checkpoints are written at another point of Lightning's loop (MiniROAD: windows redrawn every epoch).
    With an EMA of the weights, the resumed run continues the average: the same average and trained weights
    (from checkpoints before, at and after the step that starts it, between updates and at them)."""
    copies = tmp_path / "copies"
    copies.mkdir()
    save = AtomicCheckpointIO.save_checkpoint

    def keep_a_copy(self, checkpoint, path, storage_options=None):
        save(self, checkpoint, path, storage_options)
        shutil.copy(path, copies / f"{len(list(copies.iterdir())):02d}_{Path(path).name}")

    args = [f"model={model}", *TINY, f"trainer.max_epochs={EPOCHS}", f"trainer.limit_train_batches={BATCHES}",
            "data.batch_size=8",
            "checkpoint.every_n_train_steps=1", "test=false", "logger=none",
            *([] if validation else ["data.val_split=null"]), *ema]
    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", keep_a_copy)
    train(compose_cfg("train", args, tmp_path / "uninterrupted"))
    monkeypatch.undo()
    expected = load(tmp_path / "uninterrupted" / "checkpoints" / "last.ckpt")
    saved = sorted(p for p in copies.iterdir() if load(p)["global_step"] < EPOCHS * BATCHES)
    assert {load(p)["global_step"] for p in saved} == set(range(1, EPOCHS * BATCHES))
    assert any("epoch000" in p.name for p in saved)
    for ckpt in saved:
        out = tmp_path / ckpt.stem
        train(compose_cfg("train", [*args, f"ckpt_path={ckpt}"], out))
        assert_same_weights(load(out / "checkpoints" / "last.ckpt"), expected)


_KILLED_MID_WRITE = """
import os, signal, sys, torch
from torch.utils.data import RandomSampler
from torch.utils.data.distributed import DistributedSampler

from oad.callbacks import AtomicCheckpointIO
from oad.data.sampling import ShardedShuffledSampler, ShuffledSampler

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
    # a step checkpoint at step 2 (not at step 4, the epoch's last: the epoch-end one follows it), then the
    # end of the epoch: last.ckpt and the epoch checkpoint
    assert written.count("last.ckpt") == 2 and "epoch000.ckpt" in written
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
