"""Reference checkpoints converted with tools/convert_reference_checkpoint.py load in this project's
tools and give the reference outputs."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from oad.checkpoint import convert_reference_checkpoint, load_network
from tests.conftest import REPO, fixture_file


@pytest.mark.parametrize("case,kind", [("oadtr_small.pt", "OadTR"), ("trn_small.pt", "TRN")])
def test_convert_reference_case(tmp_path, case, kind):
    ref = torch.load(fixture_file("reference_cases", case), weights_only=False)
    src = tmp_path / "ref.pth"
    # the reference code saves {'model': state_dict, ...} (OadTR) / {'model_state_dict': ...} (TRN)
    torch.save({"model" if kind == "OadTR" else "model_state_dict": ref["state_dict"], "epoch": 3}, src)
    overrides = {"num_heads": 8, "decoder_heads": 4} if kind == "OadTR" else {"window": 16, "num_queries": 8}
    info = convert_reference_checkpoint(src, tmp_path / "conv.ckpt", **overrides)
    assert info["model"] == kind and info["data_info"]["class_names"][0] == "Background"
    net, meta = load_network(tmp_path / "conv.ckpt")
    assert type(net).__name__ == kind and meta["data_info"]["ignore_index"] == 21
    with torch.no_grad():
        if kind == "OadTR":
            logits, future = net(ref["input"])
            torch.testing.assert_close(logits, ref["logits"], atol=2e-5, rtol=1e-4)
            torch.testing.assert_close(future, ref["future_logits"], atol=2e-5, rtol=1e-4)
        else:
            # the first encoder step is numerically stable on any CPU (see tests/test_models_trn.py)
            enc, _ = net.forward_dense(ref["input"][:, :1])
            torch.testing.assert_close(enc[:, 0], ref["enc_scores"][:, 0], atol=1e-4, rtol=1e-4)


def test_convert_tool_cli_and_bad_input(tmp_path):
    ref = torch.load(fixture_file("reference_cases", "oadtr_small.pt"), weights_only=False)
    src = tmp_path / "ref.pth"
    torch.save({"model": ref["state_dict"]}, src)
    out = subprocess.run([sys.executable, str(REPO / "tools" / "convert_reference_checkpoint.py"), str(src),
                          str(tmp_path / "c.ckpt"), "num_heads=8"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "OadTR" in out.stdout and (tmp_path / "c.ckpt").is_file()
    torch.save({"model": {"foo.weight": torch.zeros(2)}}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth: neither an OadTR nor a TRN"):
        convert_reference_checkpoint(tmp_path / "bad.pth", tmp_path / "x.ckpt")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        convert_reference_checkpoint(tmp_path / "missing.pth", tmp_path / "x.ckpt")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth: cannot be read"):
        load_network(tmp_path / "garbage.pth")
