"""Box lists as files: one image's detections (`to_detections`) as YOLO txt, CSV and JSON, for `biozoo predict`.

Everything written uses 0-based class ids, as YOLO label files do, and box corners ``x_min, y_min, x_max, y_max``
in input pixels (pixel edges). Class names come from the lists' config block when the package records them (see
biozoo.runtime.engine.outputs, which recognises the lists). ``to_detections`` drops padding rows too, so raw
session outputs can be passed.

Only numpy: the runtime never imports torch or biozoo.zoo (the YOLO line format here is the one biozoo.zoo.boxes
reads; a test holds the two together).
"""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from ..engine.outputs import CORNERS, DetectionOutputs
from ..format.permissions import plain_permissions
from ..errors import InputError, PackageError

CSV_COLUMNS = ("index", "class_id", "class_name", "score", *CORNERS, "x_center", "y_center", "width", "height")


@dataclass(frozen=True)
class Detections:
    """One image's detections, sorted by decreasing score: xyxy [K, 4] float32, scores [K], classes [K] int64."""

    xyxy: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    class_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.scores)

    def name(self, class_id: int) -> str:
        return self.class_names[class_id] if 0 <= class_id < len(self.class_names) else str(class_id)


def to_detections(outputs: Mapping[str, Any], which: DetectionOutputs, height: int, width: int,
                  scale: tuple[float, float] = (1.0, 1.0)) -> Detections:
    """Detections of one image from its outputs (arrays, or (array, axes) pairs as predict_with_axes returns).

    ``scale`` (y, x) maps the model's coordinates back to the image's (e.g. after pixel-size resampling). Boxes
    whose centre lies outside the ``height`` x ``width`` image (found in the padding) are dropped, the others
    clipped to it; the rest is sorted by decreasing score.
    """
    def get(tid):
        value = outputs[tid]
        return np.asarray(value[0] if isinstance(value, tuple) else value)

    xyxy = get(which.boxes).astype(np.float32).reshape(-1, 4)[:, list(which.corner_order)]
    scores = get(which.scores).astype(np.float32).reshape(-1)
    classes = (get(which.classes).reshape(-1).astype(np.int64) - which.label_offset if which.classes
               else np.zeros(len(scores), np.int64))
    if not len(xyxy) == len(scores) == len(classes):
        raise PackageError(f"detection outputs disagree in length: {len(xyxy)} boxes, {len(scores)} scores, "
                           f"{len(classes)} classes; the package's graph is broken")
    if which.padding is not None:  # raw session outputs: padding first, before any box is looked at
        real = scores != 0
        xyxy, scores, classes = xyxy[real], scores[real], classes[real]
    xyxy = xyxy * np.array([scale[1], scale[0], scale[1], scale[0]], np.float32)
    centre = (xyxy[:, :2] + xyxy[:, 2:]) / 2
    inside = (centre[:, 0] >= 0) & (centre[:, 0] < width) & (centre[:, 1] >= 0) & (centre[:, 1] < height)
    inside &= classes >= 0  # label 0 = background in the torchvision convention: not an object
    order = np.argsort(-scores[inside], kind="stable")
    xyxy = np.clip(xyxy[inside][order], 0, np.array([width, height, width, height], np.float32))
    return Detections(xyxy, scores[inside][order], classes[inside][order], which.class_names)


def yolo_text(det: Detections, height: int, width: int) -> str:
    """``cls xc yc w h`` per line, normalized by the image size (a YOLO label file; scores are in CSV/JSON)."""
    lines = []
    for (x0, y0, x1, y1), c in zip(det.xyxy.astype(np.float64), det.classes):
        lines.append(f"{int(c)} {(x0 + x1) / 2 / width:.6f} {(y0 + y1) / 2 / height:.6f} "
                     f"{(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}")
    return "\n".join(lines) + ("\n" if lines else "")


def csv_text(det: Detections) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for i, ((x0, y0, x1, y1), s, c) in enumerate(zip(det.xyxy.astype(np.float64), det.scores, det.classes)):
        writer.writerow([i, int(c), det.name(int(c)), f"{float(s):.6f}",
                         *(f"{v:.3f}" for v in (x0, y0, x1, y1, (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0))])
    return buffer.getvalue()


def json_record(det: Detections, height: int, width: int, image: str = "") -> dict[str, Any]:
    return {
        "image": image, "height": int(height), "width": int(width),
        "box_format": "x_min, y_min, x_max, y_max in pixels (pixel edges: column c spans [c, c + 1))",
        "count": len(det),
        "detections": [{"class_id": int(c), "class": det.name(int(c)), "score": round(float(s), 6),
                        "box": [round(float(v), 3) for v in b]}
                       for b, s, c in zip(det.xyxy, det.scores, det.classes)],
    }


def write_detections(folder: Path, stem: str, det: Detections, height: int, width: int, image: str = ""
                     ) -> dict[str, str]:
    """``folder/stem.txt`` (YOLO), ``.csv`` and ``.json``, each written atomically; returns the paths by kind."""
    texts = {"yolo": (f"{stem}.txt", yolo_text(det, height, width)), "csv": (f"{stem}.csv", csv_text(det)),
             "json": (f"{stem}.json", json.dumps(json_record(det, height, width, image), indent=1) + "\n")}
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for kind, (name, text) in texts.items():
        _atomic_write(folder / name, text)
        written[kind] = str(folder / name)
    return written


def image_size(array: np.ndarray, axes: Optional[str]) -> tuple[int, int]:
    """(height, width) of an input array: its y and x axes when the axes are known, else the last two."""
    if axes and "y" in axes and "x" in axes:
        return int(array.shape[axes.index("y")]), int(array.shape[axes.index("x")])
    if array.ndim < 2:
        raise PackageError(f"an input of shape {array.shape} has no y and x axes for box coordinates")
    return int(array.shape[-2]), int(array.shape[-1])


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        plain_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def describe(det: Detections) -> dict[str, Any]:
    """A short summary for `biozoo predict --json`: count and counts per class."""
    counts: dict[str, int] = {}
    for c in det.classes.tolist():
        counts[det.name(int(c))] = counts.get(det.name(int(c)), 0) + 1
    return {"count": len(det), "per_class": counts}


def write_prediction(folder: Path, stem: str, outputs: Mapping[str, Any], which: DetectionOutputs, height: int,
                     width: int, image: str = "") -> tuple[dict[str, str], dict[str, Any]]:
    """`biozoo predict` for a detection package: box files for one image; returns (paths by kind, summary).

    The boxes must already be on the image's grid (with --rescale, prediction maps them back before this).
    """
    if folder.suffix:
        raise InputError(f"output '{folder}': a detection package writes box files (YOLO .txt, .csv, .json) per "
                         "input; give -o a folder")
    det = to_detections(outputs, which, height, width)
    return write_detections(folder, stem, det, height, width, image), describe(det)
