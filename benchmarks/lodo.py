"""Leave-one-dataset-out for StarDist: trained without a nuclei source, tested on all of it, beside Otsu + watershed.

    python benchmarks/lodo.py --work DIR                       # every source held out in turn, then the table
    python benchmarks/lodo.py --work DIR --hold-out nuclei-3d  # one run (several can run side by side)
    python benchmarks/lodo.py --work DIR --table               # the table from the runs in DIR

The recipe is specs/recipes/stardist-nuclei-2d-mix.yaml with its `mix:` dataset minus the held-out source; its
training, threshold choice and early stopping see only the other sources (their own splits). The held-out source is
then predicted in full by the exported package (the runtime, every input check on; whether the
out-of-distribution check warned is in the table), and matched at IoU 0.5 (accuracy, F1, panoptic quality).
The baseline is Otsu + distance-transform watershed with the smoothing and peak distance the run chose on its own
validation split. Numbers are from one run on this machine: compare them, do not quote them as constants.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

RECIPE = "stardist-nuclei-2d-mix"


def _recipe_without(held_out: str, threads: int = 1):
    from biozoo.specs import recipe_path
    from biozoo.zoo.config import load_recipe
    from biozoo.zoo.data.sources import MIX, mix_sources

    recipe = load_recipe(recipe_path(RECIPE))
    rest = [n for n in mix_sources(recipe.data.dataset) if n != held_out]
    if len(rest) == len(mix_sources(recipe.data.dataset)):
        raise SystemExit(f"{held_out} is not a source of {recipe.data.dataset}")
    dataset = rest[0] if len(rest) == 1 else MIX + "+".join(rest)
    tile = 128 if dataset == "stardist-nuclei-2d" else None
    # one torch thread: on 2 cores shared with anything else, 2 threads ran several times slower (yolo recipe)
    return recipe.model_copy(update={"data": recipe.data.model_copy(update={"dataset": dataset, "tile": tile}),
                                     "training": recipe.training.model_copy(update={"threads": threads})})


def run_one(work: Path, held_out: str) -> dict:
    import numpy as np
    import tifffile

    from biozoo.exporters import export_run
    from biozoo.runtime import load
    from biozoo.zoo import matching as MT
    from biozoo.zoo.data.sources import source_files
    from biozoo.zoo.tasks.stardist import load_instances, watershed_baseline
    from biozoo.zoo.train import train_recipe

    recipe = _recipe_without(held_out)
    run = work / f"without-{held_out}"
    timing = work / f"without-{held_out}.seconds"
    if (run / "test_metrics.json").is_file():  # trained before (e.g. the export failed): evaluate it again
        trained, seconds = json.loads((run / "test_metrics.json").read_text()), None
        seconds = float(timing.read_text()) if timing.is_file() else None
    else:
        started = time.perf_counter()
        trained = train_recipe(recipe, run, progress=False)
        seconds = time.perf_counter() - started
        timing.write_text(f"{seconds:.0f}\n")
    package = work / f"without-{held_out}.zip"
    export_run(run, package)
    model = load(package, device="cpu")
    folder, names = source_files(held_out)
    truths, preds, warned = [], [], 0
    for name in names:
        x = np.squeeze(tifffile.imread(folder / "images" / name))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = model.predict_with_report(x, axes="yx")
        preds.append(np.squeeze(p.outputs["labels"][0]).astype(np.int32))
        truths.append(np.squeeze(tifffile.imread(folder / "masks" / name)).astype(np.int32))
        warned += any(c["name"] == "out-of-distribution" and c["status"] == "warning" for c in p.report.as_list())
    base = trained["baseline"]
    images, _ = load_instances(folder, names, recipe.data.percentiles)
    baseline = watershed_baseline(images, base["sigma_chosen_on_val"], base["min_distance_chosen_on_val"])
    mine = MT.match_dataset(truths, preds, (0.5,))[0].as_dict()
    theirs = MT.match_dataset(truths, baseline, (0.5,))[0].as_dict()
    result = {"held_out": held_out, "trained_on": recipe.data.dataset, "training_seconds": round(seconds) if seconds else None,
              "files": len(names), "objects": mine["n_true"], "out_of_distribution_warnings": warned,
              "stardist": {k: round(mine[k], 3) for k in ("accuracy", "f1", "panoptic_quality")},
              "otsu_watershed": {k: round(theirs[k], 3) for k in ("accuracy", "f1", "panoptic_quality")},
              "in_distribution_test_accuracy": round(trained["accuracy_iou50"], 3)}
    (work / f"without-{held_out}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result), flush=True)
    return result


def table(work: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(work.glob("without-*.json"))]
    lines = ["| held out | trained on | objects | StarDist acc@0.5 / F1 / PQ | Otsu+watershed acc@0.5 / F1 / PQ | "
             "out-of-distribution warnings | training |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        s, b = r["stardist"], r["otsu_watershed"]
        lines.append(f"| {r['held_out']} | {r['trained_on']} | {r['objects']} in {r['files']} images | "
                     f"{s['accuracy']:.3f} / {s['f1']:.3f} / {s['panoptic_quality']:.3f} | "
                     f"{b['accuracy']:.3f} / {b['f1']:.3f} / {b['panoptic_quality']:.3f} | "
                     f"{r['out_of_distribution_warnings']} of {r['files']} | "
                     f"{str(r['training_seconds']) + ' s' if r['training_seconds'] else 'not recorded'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True)
    parser.add_argument("--hold-out", help="one source to hold out (default: each in turn)")
    parser.add_argument("--table", action="store_true", help="only print the table of the runs in --work")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if not args.table:
        from biozoo.specs import recipe_path
        from biozoo.zoo.config import load_recipe
        from biozoo.zoo.data.sources import mix_sources

        sources = [args.hold_out] if args.hold_out else mix_sources(load_recipe(recipe_path(RECIPE)).data.dataset)
        for held_out in sources:
            run_one(work, held_out)
    print(table(work))


if __name__ == "__main__":
    main()
