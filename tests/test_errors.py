"""Every tool fails the same way (``oad.cli.run_reported``): one last line ``error: <file>: <problem>`` on
standard error, exit code 2 for a bad input, no traceback unless ``OAD_DEBUG=1``; config values checked
when composed (``oad.config.check_config``); a checkpoint that cannot be resumed refused before training
(``oad.checkpoint.check_resume_checkpoint``); a run folder that cannot be written named before Hydra
opens its log there (``oad.cli.RunFolderCheck``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from oad.checkpoint import check_resume_checkpoint, save_network
from oad.config import ConfigError, check_config
from tests.conftest import REPO, TINY, compose_cfg
from tests.test_configs import EXAMPLES, TOOL_CONFIGS

SYNTHETIC_DIMS = [64, 32]  # configs/data/synthetic.yaml: rgb_dim, flow_dim
NAMES = ["Background"] + [f"action_{i}" for i in range(1, 21)] + ["Ambiguous"]


def run_tool(name: str, *args: str, cwd: Path, debug: bool = False, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python tools/<name>.py <args>`` in a fresh interpreter, as a user types it."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop("OAD_DEBUG", None)
    if debug:
        env["OAD_DEBUG"] = "1"
    return subprocess.run([sys.executable, str(REPO / "tools" / f"{name}.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


def error_line(proc: subprocess.CompletedProcess, code: int = 2, debug: bool = False) -> str:
    """The last line of standard error, checked to be the tool's error line (and the exit code, and the
    traceback shown only in debug mode)."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert lines and lines[-1].startswith("error: "), proc.stderr[-3000:]
    assert ("Traceback" in proc.stderr) == debug, proc.stderr[-3000:]
    return lines[-1]


def linear_checkpoint(path: Path, in_dim: int = sum(SYNTHETIC_DIMS)) -> Path:
    """A ChunkLinear checkpoint for the built-in data (no training state: save_network's format)."""
    from oad.models.linear import ChunkLinear

    torch.manual_seed(0)
    net = ChunkLinear(in_dim=in_dim, num_classes=22)
    save_network(path, net, {"_target_": "oad.models.linear.ChunkLinear", "in_dim": in_dim, "num_classes": 22},
                 {"class_names": NAMES, "ignore_index": 21, "fps": 4.0, "stream_dims": SYNTHETIC_DIMS})
    return path


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """Bad inputs of every kind, and a good checkpoint."""
    text = tmp_path / "text.npy"
    text.write_text("0.1,0.2,0.3\n")
    ckpt = linear_checkpoint(tmp_path / "linear.ckpt")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[:1500])
    return {"text": text, "ckpt": ckpt, "truncated": truncated}


# -- every entry point on a bad input ------------------------------------------------------------------------
def test_stream_export_convert_eval_name_an_unreadable_file(tmp_path, files):
    text, truncated = files["text"], files["truncated"]
    proc = run_tool("stream", f"features={text}", f"ckpt_path={files['ckpt']}", f"output_dir={tmp_path / 'out'}",
                    f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert error_line(proc).startswith(f"error: features {text}: not a .npy file")
    proc = run_tool("export", f"ckpt_path={truncated}", f"output_dir={tmp_path / 'exp'}",
                    f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert error_line(proc).startswith(f"error: checkpoint {truncated}: cannot be read")
    proc = run_tool("convert_reference_checkpoint", str(text), str(tmp_path / "conv.ckpt"), cwd=tmp_path)
    assert error_line(proc).startswith(f"error: checkpoint {text}: cannot be read")
    proc = run_tool("eval", f"ckpt_path={text}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert error_line(proc).startswith(f"error: checkpoint {text}: cannot be read")
    # the traceback with the debug switch, the error line still last
    proc = run_tool("eval", f"ckpt_path={text}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, debug=True)
    assert error_line(proc, debug=True).startswith(f"error: checkpoint {text}: cannot be read")
    # without it, the traceback is in the run's log file
    assert "Traceback" in (tmp_path / "run" / "eval.log").read_text()


def test_extract_names_a_truncated_manifest_and_a_failed_video(tmp_path):
    videos, out = tmp_path / "videos", tmp_path / "features"
    videos.mkdir()
    (videos / "a.mp4").write_bytes(b"not a video")
    out.mkdir()
    (out / "manifest.json").write_text('{"rate": 4.0, "videos": {"a": {"status": "comp')
    args = [f"videos={videos}", "backbone.name=resnet18", "backbone.weights=random", "backbone.allow_random=true",
            "resize=64", "crop=56", "progress=false", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = run_tool("extract_features", *args, f"output={out}", cwd=tmp_path)
    assert error_line(proc).startswith(f"error: {out / 'manifest.json'}: not valid JSON")
    # a video that cannot be read: the others would go on; exit code 1, the error line names the video
    proc = run_tool("extract_features", *args, f"output={tmp_path / 'other'}", cwd=tmp_path)
    assert error_line(proc, code=1).startswith(f"error: {videos / 'a.mp4'}: cannot open video")


def test_prepare_names_a_text_file_named_npy(tmp_path):
    src = tmp_path / "maps"
    src.mkdir()
    np.save(src / "a.npy", np.ones((3, 6, 2, 2), np.float32))
    (src / "b.npy").write_text("not an array\n")
    proc = run_tool("prepare_data", "pool", f"src={src}", f"dst={tmp_path / 'pooled'}", cwd=tmp_path)
    last = error_line(proc)
    assert last.startswith(f"error: 1 of 2 files in {src} could not be pooled")
    assert f"{src / 'b.npy'}: cannot be read" in proc.stderr


def test_train_refuses_a_checkpoint_of_another_model_or_a_truncated_one(tmp_path, files):
    args = [*TINY, f"hydra.run.dir={tmp_path / 'run'}"]
    proc = run_tool("train", "model=trn", f"ckpt_path={files['ckpt']}", *args, cwd=tmp_path)
    assert error_line(proc).startswith(f"error: checkpoint {files['ckpt']}: a checkpoint of another model: "
                                       "oad.models.linear.ChunkLinear, this run configures oad.models.trn.TRN")
    proc = run_tool("train", "model=linear", f"ckpt_path={files['truncated']}", *args, cwd=tmp_path)
    assert error_line(proc).startswith(f"error: checkpoint {files['truncated']}: cannot be read")
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_config_values_are_checked_before_anything_is_built(tmp_path):
    proc = run_tool("train", "data.batch_size=0", "trainer.precision=17", *TINY, f"hydra.run.dir={tmp_path / 'run'}",
                    cwd=tmp_path)
    assert error_line(proc) == ("error: config: data.batch_size=0: must be a whole number >= 1; "
                                "trainer.precision=17: must be one of 16-true, 16-mixed, bf16-true, bf16-mixed, 32-true, "
                                "64-true, transformer-engine, transformer-engine-float16")
    assert "oad.data" not in proc.stdout  # nothing built (no data module log line)
    proc = run_tool("leaderboard", "trainer=cpu", "data.batch_size=-4", f"hydra.run.dir={tmp_path / 'lb'}", cwd=tmp_path)
    assert error_line(proc) == "error: config: data.batch_size=-4: must be a whole number >= 1"
    assert not (tmp_path / "lb" / "leaderboard.json").exists()
    proc = run_tool("stream", "features=f.npy", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert error_line(proc) == "error: config: ckpt_path: not set (give ckpt_path=... on the command line)"


def test_leaderboard_where_every_run_fails(tmp_path):
    proc = run_tool("leaderboard", "trainer=cpu", "data=thumos14", f"data.root={tmp_path / 'nowhere'}",
                    "models=[{name: linear, model: linear, overrides: []}]", f"hydra.run.dir={tmp_path / 'lb'}",
                    cwd=tmp_path)
    last = error_line(proc, code=1)
    assert last.startswith("error: every run failed") and f"{tmp_path / 'nowhere'}: data root does not exist" in last
    assert proc.stdout.strip().splitlines()[-1] == "winner: none (every run failed)"


def test_a_run_folder_that_cannot_be_written_is_named(tmp_path, files):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = run_tool("train", *TINY, f"hydra.run.dir={blocker / 'run'}", cwd=tmp_path)
    assert error_line(proc) == (f"error: {blocker / 'run'}: the run folder cannot be written (Not a directory); "
                                "choose another with hydra.run.dir=<folder>")
    if os.geteuid() != 0:  # permissions do not stop root
        ro = tmp_path / "read_only"
        ro.mkdir(mode=0o555)
        proc = run_tool("eval", f"ckpt_path={files['ckpt']}", f"hydra.run.dir={ro}", cwd=tmp_path)
        assert error_line(proc).startswith(f"error: {ro}: the run folder cannot be written (Permission denied)")


# -- in-process ----------------------------------------------------------------------------------------------
def test_internal_errors_exit_1_and_user_errors_2(capsys, monkeypatch):
    from oad.cli import run_reported

    monkeypatch.delenv("OAD_DEBUG", raising=False)

    def bug():
        raise RuntimeError("shape mismatch in step")

    assert run_reported(bug) == 1
    err = capsys.readouterr().err
    assert err == "error: internal error, RuntimeError: shape mismatch in step; OAD_DEBUG=1 shows the traceback\n"

    def many():
        raise ValueError("2 problems in data /d:\n  - /d/a.npy: NaN\n  - /d/b.npy: missing")

    assert run_reported(many) == 2
    assert capsys.readouterr().err.splitlines() == ["  - /d/a.npy: NaN", "  - /d/b.npy: missing",
                                                    "error: 2 problems in data /d (above)"]
    assert run_reported(lambda: open("/nonexistent/x.json")) == 2
    assert capsys.readouterr().err == "error: /nonexistent/x.json: No such file or directory\n"
    monkeypatch.setenv("OAD_DEBUG", "1")
    assert run_reported(bug) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and err.endswith("error: internal error, RuntimeError: shape mismatch in step\n")


@pytest.mark.parametrize("overrides, problem", [
    (["data.batch_size=0"], "data.batch_size=0: must be a whole number >= 1"),
    (["data.batch_size=2.5"], "data.batch_size=2.5: must be a whole number >= 1"),
    (["data.num_workers=-1"], "data.num_workers=-1: must be a whole number >= 0"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0: must be a whole number >= 1 (-1: no limit)"),
    (["trainer.precision=fp32"], "trainer.precision='fp32': must be one of 16-true"),
    (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0: must be a whole number >= 1"),
    (["data=thumos14"], "data.root: not set (give data.root=... on the command line)"),
])
def test_check_config_names_the_bad_value(overrides, problem, tmp_path):
    cfg = compose_cfg("train", overrides, tmp_path)
    with pytest.raises(ConfigError, match="^config: ") as e:
        check_config(cfg)
    assert problem in str(e.value)


def test_check_config_accepts_the_defaults_and_every_documented_example(tmp_path):
    for name, args in [("train", []), ("eval", []), ("leaderboard", []), ("stream", ["ckpt_path=c"]),
                       ("export", ["ckpt_path=c"]), ("extract", ["videos=v", "output=o"]),
                       ("train", ["trainer.max_epochs=-1", "trainer.precision=bf16-mixed"])]:
        check_config(compose_cfg(name, args, tmp_path))
    for _, tool, args in EXAMPLES:
        check_config(compose_cfg(TOOL_CONFIGS[tool], args, tmp_path))
    with pytest.raises(ConfigError, match=r"rate=0: must be a number > 0.*batch_chunks=0"):
        check_config(compose_cfg("stream", ["ckpt_path=c", "rate=0", "batch_chunks=0"], tmp_path))


def test_check_resume_checkpoint(tmp_path, files):
    from oad.models.linear import ChunkLinear

    net = ChunkLinear(in_dim=96, num_classes=22)
    config = {"_target_": "oad.models.linear.ChunkLinear", "in_dim": 96, "num_classes": 22}
    assert check_resume_checkpoint(None, config, net) is None
    with pytest.raises(FileNotFoundError, match="no such file"):
        check_resume_checkpoint(str(tmp_path / "missing.ckpt"), config, net)
    with pytest.raises(ValueError, match="weights only, no training state"):
        check_resume_checkpoint(str(files["ckpt"]), config, net)
    # a training checkpoint (Lightning's keys) of the same class but another size: the weights are named
    ckpt = torch.load(files["ckpt"], weights_only=False)
    ckpt.update(optimizer_states=[{}], loops={})
    torch.save(ckpt, tmp_path / "train.ckpt")
    assert check_resume_checkpoint(str(tmp_path / "train.ckpt"), config, net) == str(tmp_path / "train.ckpt")
    wide = {**config, "in_dim": 128}
    with pytest.raises(ValueError, match=r"net.classifier.weight \(22, 96\) vs \(22, 128\).*'in_dim': \(96, 128\)"):
        check_resume_checkpoint(str(tmp_path / "train.ckpt"), wide, ChunkLinear(in_dim=128, num_classes=22))


def test_eval_says_the_checkpoint_model_is_used_and_names_it(tmp_path, files):
    out = tmp_path / "run"
    proc = run_tool("eval", "+model=trn", f"ckpt_path={files['ckpt']}", "data=synthetic",
                    *[a for a in TINY if a.startswith("data.")], "trainer=cpu", "trainer.enable_progress_bar=false",
                    f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("model=TRN on the command line is not used: the checkpoint's model is evaluated, ChunkLinear "
            "(oad.models.linear.ChunkLinear); it differs from the one asked for") in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "oad.models.linear.ChunkLinear" and metrics["model_class"] == "ChunkLinear"
