"""Peak memory and throughput of `biozoo predict` on large .npy images, in memory vs streamed, one run each.

    python benchmarks/bench_memory.py                 # 2048^2 and 8192^2
    python benchmarks/bench_memory.py --huge          # also 32768^2 (4 GiB in, 4 GiB out on disk; streamed only
                                                      # unless --huge-in-memory: it needs ~100 GB in memory)
    python benchmarks/bench_memory.py --package P.zip # another package (default: the test suite's unet2d_wide,
                                                      # a 2D U-Net with 32 channels, per-sample normalization)

before = the in-memory path as it was: the whole image, its copies and its outputs in memory, tiles of the default
tile budget (2^22 elements: one tile at 2048^2), no --memory and $BIOZOO_MEMORY_LIMIT=1PB so that nothing is
refused (--before-one-tile: `--memory 1PB` instead, one tile for the whole image: at 8192^2 the activations of a
32-channel U-Net alone are ~39 GB); after = `--memory 1.5GB`
(tiles sized from the measured activation memory; images above the budget read through np.load(mmap_mode="r") and
written tile by tile into a memory-mapped .npy). Peak RSS is the child's ru_maxrss (resource.getrusage
(RUSAGE_CHILDREN) in a fresh wrapper process per run, so runs do not mix); throughput is input megapixels per
second of wall time of the whole command (start-up and package load included). Outputs are compared exactly.
The activation measurement is made (and cached) by a `biozoo info` before the timed runs.
Numbers are from one run on this machine: compare them, do not quote them as constants.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.packages, run as a script

WRAPPER = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); "
           "p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True); "
           "print(json.dumps({'rc': p.returncode, 'wall': time.perf_counter() - t, "
           "'maxrss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, 'stderr': p.stderr[-2000:]}))")


def run(args: list[str], env: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", WRAPPER, sys.executable, "-m", "biozoo.runtime.cli", *args],
                          capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout)


def write_input(path: Path, size: int) -> None:
    """A smooth random image written band by band (the benchmark itself stays small in memory)."""
    rng = np.random.default_rng(size)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(size, size))
    band = 1024
    for y in range(0, size, band):
        rows = min(band, size - y)
        out[y:y + rows] = rng.random((rows, size), dtype=np.float32) * 200 + 10
        out.flush()
    del out


def identical(a: Path, b: Path) -> bool:
    x, y = np.load(a, mmap_mode="r"), np.load(b, mmap_mode="r")
    if x.shape != y.shape or x.dtype != y.dtype:
        return False
    band = max(1, (1 << 24) // max(1, int(np.prod(x.shape[1:]))))
    return all(np.array_equal(x[i:i + band], y[i:i + band]) for i in range(0, x.shape[0], band))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", help="a package (default: the test suite's unet2d_wide)")
    parser.add_argument("--sizes", default="2048,8192", help="image side lengths, comma separated")
    parser.add_argument("--huge", action="store_true", help="also 32768^2 (streamed only)")
    parser.add_argument("--huge-in-memory", action="store_true", help="with --huge: also the in-memory run")
    parser.add_argument("--memory", default="1.5GB", help="the budget of the 'after' runs")
    parser.add_argument("--before-one-tile", action="store_true", help="before = one tile for the whole image")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dir", help="work folder (default: a temporary one; needs 2x the images on disk)")
    args = parser.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="biozoo-bench-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "BIOZOO_CACHE_DIR": str(work / "cache")}
    package = args.package
    if package is None:
        from tests.packages import build_package

        package = str(build_package("unet2d_wide", work / "packages"))
    info = subprocess.run([sys.executable, "-m", "biozoo.runtime.cli", "info", package, "--json"], env=env,
                          capture_output=True, text=True, check=True)
    mem = json.loads(info.stdout)["memory"]
    print(f"package {package}: activations {mem['activation_bytes_per_pixel']} B/px ({mem['measured']}), "
          f"{mem['tile_bytes_per_pixel']} B/px per tile; default tile {mem.get('default_tile')}")
    sizes = [int(s) for s in args.sizes.split(",") if s] + ([32768] if args.huge else [])
    rows = []
    for size in sizes:
        image = work / f"in_{size}.npy"
        write_input(image, size)
        runs = {}
        plans = [("before", "1PB" if args.before_one_tile else None), ("after", args.memory)]
        if size >= 32768 and not args.huge_in_memory:
            plans = plans[1:]
        for label, budget in plans:
            out = work / f"out_{size}_{label}.npy"
            out.unlink(missing_ok=True)
            flags = ["--memory", budget] if budget else []
            result = run(["predict", package, str(image), "-o", str(out), "--device", args.device, "-q", *flags],
                         {**env, "BIOZOO_MEMORY_LIMIT": "1PB"} if budget is None else env)
            result.update(out=out, mpx_s=size * size / 1e6 / result["wall"], budget=budget)
            runs[label] = result
            status = "ok" if result["rc"] == 0 else f"exit {result['rc']}: {result['stderr'].strip()[-300:]}"
            print(f"{size}^2 {label:6s} --memory {budget or 'none':5s}: peak RSS {result['maxrss_kib'] / 2**20:6.2f} GiB, "
                  f"{result['wall']:7.1f} s, {result['mpx_s']:6.2f} MPx/s ({status})", flush=True)
        same = None
        if all(r["rc"] == 0 for r in runs.values()) and len(runs) == 2:
            same = identical(runs["before"]["out"], runs["after"]["out"])
            print(f"{size}^2 outputs identical: {same}; throughput after/before "
                  f"{runs['after']['mpx_s'] / runs['before']['mpx_s']:.2f}x", flush=True)
        rows.append({"size": size, "identical": same, **{k: {"peak_rss_gib": round(r["maxrss_kib"] / 2**20, 3),
                                                             "wall_s": round(r["wall"], 2),
                                                             "mpx_per_s": round(r["mpx_s"], 3), "rc": r["rc"]}
                                                         for k, r in runs.items()}})
        image.unlink()
        for r in runs.values():
            Path(r["out"]).unlink(missing_ok=True)
    print(json.dumps({"package": package, "memory": args.memory, "results": rows}))


if __name__ == "__main__":
    main()
