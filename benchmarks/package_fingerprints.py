"""Fingerprints of one fixed run per task: train (seeded, one thread), export, hash every file.

A refactor that claims "behaviour unchanged" runs this before and after and compares the two JSON files:
- the run dirs' deterministic files (recipe, split, stats, receptive field, test metrics) must be equal;
- the packages exported from the SAME run dirs must be byte-identical (zip sha256).

    python benchmarks/package_fingerprints.py --work /tmp/fp --out before.json            # trains + exports
    python benchmarks/package_fingerprints.py --work /tmp/fp --out after.json --reuse-runs # exports old runs again
    python benchmarks/package_fingerprints.py --compare before.json after.json

``--reuse-runs`` exports the run dirs already in --work (so trainer changes cannot hide exporter changes), and
trains a second copy under --work/retrained to fingerprint the trainers.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import zipfile
from pathlib import Path

RUN_FILES = ("recipe.yaml", "split.json", "stats.json", "receptive_field.json", "test_metrics.json")
QUICK = {"epochs": 2, "steps_per_epoch": 3, "threads": 1}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _disks(root: Path) -> Path:
    import numpy as np
    import tifffile

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :96]
    for i in range(14):
        lab = np.zeros((96, 96), np.int32)
        for k in range(1, 7):
            cy, cx, r = rng.uniform(0, 96), rng.uniform(0, 96), rng.uniform(5, 9)
            lab[((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) & (lab == 0)] = k
        image = (lab > 0) * 200.0 + 20 + rng.normal(0, 8, lab.shape)
        tifffile.imwrite(root / "images" / f"d{i:02d}.tif", image.astype(np.float32))
        tifffile.imwrite(root / "masks" / f"d{i:02d}.tif", lab)
    return root


def _recipes(data: Path) -> dict:
    from biozoo.specs import recipe_path
    from biozoo.zoo.config import load_recipe, parse_recipe

    out = {}
    for name in ("unet-nuclei-2d", "care-nuclei-2d", "n2v-nuclei-2d"):
        r = load_recipe(recipe_path(name))
        out[r.task] = r.model_copy(update={"training": r.training.model_copy(update=QUICK)})
    tiny = {"batch_size": 4, "lr": 0.01, "threads": 1, "early_stopping": None}
    out["stardist"] = parse_recipe({
        "name": "stardist-disks", "task": "stardist", "n_rays": 16, "grid": 2, "head_features": 16,
        "model": {"name": "stardist2d_tiny", "depth": 2, "base_channels": 8, "batch_norm": True},
        "data": {"dataset": str(data), "tile": None, "patch_size": [64, 64]},
        "training": {**tiny, "epochs": 25, "steps_per_epoch": 10}})
    out["detection"] = parse_recipe({
        "name": "det-disks", "task": "detection", "classes": ["blob"],
        "model": {"name": "detector2d_tiny", "depth": 3, "base_channels": 4, "batch_norm": True},
        "data": {"dataset": str(data), "tile": None, "patch_size": [64, 64]},
        "training": {**tiny, "epochs": 12, "steps_per_epoch": 10}})
    return out


def _train_all(work: Path) -> dict:
    from biozoo.zoo.train import train_recipe

    data = _disks(work.parent / "disks") if not (work.parent / "disks").is_dir() else work.parent / "disks"
    prints = {}
    for task, recipe in _recipes(data).items():
        run = work / task
        if not (run / "best.pt").is_file():
            train_recipe(recipe, run, progress=False)
        prints[task] = {n: _sha((run / n).read_bytes()) for n in RUN_FILES}
    return prints


def _export_all(work: Path, packages: Path) -> dict:
    import torch

    from biozoo.exporters import export_run

    torch.set_num_threads(1)  # float sums depend on the thread count: fingerprints compare one-thread exports
    packages.mkdir(parents=True, exist_ok=True)
    prints = {}
    for run in sorted(p for p in work.iterdir() if (p / "best.pt").is_file()):
        out = packages / f"{run.name}.zip"
        out.unlink(missing_ok=True)
        try:
            export_run(run, out)
        except Exception as e:  # noqa: BLE001 - a fingerprint records a refusal too
            prints[run.name] = {"refused": f"{type(e).__name__}: {e}"[:300]}
            continue
        with zipfile.ZipFile(out) as zf:
            members = {n: _sha(zf.read(n)) for n in sorted(zf.namelist())}
        prints[run.name] = {"zip": _sha(out.read_bytes()), "members": members}
    return prints


def _compare(a: Path, b: Path) -> int:
    before, after = json.loads(a.read_text()), json.loads(b.read_text())
    bad = 0
    for section in ("runs", "packages"):
        for task in sorted(set(before[section]) | set(after[section])):
            x, y = before[section].get(task), after[section].get(task)
            if x == y:
                print(f"{section:9} {task:13} identical")
                continue
            bad += 1
            diff = sorted(k for k in set(x or {}) | set(y or {}) if (x or {}).get(k) != (y or {}).get(k))
            if "members" in diff and x and y and "members" in x and "members" in y:  # both exported: which files
                diff = [m for m in sorted(set(x["members"]) | set(y["members"]))
                        if x["members"].get(m) != y["members"].get(m)]
            print(f"{section:9} {task:13} DIFFERENT: {', '.join(diff)}")
    return 1 if bad else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--reuse-runs", action="store_true")
    p.add_argument("--compare", nargs=2, type=Path)
    a = p.parse_args(argv)
    if a.compare:
        return _compare(*a.compare)
    os.environ.setdefault("SOURCE_DATE_EPOCH", "1767225600")  # package timestamp independent of file times
    runs = a.work / "runs"
    if a.reuse_runs:
        train_prints = _train_all(a.work / "retrained")
    else:
        runs.mkdir(parents=True, exist_ok=True)
        train_prints = _train_all(runs)
    result = {"runs": train_prints, "packages": _export_all(runs, a.work / "packages")}
    a.out.write_text(json.dumps(result, indent=1, sort_keys=True))
    print(json.dumps({t: v.get("zip", v.get("refused")) for t, v in result["packages"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
