"""What a run folder guarantees (oad/runlock.py): one training run in it at a time (a second one fails at
once, names the holder and writes nothing there; a killed holder does not leave it locked; the processes
of one DDP launch share it), and a resume, even a failed one, keeps the original run's config record."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oad.runlock import RunFolderBusy, hold_run_folder, is_launch_leader
from oad.tasks import train
from tests.conftest import REPO, TINY, compose_cfg
from tests.helpers import tool_env

ARGS = ["trainer=cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "data.source.num_videos={train: 4, val: 1, test: 2}",
        "data.source.length_scale=0.1", "logger=none"]


def train_cmd(run: Path, *args: str) -> list[str]:
    return [sys.executable, str(REPO / "tools" / "train.py"), *ARGS, *args, f"hydra.run.dir={run}"]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder`` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def start_waiting_run(run: Path, tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """A training run that holds ``run`` until the returned file exists (tests/helpers.py WaitFor)."""
    ready, go = tmp_path / "ready", tmp_path / "go"
    proc = subprocess.Popen(train_cmd(run, "+callbacks.wait._target_=tests.helpers.WaitFor",
                                      f"+callbacks.wait.ready={ready}", f"+callbacks.wait.go={go}"),
                            cwd=tmp_path, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not ready.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the first run did not start its fit"
        time.sleep(0.05)
    return proc, go


@pytest.mark.slow
def test_second_run_in_a_held_folder_fails_at_once_and_writes_nothing(tmp_path):
    run = tmp_path / "run"
    first, go = start_waiting_run(run, tmp_path)
    try:
        before = snapshot(run)
        start = time.monotonic()
        res = subprocess.run(train_cmd(run, "model=trn"), cwd=tmp_path, env=tool_env(), capture_output=True, text=True,
                             timeout=300)
        took = time.monotonic() - start
        assert res.returncode == 2, res.stderr[-3000:]
        message = res.stderr.strip().splitlines()[-1]
        assert message.startswith(f"error: run folder {run.resolve()} is in use by another run (pid {first.pid} ")
        assert "tools/train.py" in message
        assert took < 60  # before any data or model is built
        assert snapshot(run) == before
    finally:
        go.touch()
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert out.strip().splitlines()[-1].startswith("test/mAP=")
    assert (run / ".lock").read_text() == ""  # released: no holder


@pytest.mark.slow
def test_a_killed_holder_does_not_leave_the_folder_locked(tmp_path):
    run = tmp_path / "run"
    first, _ = start_waiting_run(run, tmp_path)
    assert f'"pid": {first.pid}' in (run / ".lock").read_text()
    first.send_signal(signal.SIGKILL)
    first.communicate()
    res = subprocess.run(train_cmd(run), cwd=tmp_path, env=tool_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1].startswith("test/mAP=")


@pytest.mark.slow
def test_a_failed_resume_keeps_the_original_config_record(tmp_path):
    run = tmp_path / "run"
    res = subprocess.run(train_cmd(run), cwd=tmp_path, env=tool_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    record = {name: (run / ".hydra" / name).read_bytes() for name in ("config.yaml", "hydra.yaml", "overrides.yaml")}
    # another model's weights do not load into the checkpoint's: the resume fails
    res = subprocess.run(train_cmd(run, "model=trn", "ckpt_path=last"), cwd=tmp_path, env=tool_env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "resume with the model it was trained with" in res.stderr.splitlines()[-1]
    for name, data in record.items():
        assert (run / ".hydra" / name).read_bytes() == data, name
    # the failed attempt's own record is kept beside it
    assert "- ckpt_path=last" in (run / ".hydra" / "resume_1" / "overrides.yaml").read_text()
    assert "model: trn" not in record["overrides.yaml"].decode()


def test_in_process_training_in_a_held_folder_raises_before_building_anything(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from oad.runlock import hold_run_folder\n"
                               f"with hold_run_folder({str(run)!r}):\n    print('held', flush=True); sys.stdin.read()"],
        env=tool_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(run)
        busy = re.escape(f"run folder {run.resolve()} is in use by another run (pid {holder.pid} ")
        with pytest.raises(RunFolderBusy, match=busy):
            train(compose_cfg("train", [*TINY, "trainer.limit_train_batches=1"], run))
        assert snapshot(run) == before
    finally:
        holder.communicate("")
    assert holder.returncode == 0
    with hold_run_folder(run), hold_run_folder(run):  # free again, and re-entrant within a process
        assert f'"pid": {os.getpid()}' in (run / ".lock").read_text()
    assert (run / ".lock").read_text() == ""


@pytest.mark.parametrize(("env", "leader"), [
    ({}, True), ({"LOCAL_RANK": "0", "NODE_RANK": "0"}, True), ({"LOCAL_RANK": "1"}, False),
    ({"RANK": "3", "LOCAL_RANK": "0"}, False), ({"NODE_RANK": "1", "LOCAL_RANK": "0"}, False),
    ({"SLURM_PROCID": "2"}, False),
])
def test_only_the_first_process_of_a_launch_takes_the_lock(env, leader, monkeypatch, tmp_path):
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert is_launch_leader() is leader
    with hold_run_folder(tmp_path):
        assert (tmp_path / ".lock").exists() is leader
