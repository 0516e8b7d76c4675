"""The human-facing files of a package: the cover (input | output, side by side) and the README.

Both are byte-for-byte deterministic for a given run (no timestamps, fixed PNG encoder settings), so the zip is too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

COVER_GAP = 4


def _to_uint8(image: np.ndarray, low: Optional[float] = None, high: Optional[float] = None) -> np.ndarray:
    x = np.asarray(image, dtype=np.float64)
    lo = float(np.percentile(x, 1)) if low is None else low
    hi = float(np.percentile(x, 99.8)) if high is None else high
    scaled = np.clip((x - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    return np.round(scaled * 255).astype(np.uint8)


def write_cover(path: Path, image: np.ndarray, output: np.ndarray, output_range: Optional[tuple[float, float]]) -> None:
    """PNG of the (2D) input and output side by side; ``output_range`` fixes the output's display range."""
    from PIL import Image

    left = _to_uint8(image)
    right = _to_uint8(output, *(output_range or (None, None)))
    h = max(left.shape[0], right.shape[0])
    canvas = np.full((h, left.shape[1] + COVER_GAP + right.shape[1]), 255, np.uint8)
    canvas[: left.shape[0], : left.shape[1]] = left
    canvas[: right.shape[0], left.shape[1] + COVER_GAP:] = right
    Image.fromarray(canvas).save(path, format="PNG", optimize=False, compress_level=9)


def table_lines(rows: list[tuple[str, Any]]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def readme_text(*, name: str, description: str, task_notes: list[str], metrics_lines: list[str],
                training_rows: list[tuple[str, Any]], parity: dict, independence: dict, tolerance: dict,
                input_id: str, output_id: str, axes: str, has_curves: bool) -> str:
    """README.md with a '# Validation' section (bioimage.io looks for it) and how to run the model two ways."""
    lines = [
        f"# {name}", "", description, "",
        "Packaged by [biozoo](https://pypi.org/project/biozoo/) from a training run; everything below was measured "
        "when the package was written.", "",
        "## Inputs and outputs", "",
        f"- input `{input_id}`: axes `{axes}` (batch, channel, space); any size works, biozoo pads and tiles as needed.",
        f"- output `{output_id}`: same space size as the input.",
        *(f"- {note}" for note in task_notes), "",
        "## How to run", "",
        "With biozoo (onnxruntime; CUDA when available):", "", "```bash",
        "pip install biozoo", "biozoo test model.zip", "biozoo predict model.zip image.tif -o predictions/", "```", "",
        "```python", "from biozoo.runtime import load", 'model = load("model.zip")',
        f'out = model.predict(image, axes="{axes[2:]}")', "```", "",
        "With bioimageio.core:", "", "```python",
        "from bioimageio.core import load_model_description, predict, test_model",
        'descr = load_model_description("model.zip")', 'print(test_model(descr).status)',
        f'sample = predict(model=descr, inputs={{"{input_id}": image[None, None]}})', "```", "",
        "## Training", "", *table_lines(training_rows), "",
    ]
    if has_curves:
        lines += ["![training curves](curves.png)", ""]
    lines += [
        "# Validation", "",
        "Held-out test split (made once from file content hashes, never used for training or model selection):", "",
        *(f"- {m}" for m in metrics_lines), "",
        f"- torch vs onnxruntime parity (CPU) on the test input and random valid sizes {parity['shapes']}: max abs "
        f"error {parity['max_abs_error']:.3g}, max rel error {parity['max_rel_error']:.3g}.",
        f"- batch independence: a sample's output changes by {independence['max_abs_difference']:.3g} when a very "
        "different sample shares its batch (torch and onnxruntime).",
        f"- test tensors are reproduced within abs {tolerance['absolute_tolerance']:g} / rel "
        f"{tolerance['relative_tolerance']:g} (`config.bioimageio.reproducibility_tolerance`).", "",
        "## Limitations", "",
        "- Trained on the data named above; inputs at another pixel size or intensity distribution may give wrong "
        "results: `biozoo predict` checks them against `config.biozoo` and warns or refuses.",
        "",
    ]
    return "\n".join(lines)


def weights_section(weights, tolerance: dict) -> str:
    """README '## Weight formats': each format's file and its reproduction of the test tensors."""
    lines = ["", "## Weight formats", "",
             f"Every format reproduces the test tensors within the package's tolerance (abs "
             f"{tolerance['absolute_tolerance']:g}, rel {tolerance['relative_tolerance']:g}, "
             f"{tolerance['mismatched_elements_per_million']:g} mismatched elements per million), checked at export:",
             "", "| format | file | converted from | max abs error | mismatched per million |",
             "|---|---|---|---|---|"]
    for w in weights:
        p = w.parity
        lines.append(f"| {w.format} | `{w.source}` | {w.parent or '(source)'} | {p.get('max_abs_error', 0):.3g} | "
                     f"{p.get('mismatched_per_million', 0):.3g} |")
    lines += ["", "`biozoo validate model.zip --consumers` tells which tools (bioimageio.core, ilastik, deepImageJ, BiaPy, "
              "biozoo) can run this package, and why not where one cannot."]
    return "\n".join(lines) + "\n"
