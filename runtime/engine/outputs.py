"""The kinds of outputs a description has: images (dense tensors) or box lists, told apart once, structurally.

Box lists (what a detector gives, biozoo's or any other) are outputs with an ``index`` axis: ``boxes [K, 4]``,
``scores [K]`` and optionally class ids: ``labels [K]`` (torchvision's convention, what biozoo exports: 1 = first
class, 0 = background) or ``classes [K]`` (0-based). The index axis comes in two forms:

- data-dependent size (older biozoo packages, other tools): K is the number of boxes;
- fixed size K (biozoo packages since the fixed capacity), with a ``padding`` marker saying how the unused rows
  are marked (``PADDINGS``; biozoo writes "rows with score 0") and ``max_detections`` = K. Why: the spec forbids
  a data-dependent axis of length 0, so an image without objects needs a fixed capacity. Without the marker a
  fixed-size index axis is not taken for a box list (the runtime does not guess).

What a package records about its lists (marker, capacity, class names) is the ``config.biozoo`` block named like
their index axis (``config.biozoo.<index axis id>``): the lists describe themselves, and the runtime never reads
which task made the package.

``drop_padding`` removes the padding rows right after the session runs (Model.predict and `biozoo predict` never
show them; `biozoo test` compares the padded outputs with the padded test tensors). The tensors are found by tensor
id or, failing that, by shape: the one with a 4-channel axis holds boxes, an integer one the class ids (0-based),
the remaining float one scores. Box corners are ``x_min, y_min, x_max, y_max`` in input pixels with pixel *edge*
coordinates (column c spans [c, c + 1)); a boxes tensor whose channel names are a permutation of those four names
is reordered. Writing them (YOLO txt, CSV, JSON) is biozoo.runtime.commands.box_files.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from ..errors import PackageError
from ..format.description import DataDependentSize, ModelDescription, Tensor

CORNERS = ("x_min", "y_min", "x_max", "y_max")
SCORE_ZERO = "rows with score 0"
PADDINGS = (SCORE_ZERO,)  # the padding markers the runtime knows (the lists' block's `padding`)


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


def _is_list(t: Tensor, padded: bool) -> bool:
    return any(a.type == "index" and (a.size is None or isinstance(a.size, DataDependentSize)
                                      or (padded and isinstance(a.size, int))) for a in t.axes)


def _index_ids(t: Tensor) -> list[str]:
    return [a.id for a in t.axes if a.type == "index"]


def _lists_block(description: ModelDescription, candidates: list[Tensor]) -> tuple[Mapping[str, Any], str]:
    """What the package records about its box lists: the config.biozoo block named like their index axis."""
    config = description.config.get("biozoo") if isinstance(description.config, Mapping) else None
    if isinstance(config, Mapping):
        for axis_id in dict.fromkeys(i for t in candidates for i in _index_ids(t)):
            if isinstance(config.get(axis_id), Mapping):
                return config[axis_id], f"config.biozoo.{axis_id}"
    return {}, ""


def lists_config(description: ModelDescription) -> tuple[Mapping[str, Any], str]:
    """What the package records about its box lists (e.g. ``iou_threshold``) and where: ({}, "") when nothing."""
    return _lists_block(description, [t for t in description.outputs if _index_ids(t)])


def _padding(block: Mapping[str, Any], where: str) -> tuple[Optional[str], Any]:
    """(padding marker, recorded capacity) from the lists' block; the marker must be one biozoo knows."""
    if block.get("padding") is None:
        return None, None
    marker = block["padding"]
    if marker not in PADDINGS:
        raise PackageError(f"{where}.padding is {marker!r}; this biozoo knows {list(PADDINGS)}: "
                           "upgrade biozoo, or fix the package's config")
    return marker, block.get("max_detections")


def _fixed_capacity(lists: list[Tensor], recorded: Any, where: str) -> int:
    sizes = {t.id: a.size for t in lists for a in t.axes if a.type == "index"}
    if len(set(sizes.values())) != 1 or not all(isinstance(n, int) and n >= 1 for n in sizes.values()):
        raise PackageError(f"the box-list outputs' index axes have sizes {sizes}; a package with "
                           f"{where}.padding needs one fixed size K (the capacity) on all of them")
    k = next(iter(sizes.values()))
    if recorded is not None and recorded != k:
        raise PackageError(f"{where}.max_detections is {recorded!r} but the box-list outputs have "
                           f"{k} rows; the package is inconsistent: re-export it")
    return k


def detection_outputs(description: ModelDescription) -> Optional[DetectionOutputs]:
    """The box-list outputs of a package, or None when its outputs are not box lists."""
    candidates = [t for t in description.outputs if _index_ids(t)]
    block, where = _lists_block(description, candidates)
    padding, recorded = _padding(block, where)
    lists = [t for t in candidates if _is_list(t, padded=padding is not None)]
    if not lists:
        return None
    capacity = _fixed_capacity(lists, recorded, where) if padding is not None else None
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
    names = block.get("classes") or ()
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
