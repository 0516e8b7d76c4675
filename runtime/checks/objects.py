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


def _runs(fg: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Runs of True along the last axis: (start, end) keys into the array padded with one False on both sides of
    every row (key = row * (W + 2) + column + 1, end exclusive), and the padded row length W + 2."""
    width = fg.shape[-1] + 2
    padded = np.zeros((fg.size // max(fg.shape[-1], 1), width), dtype=bool)
    padded[:, 1:-1] = fg.reshape(padded.shape[0], -1)
    flat = padded.ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1  # every row starts and ends with False: pairs alternate
    return changes[0::2], changes[1::2], width


def _run_edges(fg_shape: tuple[int, ...], starts: np.ndarray, ends: np.ndarray, width: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of runs that touch across a face: for every other axis, runs in neighbouring rows whose column
    intervals overlap. Runs within one row are sorted and disjoint, so the runs of the previous row that a run
    overlaps form one index range, found by two binary searches; no per-pixel pass."""
    rows = starts // width
    a_parts, b_parts = [], []
    for axis in range(len(fg_shape) - 1):
        stride = math.prod(fg_shape[axis + 1:-1])  # rows between neighbours along this axis
        has_previous = (rows // stride) % fg_shape[axis] != 0
        b = np.flatnonzero(has_previous)
        shift = stride * width
        lo = np.searchsorted(ends, starts[b] - shift, side="right")  # first run ending after b starts
        hi = np.searchsorted(starts, ends[b] - shift, side="left")  # first run starting at or after b's end
        count = np.maximum(hi - lo, 0)
        total = int(count.sum())
        if not total:
            continue
        first = np.repeat(np.cumsum(count) - count, count)
        a_parts.append(np.repeat(lo, count) + (np.arange(total) - first))
        b_parts.append(np.repeat(b, count))
    if not a_parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(a_parts), np.concatenate(b_parts)


def _components(fg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """(component of every run 0..n-1 in raster order of first appearance, run starts, run lengths, n, width)."""
    starts, ends, width = _runs(fg)
    a, b = _run_edges(fg.shape, starts, ends, width)
    parent = _roots(starts.size, a, b)
    is_root = parent == np.arange(parent.size)  # a root is its component's smallest run: raster order
    compact = (np.cumsum(is_root) - 1)[parent]
    return compact, starts, ends - starts, int(np.count_nonzero(is_root)), width


def label(foreground: np.ndarray) -> tuple[np.ndarray, int]:
    """Face-connected components of a boolean array (any ndim): (labels 1..n, 0 background; n).

    Run-based union-find in numpy: runs of foreground along the last axis are the nodes, and each overlap between
    runs that are neighbours along another axis is one edge (found by binary search over the sorted runs, not by a
    pass over the pixels). Roots are found by hooking and pointer jumping. All passes are vectorized.
    """
    fg = np.ascontiguousarray(foreground, dtype=bool)
    if fg.ndim == 0 or not fg.any():
        return np.zeros(fg.shape, dtype=np.int32), 0
    compact, starts, lengths, n, width = _components(fg)
    padded = np.zeros(fg.size // fg.shape[-1] * width, dtype=np.int32)
    inside = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(int(lengths.sum()))
    padded[inside] = np.repeat(compact + 1, lengths).astype(np.int32)
    return padded.reshape(-1, width)[:, 1:-1].reshape(fg.shape), n


def component_sizes(foreground: np.ndarray) -> np.ndarray:
    """Pixel counts of the face-connected components of a boolean array, without painting a label image: the
    sum of each component's run lengths (what the receptive-field check needs)."""
    fg = np.ascontiguousarray(foreground, dtype=bool)
    if fg.ndim == 0 or not fg.any():
        return np.zeros(0, np.int64)
    compact, _, lengths, n, _ = _components(fg)
    return np.bincount(compact, weights=lengths, minlength=n).astype(np.int64)


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
            # argmax != 0 without the argmax: some other channel is strictly larger than channel 0
            # channel by channel (a max-reduction over a short strided axis is several times slower)
            channel_of = [tuple(c if k == ax else slice(None) for k in range(data.ndim)) for c in
                          range(data.shape[ax])]
            rest_max = np.array(data[channel_of[1]], copy=True)
            for c in channel_of[2:]:
                np.maximum(rest_max, data[c], out=rest_max)
            data, how = rest_max > data[channel_of[0]], "argmax over channels != 0"
    else:
        how = "single channel"
    if data.dtype.kind == "f":
        return data > 0.5, f"{how} > 0.5"
    if data.dtype.kind in "iu" and data.max(initial=0) > 1:
        return data, f"{how}: instance labels"
    return (data if data.dtype == bool else data != 0), f"{how} != 0"


def object_diameters(fg_or_labels: np.ndarray) -> np.ndarray:
    """Equivalent diameters (px) of the objects, per batch sample, all samples pooled."""
    sizes = []
    for sample in fg_or_labels:
        if sample.dtype == bool:
            sizes.append(component_sizes(sample))
            continue
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
