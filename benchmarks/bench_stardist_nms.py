"""biozoo's StarDist polygon NMS vs stardist's own C++ NMS on the same candidates: agreement and time ratio.

    python benchmarks/bench_stardist_nms.py [--repeats 5] [--package stardist.zip] [--json]

Maps: probability and ray distances of real nuclei (the stardist wheel's 512x512 image and one 700x1100 HeLa
frame): stardist's own targets from the instance masks with noise (prob + N(0, 0.05), rays x U(0.9, 1.1)), so
candidates are as many and as messy as a trained network's; with ``--package`` also the maps a trained StarDist
package predicts for its test image. Agreement: identical kept points, scores and distances, and identical label
images (``polygons_to_label``). Times: the NMS call only (candidates, sorting and suppression; both libraries do
the same work), best of ``--repeats`` interleaved runs; biozoo with numba (its default when installed) and without
(the vectorized numpy path); stardist once with OpenMP on 2 threads (its default on a 2-core machine) and once on
1. One run on this machine: compare the ratios, not the absolute times.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import time
from pathlib import Path

import numpy as np

from biozoo.runtime.ops import stardist as ours

CASES = ((0.5, 0.4), (0.3, 0.3))


def _omp_set_threads(n: int) -> bool:
    """Set the OpenMP thread count of the libgomp that stardist's extension loaded (no threadpoolctl needed)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        if "libgomp" in line:
            ctypes.CDLL(line.split()[-1]).omp_set_num_threads(int(n))
            return True
    return False


def ground_truth_maps(dataset: str, seed: int = 0):
    import tifffile
    from stardist import star_dist
    from stardist.utils import edt_prob

    from biozoo.zoo.data import fetch_dataset

    folder = fetch_dataset(dataset)
    name = sorted((folder / "masks").glob("*.tif"))[0]
    labels = np.asarray(tifffile.imread(name)).astype(np.int32)
    rng = np.random.default_rng(seed)
    prob = np.clip(edt_prob(labels) + rng.normal(0, 0.05, labels.shape), 0, 1).astype(np.float32)
    dist = (star_dist(labels, 32) * rng.uniform(0.9, 1.1, labels.shape + (32,))).astype(np.float32)
    return f"{dataset}/{name.name} (ground truth + noise, {int(labels.max())} ids)", prob, dist, (1, 1)


def package_maps(package: str):
    """The maps a StarDist package's network gives for its own test input (before the post-processing)."""
    from biozoo.runtime import load

    model = load(package, device="cpu")
    tid = model.description.inputs[0].id
    from biozoo.runtime.engine.test_tensors import load_test_tensors

    x = load_test_tensors(model, "inputs")
    maps = model.run_model_layout(x, postprocess=False)[model.description.outputs[0].id][0]
    post = next(op for op in model.postprocessing[model.description.outputs[0].id]
                if op.op_id == "stardist_postprocessing")
    axes = [a.id for a in model.network.outputs[0].axes][1:]
    maps = np.moveaxis(maps, axes.index("channel"), -1)
    label = f"{Path(package).name} network maps of its test input {tuple(x[tid].shape)}"
    return label, maps[..., 0], maps[..., 1:], post.grid


def _time(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def compare(label: str, prob, dist, grid, repeats: int) -> list[dict]:
    import stardist

    rows = []
    for prob_t, nms_t in CASES:
        kw = dict(grid=grid, b=2, nms_thresh=nms_t, prob_thresh=prob_t)
        runs = {"biozoo": lambda: ours.non_maximum_suppression(dist, prob, **kw),
                "biozoo_numpy": lambda: ours.non_maximum_suppression(dist, prob, engine="numpy", **kw),
                "stardist_2_threads": lambda: stardist.non_maximum_suppression(dist, prob, **kw),
                "stardist_1_thread": lambda: stardist.non_maximum_suppression(dist, prob, **kw)}
        times: dict[str, list[float]] = {k: [] for k in runs}
        results = {}
        for _ in range(repeats):  # interleaved, best of each
            for key, fn in runs.items():
                if key.startswith("stardist"):
                    _omp_set_threads(1 if key.endswith("1_thread") else 2)
                seconds, results[key] = _time(fn, 1)
                times[key].append(seconds)
        numpy_same = all(np.array_equal(a, b) for a, b in zip(results["biozoo_numpy"], results["stardist_2_threads"]))
        mine, ref = results["biozoo"], results["stardist_2_threads"]
        same = len(mine[0]) == len(ref[0]) and all(np.array_equal(a, b) for a, b in zip(mine, ref))
        shape = tuple(n * g for n, g in zip(prob.shape, grid))
        labels_same = np.array_equal(ours.polygons_to_label(mine[2], mine[0], shape, prob=mine[1]),
                                     stardist.polygons_to_label(ref[2], ref[0], shape, prob=ref[1]))
        best = {k: min(v) for k, v in times.items()}
        rows.append({
            "maps": label, "prob_threshold": prob_t, "nms_threshold": nms_t,
            "candidates": int((prob > prob_t).sum()), "kept_biozoo": len(mine[0]), "kept_stardist": len(ref[0]),
            "identical_kept_sets": bool(same), "identical_label_images": bool(labels_same),
            "numpy_engine_identical": bool(numpy_same),
            "seconds": {k: round(v, 4) for k, v in best.items()},
            "speedup_vs_stardist_2_threads": round(best["stardist_2_threads"] / best["biozoo"], 2),
            "speedup_vs_stardist_1_thread": round(best["stardist_1_thread"] / best["biozoo"], 2),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--package", help="a StarDist package (zip): also benchmark its network's maps")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    try:
        import stardist  # noqa: F401
    except ImportError:
        raise SystemExit("stardist is not installed (pip install stardist): nothing to compare with") from None
    sources = [ground_truth_maps("stardist-nuclei-2d"), ground_truth_maps("hela-nuclei-2d")]
    if args.package:
        sources.append(package_maps(args.package))
    rows = [r for label, prob, dist, grid in sources for r in compare(label, prob, dist, grid, args.repeats)]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    for r in rows:
        s = r["seconds"]
        print(f"{r['maps']}\n  prob > {r['prob_threshold']}, overlap > {r['nms_threshold']}: {r['candidates']} "
              f"candidates, kept {r['kept_biozoo']} (stardist {r['kept_stardist']}); identical kept sets: "
              f"{r['identical_kept_sets']}, identical labels: {r['identical_label_images']}\n"
              f"  biozoo {s['biozoo'] * 1000:.0f} ms | stardist 2 threads {s['stardist_2_threads'] * 1000:.0f} ms "
              f"(x{r['speedup_vs_stardist_2_threads']}) | stardist 1 thread {s['stardist_1_thread'] * 1000:.0f} ms "
              f"(x{r['speedup_vs_stardist_1_thread']}) | biozoo without numba {s['biozoo_numpy'] * 1000:.0f} ms "
              f"(identical: {r['numpy_engine_identical']})")


if __name__ == "__main__":
    main()
