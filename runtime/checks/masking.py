"""Masked normalization: which pixels the statistics may use, and what the outputs hold where they may not.

Masks are boolean "valid" arrays in the primary input's model layout, with every axis that is neither batch nor
space collapsed to 1 (a pixel is valid or not in all its channels). Sources, in order of precedence:
`--mask FILE` (non-zero = valid), `--ignore-value V` (pixels equal to V in every channel are invalid), and
auto-detection: solid regions of exactly 0 or of the image maximum (blacked-out or saturated areas) that survive a
morphological opening with a 9-pixel box and cover more than 20% of a sample. The opening keeps isolated zero pixels
of a clipped dark background in the statistics and removes only large uniform areas.

Masked input pixels are filled with the median of the valid ones (per sample and channel) before the network runs,
so a black or saturated edge does not create false structure at the border of the valid region; the outputs there
are set to 0 (labels, masks, probabilities: background) or NaN (other float outputs, e.g. restorations).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..errors import InputError
from ..format.description import Tensor
from .estimates import PixelSample
from .resample import resample

AUTO_MIN_FRACTION = 0.20
PRESCREEN_FRACTION = 0.15  # sampled share of 0 / of the maximum below which no region of 20% can exist
AUTO_BOX_RADIUS = 4  # 9-pixel box


def _collapsed(tensor: Tensor) -> tuple[int, ...]:
    return tuple(i for i, a in enumerate(tensor.axes) if a.type not in ("batch", "space"))


def _space(tensor: Tensor) -> list[int]:
    return [i for i, a in enumerate(tensor.axes) if a.type == "space"]


def _window_sum(x: np.ndarray, axis: int, r: int) -> np.ndarray:
    n = x.shape[axis]
    c = np.cumsum(x, axis=axis, dtype=np.int64)
    c = np.concatenate([np.zeros_like(np.take(c, [0], axis=axis)), c], axis=axis)
    idx = np.arange(n)
    return np.take(c, np.minimum(idx + r + 1, n), axis=axis) - np.take(c, np.maximum(idx - r, 0), axis=axis)


def opening(region: np.ndarray, axes: Sequence[int], r: int = AUTO_BOX_RADIUS) -> np.ndarray:
    """Binary opening with a (2r+1)-box over `axes` (the image border counts as inside the region)."""
    outside = (~region).astype(np.int32)
    for a in axes:
        outside = _window_sum(outside, a, r)
    eroded = (outside == 0).astype(np.int32)
    for a in axes:
        eroded = _window_sum(eroded, a, r)
    return (eroded > 0) & region


def _surely_no_region(x: np.ndarray, sample: Optional[PixelSample], where: Optional[tuple[int, int]]) -> bool:
    """True when a pixel sample shows too few zeros and too few maximal values for a region of AUTO_MIN_FRACTION.

    A share of 20% seen as under 15% in a jittered sample of ~2^16 values has probability < 2 exp(-2 n 0.05^2)
    (Hoeffding), i.e. never; and a maximum held by 20% of the pixels is in the sample. So the full-image passes
    below run only on images that may have such a region (the verdicts are those of the full passes)."""
    if sample is None or sample.exact or sample.shape != x.shape:
        return False
    values = sample.values(x, where)
    if values.size < 1024:
        return False
    return bool(np.mean(values == 0) < PRESCREEN_FRACTION and np.mean(values == values.max()) < PRESCREEN_FRACTION)


def detect_constant_regions(x: np.ndarray, tensor: Tensor, pixels: Optional[PixelSample] = None
                            ) -> tuple[Optional[np.ndarray], dict]:
    """Auto-detect blacked-out / saturated regions per sample; returns (valid mask or None, numbers).
    `pixels`: positions drawn for x (checks/estimates.py), to skip the full passes where no region can be."""
    collapsed, space = _collapsed(tensor), _space(tensor)
    batch = next((i for i, a in enumerate(tensor.axes) if a.type == "batch"), None)
    invalid = np.zeros([1 if i in collapsed else n for i, n in enumerate(x.shape)], dtype=bool)
    found: list[dict] = []
    for b in range(x.shape[batch] if batch is not None else 1):
        if _surely_no_region(x, pixels, (batch, b) if batch is not None else None):
            continue
        sel = (slice(None),) * batch + (slice(b, b + 1),) if batch is not None else ()
        sample = x[sel]
        for value, label in ((0.0, "zero"), (float(sample.max()), "saturated")):
            if label == "saturated" and value <= float(sample.min()):
                continue  # a constant image: nothing to normalize against, not a region to exclude
            const = np.all(sample == value, axis=collapsed, keepdims=True) if collapsed else sample == value
            if const.mean() < AUTO_MIN_FRACTION:
                continue
            region = opening(const, space)
            fraction = float(region.mean())
            if fraction >= AUTO_MIN_FRACTION and fraction < 1.0:
                invalid[sel] |= region
                found.append({"sample": b, "value": value, "kind": label, "fraction": round(fraction, 4)})
    if not found:
        return None, {}
    return ~invalid, {"regions": found}


def mask_layout(mask_shape: Sequence[int], x_shape: Sequence[int], tensor: Tensor, caller_axes: str) -> str:
    """How a user mask of `mask_shape` covers an input of model-layout `x_shape`: "space" (the space axes only, in
    the tensor's order) or "full" (the input's own shape in the caller's axes); raises InputError otherwise. Reads
    no pixel (the streamed path checks a mask as large as the image with it)."""
    from ..format.axes import check_axes_string, to_model_layout

    mask_shape, space = tuple(int(n) for n in mask_shape), _space(tensor)
    want = tuple(int(x_shape[i]) for i in space)
    if len(mask_shape) == len(space):
        if mask_shape != want:
            raise InputError(
                f"--mask has shape {mask_shape}, the input's space axes "
                f"({''.join(tensor.axes[i].id for i in space)}) have {want}; the mask must cover the image pixel by "
                "pixel"
            )
        return "space"
    try:  # the same checks on a tiny stand-in (to_model_layout copies), then the model-layout shape
        to_model_layout(np.empty([1 if n == 1 else 2 for n in mask_shape], np.uint8), caller_axes, tensor)
        letters = check_axes_string(caller_axes, len(mask_shape), f"input '{tensor.id}'")
        full = tuple(mask_shape[letters.index(k)] if k in letters else 1 for k in tensor.letters)
    except InputError:
        full = None
    if full is None or full != tuple(x_shape):
        raise InputError(
            f"--mask has shape {mask_shape}; expected the shape of the image's space axes {want} "
            f"(or the input's own shape); non-zero = pixels to use"
        )
    return "full"


def mask_from_array(mask: np.ndarray, x: np.ndarray, tensor: Tensor, caller_axes: str) -> np.ndarray:
    """A user mask (space axes only, or the input's full shape in the caller's axes) as a valid mask."""
    from ..format.axes import to_model_layout

    mask = np.asarray(mask)
    space = _space(tensor)
    if mask_layout(mask.shape, x.shape, tensor, caller_axes) == "space":
        shape = [x.shape[i] if i in space else 1 for i in range(x.ndim)]
        return (mask != 0).reshape(shape)
    full = to_model_layout(mask, caller_axes, tensor)
    collapsed = _collapsed(tensor)
    return np.any(full != 0, axis=collapsed, keepdims=True) if collapsed else full != 0


def mask_from_value(x: np.ndarray, tensor: Tensor, value: float) -> np.ndarray:
    collapsed = _collapsed(tensor)
    equal = np.all(x == np.float32(value), axis=collapsed, keepdims=True) if collapsed else x == np.float32(value)
    return ~equal


def check_not_empty(valid: np.ndarray, tensor: Tensor, source: str) -> None:
    batch = next((i for i, a in enumerate(tensor.axes) if a.type == "batch"), None)
    per_sample = valid.reshape(valid.shape[batch], -1) if batch is not None else valid.reshape(1, -1)
    empty = [i for i, row in enumerate(per_sample) if not row.any()]
    if empty:
        raise InputError(
            f"{source} leaves no valid pixel in sample(s) {empty}: nothing to normalize against; "
            "check the mask (non-zero = pixels to use) or the ignored value"
        )


def fill_masked(x: np.ndarray, valid: np.ndarray, tensor: Tensor) -> np.ndarray:
    """A copy of x with invalid pixels set to the median of the valid ones, per sample and channel."""
    keep = [i for i, a in enumerate(tensor.axes) if a.type not in ("space",)]
    out = x.copy()
    full_valid = np.broadcast_to(valid, x.shape)
    for index in np.ndindex(*[x.shape[i] for i in keep]):
        sel = [slice(None)] * x.ndim
        for i, k in zip(keep, index):
            sel[i] = k
        v = full_valid[tuple(sel)]
        if v.all():
            continue
        plane = out[tuple(sel)]
        plane[~v] = np.median(plane[v]) if v.any() else 0
    return out


def output_mask(valid: np.ndarray, source: Tensor, target: Tensor, shape: Sequence[int]) -> Optional[np.ndarray]:
    """The input's valid mask mapped onto an output of `shape` (nearest neighbour when scaled); None when the
    output's space axes do not follow the input's (nothing sensible to mask)."""
    src_index = {a.id: i for i, a in enumerate(source.axes) if a.type in ("space", "batch")}
    follow = [(j, a.id) for j, a in enumerate(target.axes) if a.type in ("space", "batch") and a.id in src_index]
    if not any(target.axes[j].type == "space" for j, _ in follow) or any(
            a.type == "space" and a.id not in src_index for a in target.axes):
        return None
    order = [src_index[aid] for _, aid in follow]
    rest = [i for i in range(valid.ndim) if i not in order]
    if any(valid.shape[i] != 1 for i in rest):
        return None  # e.g. a batch the output does not have
    m = valid.transpose(order + rest).reshape([valid.shape[i] for i in order])
    per_axis = [1] * len(target.axes)
    for k, (j, _) in enumerate(follow):
        per_axis[j] = m.shape[k]
    m = m.reshape(per_axis)
    if any(target.axes[j].type == "batch" and m.shape[j] not in (1, shape[j]) for j, _ in follow):
        return None
    lengths = {j: shape[j] for j, _ in follow if target.axes[j].type == "space"}
    return resample(m.astype(np.uint8), lengths, "nearest").astype(bool)


def fill_value_for(output: Tensor, segmentation_like: bool, dtype: np.dtype) -> float:
    if dtype.kind != "f" or segmentation_like:
        return 0.0
    return float("nan")


def apply_output_mask(y: np.ndarray, valid: np.ndarray, value: float) -> np.ndarray:
    out = np.array(y, copy=True)
    out[~np.broadcast_to(valid, out.shape)] = value
    return out
