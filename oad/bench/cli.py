"""Benchmark of the online steps at paper size: a table of latencies, FLOPs and the machine
(``tools/bench.py``, the console script ``oad-bench``).

Options: ``--help``. By default the streaming runner's benchmark (``oad.bench.streaming``); ``--models``
every model's step side by side (``oad.bench.models``); ``--int8`` fp32 / bf16 / int8 (``oad.bench.int8``);
``--pipeline`` each stage of the live pipeline per configuration, at 1 and N streams (``oad.bench.pipeline``).
Figures recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import torch

from oad.bench import int8, models, pipeline, streaming


def progress(message: str) -> None:
    """Progress messages go to stderr, so stdout holds the table alone."""
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmark, print its table (and write its figures as JSON with ``--json``)."""
    p = argparse.ArgumentParser(prog="tools/bench.py", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few repetitions and a 2 s video: a smoke run")
    p.add_argument("--streams", type=int, default=None,
                   help="N of the multi-stream configuration (default 16, quick 4; --pipeline: 4)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--video-seconds", type=float, default=None,
                   help="generated video length (default 10, quick 2; --pipeline: 6)")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end video run (--pipeline: of the preset)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    p.add_argument("--models", action="store_true",
                   help="only every model's online step side by side (oad.bench.models): GFLOP/chunk and ms")
    p.add_argument("--reps", type=int, default=None,
                   help="--models, --int8 (default 20), --pipeline (default 10): round-robin steps per configuration "
                   "(--int8: at batch 1; max(3, reps // 4) with --streams streams)")
    p.add_argument("--dtypes", default="fp32,bf16", help="--models: comma-separated dtypes (fp32, bf16)")
    p.add_argument("--only", default=None,
                   help="--models: comma-separated name prefixes of the models to run (default: all), e.g. OadTR,TeSTra")
    p.add_argument("--list-models", action="store_true",
                   help="print the models --models would run (with --only: those it keeps) and exit")
    p.add_argument("--int8", action="store_true",
                   help="only fp32 / bf16 / int8 OadTR steps side by side at paper size (oad.bench.int8)")
    p.add_argument("--int8-ckpt", type=Path, default=None,
                   help="--int8: also int8 vs fp32 agreement and test mAP of this trained checkpoint")
    p.add_argument("--int8-onnx", action="store_true",
                   help="--int8: also time the ONNX fp32 / int8 (onnxruntime quantize_dynamic) steps")
    p.add_argument("--int8-models", action="store_true",
                   help="--int8: also every model's step at paper size, fp32 vs int8 at batch 1")
    p.add_argument("--pipeline", action="store_true",
                   help="only the live pipeline's stages (decode, backbone, optical flow, online step) per "
                        "configuration at 1 and --streams streams, and the real-time preset end to end "
                        "(oad.bench.pipeline)")
    p.add_argument("--video-size", default="640x360", help="--pipeline: the generated video's WxH (default 640x360)")
    p.add_argument("--tiny", action="store_true",
                   help="a smoke run of the code (figures mean nothing): the streaming benchmark on OadTR's tiny "
                        "test size; --pipeline: tiny frames, backbone input and model")
    args = p.parse_args(argv)
    only = [x.strip() for x in args.only.split(",") if x.strip()] if args.only else None
    if args.list_models:
        print("\n".join(models.model_list(only)))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict[str, Any]
    if args.pipeline:
        w, h = (int(x) for x in args.video_size.lower().split("x"))
        configs = None
        if args.tiny:  # every configuration on tiny frames
            configs = [dataclasses.replace(c, resize=40, crop=32) for c in pipeline.configurations()]
        reps = 3 if args.quick or args.tiny else (args.reps or 10)
        result = pipeline.run(streams=args.streams or 4, reps=reps,
                              video_seconds=args.video_seconds or (2.0 if args.quick or args.tiny else 6.0),
                              size=(w, h), configs=configs, tiny=args.tiny, e2e=not args.no_e2e,
                              e2e_seconds=2.0 if args.quick or args.tiny else 30.0, log=progress)
        print(pipeline.format_table(result))
    elif args.int8 or args.int8_ckpt:
        result = int8.run(streams=(1, args.streams or 16), reps=args.reps or 20, onnx=args.int8_onnx, models=args.int8_models,
                          ckpt=str(args.int8_ckpt) if args.int8_ckpt else None, log=progress)
        print(int8.format_table(result))
    elif args.models:
        chosen = models.paper_models()
        if only:
            chosen = {k: v for k, v in chosen.items() if any(k.startswith(x) for x in only)}
        result = models.run(reps=args.reps or 20, dtypes=tuple(args.dtypes.split(",")), models=chosen, log=progress)
        print(models.format_table(result))
    else:
        result = streaming.run_bench(quick=args.quick or args.tiny, streams=args.streams,
                                     video_seconds=args.video_seconds, e2e=not args.no_e2e, tiny=args.tiny, log=progress)
        print(streaming.format_report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0
