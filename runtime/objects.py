"""Objects in a segmentation output: connected components and their sizes (for the receptive-field check).

The runtime does not depend on scipy: `label` uses scipy.ndimage when it is installed and otherwise a vectorized
union-find in numpy (hooking plus pointer jumping, a few dozen passes even for large images); both label
face-connected components identically up to label numbering.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import numpy as np

from .description import Tensor

SEGMENTATION_TASKS = ("segmentation", "stardist", "detection")
RESTORATION_TASKS = ("care", "n2v")
_SEGMENTATION_OPS = ("sigmoid", "softmax", "binarize")


def label(foreground: np.ndarray) -> tuple[np.ndarray, int]:
    """Face-connected components of a boolean array: (labels 1..n, 0 background; n)."""
    try:
        from scipy import ndimage
    except ImportError:
        return label_numpy(foreground)
    labels, n = ndimage.label(foreground)
    return labels, int(n)


def label_numpy(foreground: np.ndarray) -> tuple[np.ndarray, int]:
    fg = np.asarray(foreground, dtype=bool)
    index = np.arange(fg.size).reshape(fg.shape)
    a_parts, b_parts = [], []
    for axis in range(fg.ndim):
        lo = [slice(None)] * fg.ndim
        hi = [slice(None)] * fg.ndim
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        both = fg[tuple(lo)] & fg[tuple(hi)]
        a_parts.append(index[tuple(lo)][both])
        b_parts.append(index[tuple(hi)][both])
    a, b = np.concatenate(a_parts), np.concatenate(b_parts)
    parent = np.arange(fg.size)
    while True:
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not differ.any():
            break
        a, b = a[differ], b[differ]  # edges inside one tree never matter again
        ra, rb = ra[differ], rb[differ]
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))  # hook the larger root under the smaller
        while True:  # pointer jumping: every pixel points at its root
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    roots = parent.reshape(fg.shape)[fg]
    labels = np.zeros(fg.shape, dtype=np.int32)
    if roots.size:
        _, labels[fg] = np.unique(roots, return_inverse=True)
        labels[fg] += 1
        return labels, int(labels.max())
    return labels, 0


def segmentation_like(tensor: Tensor, config: Mapping[str, Any], dtype: np.dtype) -> bool:
    """Whether an output holds labels, masks or class probabilities (background = 0 makes sense there)."""
    task = str((config.get("biozoo") or {}).get("task", "")) if isinstance(config, Mapping) else ""
    if task in RESTORATION_TASKS:
        return False
    if dtype.kind in "biu" or task in SEGMENTATION_TASKS:
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
