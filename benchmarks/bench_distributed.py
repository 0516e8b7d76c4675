"""Dask scaling of `biozoo predict` on an OME-Zarr image, one run each:

    python benchmarks/bench_distributed.py                  # 8192^2, the test suite's unet2d_wide, --tile 1024
    python benchmarks/bench_distributed.py --size 4096 --package P.zip --tile 512

Three runs of the same command on the same input, every one with one onnxruntime thread per process:
  in-process   `--threads 1`                       (the in-process tiled path: whole image in memory, tiles)
  1 worker     `--workers 1 --threads 1`           (a LocalCluster of one worker process)
  2 workers    `--workers 2 --threads 1`
and prints wall times (the whole command: start-up, package load, the statistics pre-pass, the cluster's start),
the block phase of the Dask runs (from the run's summary), the ratios 2 workers / 1 worker and 1 worker /
in-process, peak RSS of the largest process, and whether the outputs are identical. Numbers are from one run on
this machine: compare them, do not quote them as constants.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.packages, run as a script

WRAPPER = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); "
           "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
           "print(json.dumps({'rc': p.returncode, 'wall': time.perf_counter() - t, 'stdout': p.stdout, "
           "'maxrss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, 'stderr': p.stderr[-2000:]}))")


def run(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, "-c", WRAPPER, sys.executable, "-m", "biozoo.runtime.cli", *args],
                          capture_output=True, text=True, check=True)
    result = json.loads(done.stdout)
    if result["rc"] != 0:
        raise SystemExit(f"biozoo {' '.join(args)} failed:\n{result['stderr']}")
    return result


def write_ome_zarr(path: Path, size: int) -> None:
    """A random image written band by band as OME-Zarr (NGFF 0.5, through biozoo's own writer)."""
    from biozoo.runtime.commands.lazyio import create_output

    rng = np.random.default_rng(size)
    out = create_output(path, (size, size), np.float32, "yx", {"y": 0.5, "x": 0.5})
    for y in range(0, size, 1024):
        rows = min(1024, size - y)
        out[y:y + rows, :] = rng.random((rows, size), dtype=np.float32) * 200 + 10
    out.close()


def level0(path: Path) -> np.ndarray:
    import zarr

    group = zarr.open_group(path, mode="r")
    return np.asarray(group[group.attrs["ome"]["multiscales"][0]["datasets"][0]["path"]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--package", help="a model package (default: the test suite's unet2d_wide)")
    parser.add_argument("--work", help="folder for the input and outputs (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="biozoo-bench-dask-"))
    work.mkdir(parents=True, exist_ok=True)
    package = args.package
    if package is None:
        from tests import packages

        package = str(packages.build_package("unet2d_wide", work / "packages"))
    image = work / f"in{args.size}.ome.zarr"
    if not image.exists():
        started = time.perf_counter()
        write_ome_zarr(image, args.size)
        print(f"input: {image} ({args.size}^2 float32, {time.perf_counter() - started:.1f} s to write)")
    subprocess.run([sys.executable, "-m", "biozoo.runtime.cli", "info", package], capture_output=True, check=True)
    common = ["predict", package, str(image), "--device", "cpu", "--tile", f"{args.tile},{args.tile}", "--threads",
              "1", "--overwrite", "--json", "-q"]
    runs = {}
    for name, extra in (("in-process", []), ("1 worker", ["--workers", "1"]), ("2 workers", ["--workers", "2"])):
        out = work / f"out-{name.replace(' ', '-')}.ome.zarr"
        result = run([*common, "-o", str(out), *extra])
        summary = json.loads(result["stdout"])["items"][0].get("distributed")
        runs[name] = (result, summary, out)
        blocks = f", blocks {summary['seconds']:.1f} s ({summary['blocks']} blocks, {summary['mpx_per_s']} MPx/s)" \
            if summary else ""
        print(f"{name:>10}: {result['wall']:.1f} s wall{blocks}, peak RSS {result['maxrss_kib'] / 2**20:.2f} GiB")
        if summary:
            phases = ", ".join(f"{k} {v:.1f} s" for k, v in summary["driver_seconds"].items())
            print(f"            driver: {phases}")
    (one, s1, o1), (two, s2, o2), (inproc, _, o0) = runs["1 worker"], runs["2 workers"], runs["in-process"]
    print(f"2 workers / 1 worker: {one['wall'] / two['wall']:.2f}x wall, {s1['seconds'] / s2['seconds']:.2f}x blocks")
    print(f"1 worker vs in-process: {one['wall'] / inproc['wall']:.3f}x wall (Dask overhead "
          f"{(one['wall'] / inproc['wall'] - 1) * 100:+.1f}%)")
    a, b, c = level0(o0), level0(o1), level0(o2)
    print(f"outputs identical: 1 vs 2 workers {np.array_equal(b, c)}, in-process vs 1 worker {np.array_equal(a, b)}")


if __name__ == "__main__":
    main()
