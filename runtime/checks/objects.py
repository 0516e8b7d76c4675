"""Objects in a segmentation output: connected components and their sizes (for the receptive-field check).

The runtime does not depend on scipy (and importing scipy.ndimage would cost more than labelling): `label` is a
run-based union-find in numpy, face connectivity like scipy.ndimage.label (a test compares the two).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import numpy as np

from ..format.description import Tensor

_SEGMENTATION_OPS = ("sigmoid", "softmax", "binarize")


def label(foreground: np.ndarray) -> tuple[np.ndarray, int]:
    """Face-connected components of a boolean array (any ndim): (labels 1..n, 0 background; n).

    Run-based union-find in numpy: runs of foreground along the last axis are the nodes, and each overlap between
    runs that are neighbours along another axis is one edge (recorded once per overlap, not per pixel). Roots are
    found by hooking and pointer jumping. All passes are vectorized; a 2048x2048 mask takes a fraction of a second.
    """
    fg = np.ascontiguousarray(foreground, dtype=bool)
    if fg.ndim == 0 or not fg.any():
        return np.zeros(fg.shape, dtype=np.int32), 0
    before = np.zeros_like(fg)
    before[..., 1:] = fg[..., :-1]
    start = fg & ~before  # the first pixel of every run along the last axis
    run = np.cumsum(start.ravel()).reshape(fg.shape) - 1  # run index of every foreground pixel
    n_runs = int(run[fg].max()) + 1
    a_parts, b_parts = [], []
    for axis in range(fg.ndim - 1):
        lo = [slice(None)] * fg.ndim
        hi = [slice(None)] * fg.ndim
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        lo, hi = tuple(lo), tuple(hi)
        edge = fg[lo] & fg[hi]
        # along the last axis the pair (run above, run below) stays the same until either run starts anew
        same = np.zeros_like(edge)
        same[..., 1:] = edge[..., :-1] & ~start[lo][..., 1:] & ~start[hi][..., 1:]
        keep = edge & ~same
        a_parts.append(run[lo][keep])
        b_parts.append(run[hi][keep])
    a = np.concatenate(a_parts) if a_parts else np.zeros(0, np.int64)
    b = np.concatenate(b_parts) if b_parts else np.zeros(0, np.int64)
    parent = _roots(n_runs, a, b)
    _, compact = np.unique(parent, return_inverse=True)
    labels = np.zeros(fg.shape, dtype=np.int32)
    labels[fg] = compact[run[fg]] + 1
    return labels, int(compact.max()) + 1


def _roots(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Union-find over n nodes with edges (a, b): every node's smallest connected node (its root)."""
    parent = np.arange(n)
    while a.size:
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        a, b, ra, rb = a[differ], b[differ], ra[differ], rb[differ]  # edges inside one tree never matter again
        if not a.size:
            break
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))  # hook the larger root under the smaller
        while True:  # pointer jumping: every node points at its root
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    return parent


def recorded_objects(config: Mapping[str, Any]) -> Optional[bool]:
    """What a package's training record says about the objects in its outputs, or None without a record.

    biozoo's exporter records the size of the training objects (``config.biozoo.training.object_size``) for the
    packages whose outputs hold objects (labels, masks, class probabilities, boxes) and leaves the field empty for
    those that restore images: True when the sizes are recorded, False when the field is there but empty.
    """
    biozoo = config.get("biozoo") if isinstance(config, Mapping) else None
    training = biozoo.get("training") if isinstance(biozoo, Mapping) else None
    if not isinstance(training, Mapping) or "object_size" not in training:
        return None
    return training["object_size"] is not None


def segmentation_like(tensor: Tensor, config: Mapping[str, Any], dtype: np.dtype) -> bool:
    """Whether an output holds labels, masks or class probabilities (background = 0 makes sense there)."""
    objects = recorded_objects(config)
    if objects is False:
        return False
    if dtype.kind in "biu" or objects:
        return True
    return any(p.id in _SEGMENTATION_OPS for p in tensor.processing)


def foreground(y: np.ndarray, tensor: Tensor) -> tuple[Optional[np.ndarray], str]:
    """Per batch sample (first axis after moving batch to front), a foreground or instance-label array with the
    space axes only; and how it was derived. None when no foreground can be read from the output."""
    axes = list(tensor.axes)
    batch = next((i for i, a in enumerate(axes) if a.type == "batch"), None)
    data = y if batch is None else np.moveaxis(y, batch, 0)
    if batch is None:
        data = data[np.newaxis]
    rest = [a for i, a in enumerate(axes) if i != batch]
    channel = next((k for k, a in enumerate(rest) if a.type == "channel"), None)
    others = [k for k, a in enumerate(rest) if a.type not in ("space", "channel")]
    if others:
        data = np.take(data, 0, axis=others[0] + 1) if len(others) == 1 else None
        if data is None:
            return None, "output has several non-space axes"
        rest = [a for k, a in enumerate(rest) if k != others[0]]
        channel = next((k for k, a in enumerate(rest) if a.type == "channel"), None)
    if channel is not None:
        ax = channel + 1
        names = list(rest[channel].channel_names)
        if data.dtype.kind in "biu" or data.shape[ax] == 1:
            data, how = np.take(data, 0, axis=ax), "channel 0"
        elif "foreground" in names:
            data, how = np.take(data, names.index("foreground"), axis=ax), "channel 'foreground'"
        else:
            data, how = np.argmax(data, axis=ax) != 0, "argmax over channels != 0"
    else:
        how = "single channel"
    if data.dtype.kind == "f":
        return data > 0.5, f"{how} > 0.5"
    if data.dtype.kind in "iu" and data.max(initial=0) > 1:
        return data, f"{how}: instance labels"
    return data != 0, f"{how} != 0"


def object_diameters(fg_or_labels: np.ndarray) -> np.ndarray:
    """Equivalent diameters (px) of the objects, per batch sample, all samples pooled."""
    sizes = []
    for sample in fg_or_labels:
        if sample.dtype == bool:
            labels, n = label(sample)
        else:
            labels, n = sample.astype(np.int64, copy=False), int(sample.max(initial=0))
        if n == 0:
            continue
        counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        sizes.append(counts[counts > 0])
    if not sizes:
        return np.zeros(0)
    areas = np.concatenate(sizes).astype(np.float64)
    ndim = fg_or_labels.ndim - 1
    if ndim == 3:
        return np.cbrt(6.0 * areas / math.pi)
    return 2.0 * np.sqrt(areas / math.pi)
