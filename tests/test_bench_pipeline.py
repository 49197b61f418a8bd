"""``tools/bench.py --pipeline`` (oad/bench/pipeline.py) at tiny size: every stage row of every configuration
is printed with positive figures, and the real-time preset composes into the streaming task and runs
(structure only: no timing threshold)."""

from __future__ import annotations

import re

import pytest

from oad.bench import cli, pipeline


def test_the_preset_is_the_mobile_rgb_configuration():
    p = pipeline.preset_config()
    assert p.name == "preset realtime_cpu" and p.backbone == "mobilenet_v3_small" and not p.flow
    assert p.crop <= p.resize < 224  # smaller frames than the published features' 256/224
    assert [c.flow for c in pipeline.configurations()] == [True, True, False]


@pytest.mark.parametrize("task", ["stream", "extract"])
def test_the_preset_composes_for_streaming_and_extraction(task, tmp_path):
    """The same ``+preset=realtime_cpu`` makes the checkpoint's features and streams with them."""
    from tests.conftest import compose_cfg

    args = ["ckpt_path=c.ckpt"] if task == "stream" else ["videos=v", "output=o"]
    cfg = compose_cfg(task, ["+preset=realtime_cpu", *args], tmp_path)
    p = pipeline.preset_config()
    assert (cfg.backbone.name, cfg.flow, cfg.resize, cfg.crop) == (p.backbone, p.flow, p.resize, p.crop)
    assert cfg.precision == p.precision == "int8"


def test_pipeline_bench_prints_every_stage_row(capsys, tmp_path):
    pytest.importorskip("av")
    json_path = tmp_path / "pipeline.json"
    assert cli.main(["--pipeline", "--tiny", "--streams", "2", "--threads", "1", "--json", str(json_path)]) == 0
    out = capsys.readouterr().out
    assert "oad live pipeline benchmark (--tiny" in out and "RANDOM weights" in out and "machine: " in out
    assert "torch 2" in out and "torch threads 1" in out
    rows = [line for line in out.splitlines() if re.match(r"^(resnet|preset)", line)]
    names = [c.name for c in pipeline.configurations()]
    assert len(rows) == len(names) * 2  # every configuration at 1 and 2 streams, on the CPU (+ CUDA if any)
    for line, (n, name) in zip(rows, [(n, c) for n in (1, 2) for c in names]):
        assert line.startswith(name[:38]), (line, name)
        cells = line[38:].split()
        assert cells[0] == "cpu" and int(cells[1]) == n
        stages = cells[2:7]
        two_stream = "flow" in name
        assert (stages[2] == "-") == (not two_stream) and (stages[3] == "-") == (not two_stream)
        for value in [s for s in stages if s != "-"] + cells[7:10]:
            assert float(value) > 0, line
        assert int(cells[10]) >= 0
    e2e = re.findall(r"whole pipeline, preset realtime_cpu .*?, (\d+) stream\(s\) (as fast as it can|paced at real "
                     r"time): (\d+) chunks of a ([\d.]+) s video per stream .* real-time factor ([\d.]+) .*, (\d+) "
                     r"dropped, latency p50/p95/max (\d+) / (\d+) / (\d+) ms", out)
    assert [(int(n), how[:2]) for n, how, *_ in e2e] == [(1, "as"), (1, "pa"), (2, "as"), (2, "pa")], out
    for _, _, chunks, seconds, rtf, dropped, p50, p95, top in e2e:  # 2 s at 4 chunks/s, every stream
        assert int(chunks) == 8 and float(seconds) == pytest.approx(2.0, abs=0.1) and float(rtf) > 0
        assert int(p50) <= int(p95) <= int(top) and 0 <= int(dropped) <= 2 * 8

    import json

    r = json.loads(json_path.read_text())
    assert r["tiny"] and r["streams"] == [1, 2] and len(r["rows"]) == 6
    for row in r["rows"]:
        assert row["tick_s"] == pytest.approx(sum(row["stages_s"].values()))
        assert row["real_time_factor"] == pytest.approx(0.25 / row["tick_s"])
        assert row["chunk_s"] == pytest.approx(row["tick_s"] / row["streams"])


def test_streams_sustained_is_linear_in_the_streams():
    assert pipeline._sustained(0.3, 0.6, 4, 0.25) == 0  # one stream does not keep up
    assert pipeline._sustained(0.1, 0.16, 4, 0.25) == 8  # 0.1 + 0.02 (n - 1) <= 0.25 up to n = 8
    assert pipeline._sustained(0.05, 0.05, 1, 0.25) == 5
