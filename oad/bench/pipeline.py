"""Which configuration keeps up with live video (``tools/bench.py --pipeline``): the per-chunk cost of each
stage of the live pipeline, for a few feature configurations, at 1 and ``N`` streams.

Stages, each timed on its own (:func:`oad.timing.round_robin` over the configurations, so a change of the
machine's load hits them alike), per *tick* (one chunk of every stream):

- **decode**: PyAV decoding of a generated video (MPEG-4 part 2, 25 fps by default), every frame decoded and
  converted to RGB as a live source does, one decoder per stream (CPU);
- **rgb backbone**: resize/crop/normalise of each stream's middle frame and the RGB backbone, the ``N``
  streams in one batch;
- **optical flow**: Farneback fields of ``pairs`` consecutive frame pairs per stream (:mod:`oad.video.flow`,
  OpenCV, CPU), and **flow backbone**: the motion stream's network, batched;
- **online step**: the registry's model at its paper size (OadTR by default) with the configuration's
  ``in_dim`` and precision, window full (the steady state), the ``N`` streams in one batched step.

The tick's cost is the sum of the stages' medians: stages run one after the other (a pipeline that
decodes in its own thread overlaps decoding with the rest, so this is the cost's upper end). The real-time
factor is the chunk's seconds over that cost (>= 1: keeps up); the streams sustained are the most streams
whose tick still fits in one chunk period, from the 1- and ``N``-stream costs (linear in the streams).
With ``e2e``, the real-time preset (``configs/preset/realtime_cpu.yaml``) also runs through the whole live
pipeline (``tools/stream.py sources=[...]``, decode to events: :func:`end_to_end`) at 1 and ``N`` streams,
read as fast as it goes (the real-time factor) and paced at real time (drops and latency).

Random weights throughout: cost does not depend on them, and no accuracy is measured here.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from oad.bench.common import load_line, machine_info
from oad.timing import device_sync, round_robin

__all__ = ["PRESET", "PipelineConfig", "configurations", "format_table", "run"]

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
PRESET = "realtime_cpu"  # configs/preset/<PRESET>.yaml: the configuration that keeps up on a 2-core CPU
RATE = 4.0  # chunks per second (THUMOS'14's rate in LSTR/TeSTra and the checkpoints' default)


@dataclass(frozen=True)
class PipelineConfig:
    """One feature configuration of the live pipeline (the ``backbone``/``flow``/``resize``/``crop`` keys of
    ``configs/stream.yaml``)."""

    name: str
    backbone: str
    flow: bool
    resize: int
    crop: int
    flow_backbone: str | None = None
    pairs: int = 5
    precision: str = "fp32"  # of the online step: fp32 | bf16 | int8 (int8: CPU only, fp32 elsewhere)


def preset_config(name: str = PRESET) -> PipelineConfig:
    """The configuration of ``configs/preset/<name>.yaml`` (what ``tools/stream.py +preset=<name>`` runs)."""
    from omegaconf import OmegaConf

    p = OmegaConf.load(REPO / "configs" / "preset" / f"{name}.yaml")
    flow = bool(p.get("flow", False))
    return PipelineConfig(f"preset {name}", p.backbone.name, flow, int(p.resize), int(p.crop),
                          p.get("flow_backbone", {}).get("name") if flow else None,
                          precision=p.get("precision") or "fp32")


def configurations() -> list[PipelineConfig]:
    """The published features' layout (ResNet-50 RGB + flow), a lighter two-stream one (ResNet-18) and the
    real-time preset (a mobile backbone, RGB only)."""
    return [PipelineConfig("resnet50 rgb+flow (published layout)", "resnet50", True, 256, 224, "resnet50"),
            PipelineConfig("resnet18 rgb+flow", "resnet18", True, 256, 224, "resnet18"),
            preset_config()]


# ---------------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------------


def decode_all(path: Path) -> tuple[list[np.ndarray], list[float], float]:
    """Every frame of the video (RGB uint8), their times and the seconds decoding took."""
    import av

    frames, times = [], []
    t0 = time.perf_counter()
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            frames.append(f.to_ndarray(format="rgb24"))
            times.append(float(f.time))
    return frames, times, time.perf_counter() - t0


def decode_cost(path: Path, streams: int, chunks: int, reps: int) -> dict[str, Any]:
    """Seconds per tick of decoding ``streams`` streams (one decoder each): the median over ``reps`` passes of
    the whole video, each pass ``streams`` decodes, divided by the video's chunks."""
    passes = [sum(decode_all(path)[2] for _ in range(streams)) / chunks for _ in range(reps)]
    return {"median_s": statistics.median(passes), "min_s": min(passes), "n": len(passes)}


class _Ticks:
    """The inputs of one configuration's stages: each call takes the next chunk (cycling through the video)
    for every one of ``streams`` streams."""

    def __init__(self, frames: list[np.ndarray], times: list[float], cfg: PipelineConfig, streams: int,
                 device: torch.device, model: str, tiny: bool):
        from oad.models import registry
        from oad.online import OnlineDetector
        from oad.video.backbones import build_backbone
        from oad.video.decode import motion_indices

        self.cfg, self.n, self.device = cfg, streams, device
        t = np.asarray(times)
        chunks = max(1, int(math.floor(t[-1] * RATE)))
        mids = [int(np.argmin(np.abs(t - (i + 0.5) / RATE))) for i in range(chunks)]
        self.middle = [frames[m] for m in mids]
        self.motion = [np.stack([frames[j] for j in motion_indices(m, cfg.pairs + 1, len(frames))]) for m in mids]
        self.i = 0
        self.rgb = build_backbone(cfg.backbone, "random", True).to(device)
        self.flow = (build_backbone(cfg.flow_backbone or cfg.backbone, "random", True, in_channels=2 * cfg.pairs)
                     .to(device) if cfg.flow else None)
        self.in_dim = self.rgb.dim + (self.flow.dim if self.flow is not None else 0)
        entry = registry.get(model)
        net = (registry.tiny_model(model, in_dim=self.in_dim) if tiny
               else entry.build_paper(in_dim=self.in_dim).eval().requires_grad_(False))
        precision = cfg.precision if cfg.precision != "int8" or device.type == "cpu" else "fp32"
        self.model = f"{type(net).__name__} ({'tiny' if tiny else 'paper size'}, in_dim {self.in_dim}, {precision})"
        self.det = OnlineDetector(net, dtype={"fp32": torch.float32, "bf16": torch.bfloat16, "int8": "int8"}[precision],
                                  device=device)
        gen = torch.Generator().manual_seed(0)
        window = getattr(net, "window", None) or 64
        with torch.inference_mode():
            self.det.prime(torch.randn(streams, window, self.in_dim, generator=gen).to(device))  # the steady state
        self.x = torch.randn(streams, self.in_dim, generator=gen).to(device)
        self.stacks: torch.Tensor | None = None

    def _next(self) -> int:
        self.i = (self.i + 1) % len(self.middle)
        return self.i

    @torch.inference_mode()
    def rgb_stage(self) -> None:
        from oad.video.backbones import normalize_rgb, resize_crop

        frames = np.stack([self.middle[self._next()]] * self.n)  # (N, H, W, 3)
        x = normalize_rgb(resize_crop(frames, self.cfg.resize, self.cfg.crop)).to(self.device)
        self.rgb(x)

    def flow_stage(self) -> None:
        from oad.video.backbones import resize_crop
        from oad.video.flow import stacked_flow

        motion = self.motion[self._next()]
        small = resize_crop(motion, self.cfg.resize, self.cfg.crop).round().to(torch.uint8)
        small = small.permute(0, 2, 3, 1).numpy()  # (K+1, 3, h, w) -> (K+1, h, w, 3)
        self.stacks = torch.from_numpy(np.stack([stacked_flow(small) for _ in range(self.n)]))  # (N, 2K, h, w)

    @torch.inference_mode()
    def flow_backbone_stage(self) -> None:
        if self.stacks is None:
            self.flow_stage()
        self.flow(self.stacks.to(self.device))

    def step_stage(self) -> None:
        self.det.step(self.x)

    def stages(self) -> dict[str, Callable[[], Any]]:
        out = {"rgb backbone": self.rgb_stage}
        if self.flow is not None:
            out["optical flow"] = self.flow_stage
            out["flow backbone"] = self.flow_backbone_stage
        out["online step"] = self.step_stage
        return out


# ---------------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------------


def _sustained(cost1: float, costn: float, n: int, period: float) -> int:
    """Most streams whose tick fits in ``period``: cost linear in the streams through the 1- and ``n``-stream
    costs (proportional when ``n`` is 1)."""
    if cost1 > period:
        return 0
    if n <= 1:
        return max(1, int(math.floor(period / cost1 + 1e-9)))
    slope = max((costn - cost1) / (n - 1), 1e-9)
    return max(1, int(math.floor(1 + (period - cost1) / slope + 1e-9)))


def end_to_end(video: Path, cfg: PipelineConfig, model: str, tiny: bool, workdir: Path,
               streams: tuple[int, ...] = (1, 4)) -> list[dict[str, Any]]:
    """The preset through the whole live pipeline (``tools/stream.py +preset=... sources=[...]``: PyAV
    decoding threads, bounded queues, the backbone, the stream pool, events, the output files) on the bench's
    video, with random weights. For each ``N`` in ``streams``: ``N`` copies read as fast as the pipeline
    takes them (``realtime=false``: the real-time factor, stream seconds per wall second, of the slowest
    stream), then the same ``N`` paced at the video's own timestamps as cameras deliver them
    (``realtime=true``: dropped chunks and the latency from a chunk's last frame to its scores).

    Returns:
        One row per ``N`` and pacing: ``configuration, model, streams, realtime, chunks`` (per stream),
        ``video_s, wall_s, real_time_factor`` (the slowest stream's), ``dropped, latency_s`` (p50/p95/max).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from oad.checkpoint import save_network
    from oad.models import registry
    from oad.tasks.streaming import stream
    from oad.video.backbones import build_backbone

    dim = build_backbone(cfg.backbone, "random", True).dim
    entry = registry.get(model)
    net = registry.tiny_model(model, in_dim=dim) if tiny else entry.build_paper(in_dim=dim)
    config = {"_target_": entry.target, "in_dim": dim, "num_classes": 22,
              **(dict(entry.cls.tiny) if tiny else dict(entry.config))}
    names = ["Background"] + [f"action_{i}" for i in range(1, 21)] + ["Ambiguous"]
    ckpt = workdir / "model.ckpt"
    save_network(ckpt, net, config, {"class_names": names, "ignore_index": 21, "fps": RATE, "stream_dims": [dim]})
    rows = []
    for n in streams:
        copies = []
        for i in range(n):  # one file per stream: each source its own decoder and name
            copies.append(workdir / f"e2e_{i}{video.suffix}")
            if not copies[-1].exists():
                os.link(video, copies[-1])
        for realtime in (False, True):
            out = workdir / f"e2e_{n}_{'paced' if realtime else 'fast'}"
            overrides = [f"+preset={PRESET}", "sources=[" + ",".join(str(c) for c in copies) + "]",
                         f"realtime={str(realtime).lower()}", f"ckpt_path={ckpt}", "backbone.weights=random",
                         "backbone.allow_random=true", "progress=false", "plot=false", f"output_dir={out}",
                         f"paths.output_dir={out}"]
            if tiny:
                overrides += [f"resize={cfg.resize}", f"crop={cfg.crop}"]
            if GlobalHydra.instance().is_initialized():
                composed = compose("stream", overrides=overrides)
            else:
                with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
                    composed = compose("stream", overrides=overrides)
            res = stream(composed)
            per = list(res["streams"].values())
            o = res["overall"]
            rows.append({"configuration": cfg.name, "model": f"{type(net).__name__} in_dim {dim}, {res['meta']['precision']}",
                         "streams": n, "realtime": realtime, "chunks": min(s["chunks"] for s in per),
                         "video_s": min(s["stream_s"] for s in per), "wall_s": o["wall_s"],
                         "real_time_factor": min(s["real_time_factor"] for s in per),
                         "dropped": o["dropped_chunks"], "latency_s": o["latency_s"]})
    return rows


def run(streams: int = 4, reps: int = 10, video_seconds: float = 6.0, size: tuple[int, int] = (640, 360),
        fps: int = 25, configs: list[PipelineConfig] | None = None, model: str = "oadtr", tiny: bool = False,
        e2e: bool = True, e2e_seconds: float = 30.0, devices: list[str] | None = None,
        log: Callable[[str], None] = logger.info) -> dict[str, Any]:
    """Measure every stage of every configuration at 1 and ``streams`` streams on each device.

    Args:
        streams: ``N`` of the multi-stream rows.
        reps: timed rounds per stage (after one untimed).
        video_seconds, size, fps: the generated video.
        configs: the configurations (default :func:`configurations`).
        model: the registry's model of the online step.
        tiny: the registry's tiny model instead of the paper-size one (a smoke run: figures mean nothing).
        e2e: also run the preset through the whole live pipeline (:func:`end_to_end`, 1 and ``streams`` streams),
            on a video of ``e2e_seconds`` (long enough
            that loading the model and the first steps weigh little in its real-time factor).
        devices: where the backbones and the step run (default: the CPU, and CUDA when available);
            decoding and optical flow are on the CPU.
        log: progress messages.

    Returns:
        The figures; :func:`format_table` prints them.
    """
    from oad.bench.streaming import write_test_video

    configs = configs or configurations()
    devices = devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    counts = sorted({1, int(streams)})
    period = 1.0 / RATE
    t_all = time.perf_counter()
    result: dict[str, Any] = {"machine": machine_info(), "rate": RATE, "streams": counts, "reps": reps,
                              "model": model, "tiny": tiny, "rows": [], "configs": [asdict(c) for c in configs]}
    if any(d.startswith("cuda") for d in devices):
        result["machine"]["cuda"] = torch.cuda.get_device_name(0)
    with tempfile.TemporaryDirectory(prefix="oad_pipeline_") as tmp:
        video = write_test_video(Path(tmp) / "bench.mp4", video_seconds, fps=fps, size=size)
        frames, times, _ = decode_all(video)
        chunks = max(1, int(math.floor(times[-1] * RATE)))
        result["video"] = {"seconds": video_seconds, "size": list(size), "fps": fps, "codec": "mpeg4",
                           "frames": len(frames), "chunks": chunks}
        log("decode ...")
        decode = {n: decode_cost(video, n, chunks, max(2, reps // 3)) for n in counts}
        result["decode"] = {str(n): v for n, v in decode.items()}
        for device in devices:
            dev = torch.device(device)
            for n in counts:
                log(f"{device}, {n} stream(s): building {len(configs)} configurations ...")
                ticks = {c.name: _Ticks(frames, times, c, n, dev, model, tiny) for c in configs}
                fns = {(c, s): fn for c, t in ticks.items() for s, fn in t.stages().items()}
                log(f"{device}, {n} stream(s): timing {len(fns)} stages ...")
                timed = round_robin(fns, reps, sync=device_sync(dev))
                for c in configs:
                    stages = {"decode": decode[n]["median_s"]}
                    stages.update({s: statistics.median(v) for (cn, s), v in timed.items() if cn == c.name})
                    total = sum(stages.values())
                    result["rows"].append({"configuration": c.name, "device": device, "streams": n,
                                           "model": ticks[c.name].model, "stages_s": stages, "tick_s": total,
                                           "chunk_s": total / n, "real_time_factor": period / total})
                del ticks, fns
        for device in devices:
            for c in configs:
                rows = [r for r in result["rows"] if r["configuration"] == c.name and r["device"] == device]
                one, many = rows[0], rows[-1]
                for r in rows:
                    r["streams_sustained"] = _sustained(one["tick_s"], many["tick_s"], many["streams"], period)
        if e2e:
            log(f"preset {PRESET} through the streaming task (decode to events) on a {e2e_seconds:g} s video ...")
            preset = next((c for c in configs if c.name == f"preset {PRESET}"), preset_config())
            long_video = write_test_video(Path(tmp) / "e2e.mp4", e2e_seconds, fps=fps, size=size)
            result["end_to_end"] = end_to_end(long_video, preset, model, tiny, Path(tmp),
                                              streams=tuple(sorted({1, int(streams)})))
    try:
        result["machine"]["loadavg_after"] = os.getloadavg()
    except OSError:
        pass
    result["total_s"] = time.perf_counter() - t_all
    return result


STAGES = ("decode", "rgb backbone", "optical flow", "flow backbone", "online step")


def format_table(r: dict[str, Any]) -> str:
    """The printed table: machine, video, then one row per configuration, device and streams."""
    m, v = r["machine"], r["video"]
    lines = [
        f"oad live pipeline benchmark{' (--tiny: smoke run, figures mean nothing)' if r['tiny'] else ''}  {m['date']}",
        f"machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch threads {m['torch_threads']}, {m['platform']}"
        + (f"; GPU {m['cuda']}" if m.get("cuda") else "; no GPU"),
        f"versions: python {m['python']}, torch {m['torch']}, numpy {m['numpy']}",
        load_line(m),
        f"video: {v['size'][0]}x{v['size'][1]} at {v['fps']} fps ({v['codec']}, PyAV), {v['seconds']:g} s, "
        f"{r['rate']:g} chunks/s ({1e3 / r['rate']:.0f} ms of video per chunk); RANDOM weights (cost only: "
        "no accuracy is measured here)",
        f"online step: {r['model']}; one tick = one chunk of every stream; the stages are summed (run one after "
        "the other); median of " + f"{r['reps']} round-robin rounds",
        "",
    ]
    head = (f"{'configuration':<38} {'device':<6} {'N':>3} " + " ".join(f"{s:>13}" for s in STAGES)
            + f" {'ms/tick':>9} {'ms/chunk':>9} {'RTF':>6} {'streams':>8}")
    lines += [head, f"{'':<38} {'':<6} {'':>3} " + " ".join(f"{'ms/tick':>13}" for _ in STAGES)
              + f" {'':>9} {'':>9} {'':>6} {'in RT':>8}"]
    for row in r["rows"]:
        st = row["stages_s"]
        cells = " ".join(f"{1e3 * st[s]:13.1f}" if s in st else f"{'-':>13}" for s in STAGES)
        lines.append(f"{row['configuration'][:38]:<38} {row['device']:<6} {row['streams']:>3} {cells} "
                     f"{1e3 * row['tick_s']:9.1f} {1e3 * row['chunk_s']:9.1f} {row['real_time_factor']:6.2f} "
                     f"{row['streams_sustained']:>8}")
    lines += ["", "RTF: real-time factor, the chunk's seconds / the tick's cost (>= 1 keeps up with every stream); "
              "streams in RT: the most streams whose tick fits in a chunk period (linear in N through the 1- and "
              "N-stream costs)"]
    models = sorted({f"{row['configuration']}: {row['model']}" for row in r["rows"]})
    lines += ["online step models: " + "; ".join(models)]
    e2e_lines = []
    for e in r.get("end_to_end") or []:
        lat = e["latency_s"] or {}
        ms = " / ".join(f"{1e3 * lat[k]:.0f}" if lat.get(k) is not None else "-" for k in ("p50", "p95", "max"))
        e2e_lines += [f"whole pipeline, {e['configuration']} (tools/stream.py +preset={PRESET}, decode to events, "
                  f"{e['model']}), {e['streams']} stream(s) {'paced at real time' if e['realtime'] else 'as fast as it can'}: "
                  f"{e['chunks']} chunks of a {e['video_s']:.1f} s video per stream in {e['wall_s']:.2f} s, "
                  f"real-time factor {e['real_time_factor']:.2f} (slowest stream), {e['dropped']} dropped, "
                  f"latency p50/p95/max {ms} ms"]
    if e2e_lines:
        lines += ["", *e2e_lines]
    lines.append(f"total {r['total_s']:.0f} s")
    return "\n".join(lines)
