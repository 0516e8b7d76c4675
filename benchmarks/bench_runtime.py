"""biozoo predict vs raw onnxruntime (and bioimageio.core when installed), one run, ratios printed.

    python benchmarks/bench_runtime.py --size 2048 [--kind unet2d_wide] [--device auto]

Builds a U-Net package (32 channels at full resolution, like a real segmentation net) and runs `biozoo bench`
on it. Numbers are from this one run on this machine: compare ratios, not absolute times.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _fixtures import build_package

from biozoo.runtime import load
from biozoo.runtime.commands.bench import format_bench, run_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--kind", default="unet2d_wide")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        package = build_package(args.kind, Path(tmp), zip=True)
        result = run_bench(load(package, device=args.device), args.size, runs=args.runs, vs_core=True)
    print(json.dumps(result) if args.json else format_bench(result))


if __name__ == "__main__":
    main()
