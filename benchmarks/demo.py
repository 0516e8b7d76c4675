"""`make demo`: build a small bioimage.io package, then run biozoo's CLI on it as a user would.

Until the zoo and exporters land, the package is the test suite's U-Net fixture (random weights) and the image
is synthetic. Everything is written under the output folder given on the command line.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile
from _fixtures import build_package


def blobs(shape=(300, 420), n=40, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.zeros(shape, np.float32)
    for cy, cx, r in zip(rng.uniform(0, shape[0], n), rng.uniform(0, shape[1], n), rng.uniform(6, 14, n)):
        img += 200 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
    return (img + rng.normal(20, 5, shape)).astype(np.float32)


def biozoo(*args: str) -> None:
    print(f"\n$ biozoo {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "biozoo.runtime.cli", *args], check=True)


def main(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    package = build_package("unet2d", out / "build", zip=True)
    image = out / "blobs.tif"
    tifffile.imwrite(image, blobs(), metadata={"axes": "YX"})
    biozoo("info", str(package))
    biozoo("test", str(package))
    biozoo("predict", str(package), str(image), "-o", str(out / "prediction.tif"))
    biozoo("predict", str(package), str(image), "-o", str(out / "prediction_tiled.tif"), "--tile", "128,128")
    whole, tiled = tifffile.imread(out / "prediction.tif"), tifffile.imread(out / "prediction_tiled.tif")
    print(f"\ntiled vs whole-image prediction: max abs difference {np.abs(whole - tiled).max():.2e}")
    print(f"\nresults in {out}/:\n  package     {package}\n  input       {image}\n"
          f"  prediction  {out / 'prediction.tif'}\n  tiled       {out / 'prediction_tiled.tif'}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-output"))
