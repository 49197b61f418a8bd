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
            enc, dec = net.forward_dense(ref["input"])  # the whole (well-conditioned) case
            torch.testing.assert_close(enc, ref["enc_scores"], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(dec, ref["dec_scores"], atol=1e-5, rtol=1e-5)


LSTR_SMALL = dict(num_heads=4, long_memory=128, long_stride=4, work_memory=8)


@pytest.mark.parametrize("case, arch, overrides", [
    ("miniroad_small.pt", None, {}),
    ("lstr_small.pt", "lstr", LSTR_SMALL),
    ("testra_small.pt", "testra", {**LSTR_SMALL, "num_heads": 8, "kernel": "laplace", "alpha": 0.97}),
])
def test_convert_successor_reference_cases(tmp_path, case, arch, overrides):
    ref = torch.load(fixture_file("reference_cases", case), weights_only=False)
    src = tmp_path / "ref.pth"
    torch.save({"model_state_dict": ref["state_dict"], "epoch": 3}, src)  # LSTR/TeSTra checkpointer layout
    info = convert_reference_checkpoint(src, tmp_path / "conv.ckpt", arch=arch, **overrides)
    net, _ = load_network(tmp_path / "conv.ckpt")
    assert type(net).__name__ == info["model"] == {"miniroad_small.pt": "MiniROAD", "lstr_small.pt": "LSTR",
                                                   "testra_small.pt": "TeSTra"}[case]
    with torch.no_grad():
        if case == "miniroad_small.pt":
            scores = torch.softmax(net.forward_dense(ref["input"]), dim=-1)
            torch.testing.assert_close(scores, ref["outputs"]["logits"], atol=1e-5, rtol=1e-5)
        else:
            x = ref["inputs"]
            long_x = torch.cat((x["visual_inputs"], x["motion_inputs"]), -1)
            n = net.num_long
            logits = net(long_x[:, :n], long_x[:, n:], x["memory_key_padding_mask"])
            torch.testing.assert_close(logits, ref["outputs"]["logits"], atol=1e-5, rtol=1e-5)


def test_lstr_family_checkpoint_needs_its_arch(tmp_path):
    ref = torch.load(fixture_file("reference_cases", "lstr_small.pt"), weights_only=False)
    torch.save({"model_state_dict": ref["state_dict"]}, tmp_path / "ref.pth")
    with pytest.raises(ValueError, match=r"arch=lstr\|testra"):
        convert_reference_checkpoint(tmp_path / "ref.pth", tmp_path / "c.ckpt", **LSTR_SMALL)


def test_convert_tool_cli_and_bad_input(tmp_path):
    ref = torch.load(fixture_file("reference_cases", "oadtr_small.pt"), weights_only=False)
    src = tmp_path / "ref.pth"
    torch.save({"model": ref["state_dict"]}, src)
    out = subprocess.run([sys.executable, str(REPO / "tools" / "convert_reference_checkpoint.py"), str(src),
                          str(tmp_path / "c.ckpt"), "num_heads=8"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "OadTR" in out.stdout and (tmp_path / "c.ckpt").is_file()
    torch.save({"model": {"foo.weight": torch.zeros(2)}}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth: not a state dict of any model that loads reference checkpoints"):
        convert_reference_checkpoint(tmp_path / "bad.pth", tmp_path / "x.ckpt")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        convert_reference_checkpoint(tmp_path / "missing.pth", tmp_path / "x.ckpt")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth: cannot be read"):
        load_network(tmp_path / "garbage.pth")
