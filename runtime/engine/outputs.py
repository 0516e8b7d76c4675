"""Box-list outputs of detection packages: recognise them, bring them back to the image, write YOLO txt, CSV, JSON.

A detection package (biozoo's detector or any other) has box-list outputs ``boxes [K, 4]``, ``scores [K]`` and
optionally class ids: ``labels [K]`` (torchvision's convention, what biozoo exports: 1 = first class, 0 =
background) or ``classes [K]`` (0-based). Their ``index`` axis comes in two forms:

- data-dependent size (older biozoo packages, other tools): K is the number of detections;
- fixed size K (biozoo packages since the fixed capacity), with ``config.biozoo.detection.padding`` saying how the
  unused rows are marked (``PADDINGS``; biozoo writes "rows with score 0") and ``max_detections`` = K. Why: the
  spec forbids a data-dependent axis of length 0, so an image without objects needs a fixed capacity. Without the
  marker a fixed-size index axis is not taken for a box list (the runtime does not guess).

``drop_padding`` removes the padding rows right after the session runs (Model.predict and `biozoo predict` never
show them; `biozoo test` compares the padded outputs with the padded test tensors); ``to_detections`` drops them
too, so raw session outputs can be passed. The tensors are found by tensor id or, failing that, by shape: the one
with a 4-channel axis holds boxes, an integer one the class ids (0-based), the remaining float one scores.
Everything written uses 0-based class ids, as YOLO label files do. Box corners are ``x_min, y_min, x_max, y_max``
in input pixels with pixel *edge* coordinates (column c spans [c, c + 1)); a boxes tensor whose channel names are
a permutation of those four names is reordered. Class names come from ``config.biozoo.detection.classes`` when the
package records them.

Only numpy: the runtime never imports torch or biozoo.zoo (the YOLO line format here is the one biozoo.zoo.boxes
reads; a test holds the two together).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from .description import DataDependentSize, ModelDescription, Tensor
from .errors import InputError, PackageError

CORNERS = ("x_min", "y_min", "x_max", "y_max")
SCORE_ZERO = "rows with score 0"
PADDINGS = (SCORE_ZERO,)  # the padding markers the runtime knows (config.biozoo.detection.padding)
CSV_COLUMNS = ("index", "class_id", "class_name", "score", *CORNERS, "x_center", "y_center", "width", "height")


@dataclass(frozen=True)
class DetectionOutputs:
    """Which output tensor holds what (``classes`` may be absent: then every box is class 0); ``label_offset`` is
    subtracted from the class tensor's values (1 for torchvision-style ``labels``)."""

    boxes: str
    scores: str
    classes: Optional[str]
    label_offset: int = 0
    corner_order: tuple[int, ...] = (0, 1, 2, 3)  # column of each CORNERS entry in the boxes tensor
    class_names: tuple[str, ...] = ()
    padding: Optional[str] = None  # a PADDINGS marker for fixed-capacity lists; None: data-dependent lengths
    capacity: Optional[int] = None  # K of fixed-capacity lists
    lists: tuple[str, ...] = ()  # every output with a box-list index axis (padding rows are dropped from each)


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


def _is_list(t: Tensor, padded: bool) -> bool:
    return any(a.type == "index" and (a.size is None or isinstance(a.size, DataDependentSize)
                                      or (padded and isinstance(a.size, int))) for a in t.axes)


def _padding(description: ModelDescription) -> tuple[Optional[str], Any]:
    """(padding marker, recorded capacity) from config.biozoo.detection; the marker must be one biozoo knows."""
    config = description.config.get("biozoo") if isinstance(description.config, Mapping) else None
    detection = (config or {}).get("detection") if isinstance(config, Mapping) else None
    if not isinstance(detection, Mapping) or detection.get("padding") is None:
        return None, None
    marker = detection["padding"]
    if marker not in PADDINGS:
        raise PackageError(f"config.biozoo.detection.padding is {marker!r}; this biozoo knows {list(PADDINGS)}: "
                           "upgrade biozoo, or fix the package's config")
    return marker, detection.get("max_detections")


def _fixed_capacity(lists: list[Tensor], recorded: Any) -> int:
    sizes = {t.id: a.size for t in lists for a in t.axes if a.type == "index"}
    if len(set(sizes.values())) != 1 or not all(isinstance(n, int) and n >= 1 for n in sizes.values()):
        raise PackageError(f"the box-list outputs' index axes have sizes {sizes}; a package with "
                           "config.biozoo.detection.padding needs one fixed size K (the capacity) on all of them")
    k = next(iter(sizes.values()))
    if recorded is not None and recorded != k:
        raise PackageError(f"config.biozoo.detection.max_detections is {recorded!r} but the box-list outputs have "
                           f"{k} rows; the package is inconsistent: re-export it")
    return k


def detection_outputs(description: ModelDescription) -> Optional[DetectionOutputs]:
    """The detection outputs of a package, or None when its outputs are not box lists."""
    padding, recorded = _padding(description)
    lists = [t for t in description.outputs if _is_list(t, padded=padding is not None)]
    if not lists:
        return None
    capacity = _fixed_capacity(lists, recorded) if padding is not None else None
    by_id = {t.id: t for t in lists}
    four = [t for t in lists if any(a.type == "channel" and a.size == 4 for a in t.axes)]
    boxes = by_id.get("boxes") or (four[0] if len(four) == 1 else None)
    if boxes is None:
        raise PackageError(f"outputs {sorted(by_id)} are lists (index axes of data-dependent size) but none is a "
                           "boxes tensor [K, 4]: name it 'boxes' or give it a channel axis of size 4")
    rest = [t for t in lists if t.id != boxes.id]
    ints = [t for t in rest if t.dtype.startswith(("int", "uint"))]
    classes = by_id.get("labels") or by_id.get("classes") or (ints[0] if len(ints) == 1 else None)
    floats = [t for t in rest if classes is None or t.id != classes.id]
    scores = by_id.get("scores") or (floats[0] if len(floats) == 1 else None)
    if scores is None:
        raise PackageError(f"detection outputs {sorted(by_id)}: cannot tell which holds the scores; name it 'scores'")
    channel = next((a for a in boxes.axes if a.type == "channel"), None)
    order = (0, 1, 2, 3)
    if channel is not None and sorted(channel.channel_names) == sorted(CORNERS):
        order = tuple(channel.channel_names.index(c) for c in CORNERS)
    names = ((description.config.get("biozoo") or {}).get("detection") or {}).get("classes") or ()
    return DetectionOutputs(boxes.id, scores.id, classes.id if classes else None,
                            1 if classes is not None and classes.id == "labels" else 0, order, tuple(map(str, names)),
                            padding, capacity, tuple(t.id for t in lists))


def _index_position(t: Tensor) -> int:
    return next(i for i, a in enumerate(t.axes) if a.type == "index")


def _real_rows(scores: np.ndarray, index: int) -> np.ndarray:
    """Per row of the index axis: True for a detection, False for padding (SCORE_ZERO: every score exactly 0)."""
    s = np.moveaxis(np.asarray(scores), index, 0)
    return (s.reshape(len(s), -1) != 0).any(axis=1)


def drop_padding(description: ModelDescription, outputs: Mapping[str, np.ndarray],
                 which: Optional[DetectionOutputs] = None) -> dict[str, np.ndarray]:
    """Outputs in the model's layout (as the session returns them) without the padding rows of fixed-capacity box
    lists; other outputs, and packages whose lists have data-dependent lengths, come back unchanged."""
    which = which if which is not None else detection_outputs(description)
    if which is None or which.padding is None or which.scores not in outputs:
        return dict(outputs)
    keep = _real_rows(outputs[which.scores], _index_position(description.output(which.scores)))
    out = dict(outputs)
    for tid in which.lists:
        if tid in out:
            i = _index_position(description.output(tid))
            if out[tid].shape[i] != len(keep):
                raise PackageError(f"output '{tid}' has {out[tid].shape[i]} rows, scores {len(keep)}; the box-list "
                                   "outputs of the package's graph disagree in length")
            out[tid] = np.compress(keep, out[tid], axis=i)
    return out


def unpadded_tensor(description: ModelDescription, tid: str, which: Optional[DetectionOutputs] = None) -> Tensor:
    """Output ``tid``'s description as drop_padding leaves it: a fixed-capacity list's index axis becomes data
    dependent (0..K rows), so that axis handling keeps a list of one detection a list (it squeezes fixed
    singleton axes the caller did not ask for)."""
    t = description.output(tid)
    which = which if which is not None else detection_outputs(description)
    if which is None or which.padding is None or tid not in which.lists:
        return t
    axes = tuple(dataclasses.replace(a, size=DataDependentSize(0, which.capacity)) if a.type == "index" else a
                 for a in t.axes)
    return dataclasses.replace(t, axes=axes)


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
