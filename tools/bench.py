"""Benchmark of the online runner at paper size (logic in oad/bench.py); prints a table and the machine.

    .venv/bin/python tools/bench.py                 # the full run (a few minutes on 2 cores)
    .venv/bin/python tools/bench.py --quick         # smoke run, rough figures
    .venv/bin/python tools/bench.py --threads 1 --json bench.json
    .venv/bin/python tools/bench.py --threads 1 --compare-with ec12178   # A/B of the step vs a revision
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few repetitions and a 2 s video: a smoke run")
    p.add_argument("--streams", type=int, default=None, help="N of the multi-stream configuration (default 16, quick 4)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--video-seconds", type=float, default=None, help="generated video length (default 10, quick 2)")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end video run")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    p.add_argument("--compare-with", metavar="REV", default=None,
                   help="only an A/B of the batch-1 runner step: oad/streaming.py at git revision REV vs now")
    p.add_argument("--reps", type=int, default=80, help="round-robin steps of --compare-with (default 80)")
    args = p.parse_args()

    from oad.bench import compare_with_revision, format_report, run_bench

    if args.compare_with:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        print(compare_with_revision(args.compare_with, reps=args.reps))
        return

    result = run_bench(quick=args.quick, streams=args.streams, threads=args.threads, video_seconds=args.video_seconds,
                       e2e=not args.no_e2e, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(format_report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
