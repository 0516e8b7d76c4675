"""Packages for the napari plugin: loaded once per file version, summarised like `biozoo info`, test inputs as
layers. No napari or Qt import."""
from __future__ import annotations

import html
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from biozoo.runtime.commands.info import tensor_info, training_info

_CACHE: dict[tuple[str, int, int], Any] = {}
_LOCK = threading.Lock()
PACKAGE_KEY = "biozoo_package"  # layer metadata: the package a layer's data came from (the reader sets it)
INPUT_KEY = "biozoo_input"  # ... and the input tensor it is the test input of
SOURCE_KEY = "biozoo_source"  # the OME-Zarr a lazily read layer shows (predicted from there, block by block)


def load_model(source: str | os.PathLike[str]) -> Any:
    """`biozoo.runtime.load` (hashes checked, session built) once per package file version: the reader and the
    widget share it. Changing the file (size or mtime) loads it again."""
    from biozoo.runtime import load

    path = Path(source).expanduser()
    stat = path.stat() if path.exists() else None
    key = (str(path.resolve()), stat.st_size if stat else -1, stat.st_mtime_ns if stat else -1)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = load(path)
        return _CACHE[key]


def summary(model: Any) -> dict[str, Any]:
    """What the widget shows of a package: `biozoo info`'s tensors and training record, without the memory probe
    (that one runs the network)."""
    d = model.description
    return {"name": d.name, "version": d.version, "inputs": [tensor_info(t) for t in d.inputs],
            "outputs": [tensor_info(t) for t in d.outputs], "training": training_info(model),
            "weights": list(d.weights_formats), "provider": model.provider}


def summary_html(info: dict[str, Any]) -> str:
    """The summary as rich text; every string from the package is escaped (a package's name is a stranger's)."""
    e = html.escape

    def tensors(kind: str) -> str:
        rows = []
        for t in info[kind]:
            sizes = " ".join(f"{a}:{s}" for a, s in t["sizes"].items())
            halo = f", halo {' '.join(f'{a}:{h}' for a, h in t['halo'].items())}" if t["halo"] else ""
            rows.append(f"<b>{e(str(t['id']))}</b> {e(t['axes'])} ({e(sizes)}{e(halo)})")
        return "<br>".join(rows)

    pixel = info["training"].get("pixel_size_um")
    pixel_text = (", ".join(f"{a} {v:g} µm" for a, v in pixel.items()) if isinstance(pixel, dict) else
                  "not recorded (the pixel-size check is skipped)")
    return (f"<b>{e(str(info['name']))}</b> {e(str(info['version'] or ''))}<br>"
            f"inputs: {tensors('inputs')}<br>outputs: {tensors('outputs')}<br>"
            f"training pixel size: {e(pixel_text)}<br>"
            f"weights: {e(', '.join(info['weights']))} (runs onnx on {e(str(info['provider']))})")


def test_input_layers(model: Any, source: str | os.PathLike[str]) -> list[tuple[np.ndarray, dict[str, Any], str]]:
    """The package's test inputs as Image layers, without the batch axis and a single channel, their axis letters
    as axis labels, tagged with the package so the widget selects it."""
    from biozoo.runtime.engine.test_tensors import load_test_tensors

    layers = []
    for tid, data in load_test_tensors(model.engine, "inputs").items():
        letters = model.description.input(tid).letters
        drop = tuple(i for i, a in enumerate(letters) if a in "bc" and data.shape[i] == 1)
        kept = "".join(a for i, a in enumerate(letters) if i not in drop)
        data = data.squeeze(axis=drop) if drop else data
        layers.append((data, {"name": f"{model.description.name}: {tid} (test input)", "axis_labels": tuple(kept),
                              "rgb": False,  # napari would take a last axis of 3 for colour; the axes say what it is
                              "metadata": {PACKAGE_KEY: str(Path(source).resolve()), INPUT_KEY: tid}}, "image"))
    return layers
