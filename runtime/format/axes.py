"""Map a caller's array and axes string ("yx", "cyx", "zyx", "byx", ...) to a model tensor's axes and back.

Letters: b batch, c channel, t time, i index, and the space axis ids (z, y, x). Singleton axes are added or
removed as needed; anything else that does not fit is an InputError saying what was given and what is expected.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import InputError
from .description import DataDependentSize, Tensor

KNOWN_LETTERS = set("bctizyx")


def check_axes_string(axes: str, ndim: int, what: str) -> str:
    axes = axes.lower()
    if len(axes) != ndim:
        raise InputError(
            f"{what} has {ndim} dimensions but axes '{axes}' name {len(axes)}; give one letter per dimension, "
            "e.g. --axes yx for a 2D image, cyx for channels first, zyx for a stack"
        )
    if len(set(axes)) != len(axes):
        raise InputError(f"axes '{axes}' for {what} repeat a letter; each axis may appear once")
    unknown = sorted(set(axes) - KNOWN_LETTERS)
    if unknown:
        raise InputError(f"axes '{axes}' for {what} use unknown letters {unknown}; use b, c, t, i, z, y, x")
    return axes


def to_model_layout(data: np.ndarray, axes: str, tensor: Tensor) -> np.ndarray:
    """Reorder/expand/squeeze `data` (with caller `axes`) into the tensor's axis order."""
    what = f"input '{tensor.id}'"
    axes = check_axes_string(axes, data.ndim, what)
    model = tensor.letters
    for i, letter in enumerate(axes):
        if letter not in model and data.shape[i] != 1:
            raise InputError(
                f"{what} has axis '{letter}' of size {data.shape[i]}, but the model's axes are '{model}' "
                f"(no '{letter}'); pass one {letter}-slice at a time, or check --axes"
            )
    keep = [i for i, letter in enumerate(axes) if letter in model]
    data = data.squeeze(axis=tuple(i for i in range(data.ndim) if i not in keep)) if len(keep) < data.ndim else data
    axes = "".join(axes[i] for i in keep)
    for letter, axis in zip(model, tensor.axes):
        if letter in axes:
            continue
        fixed = axis.size if isinstance(axis.size, int) else None
        if fixed not in (None, 1) or (axis.type == "space" and not isinstance(axis.size, int)):
            raise InputError(
                f"{what} with axes '{axes}' lacks axis '{letter}', which the model needs "
                f"({_describe(axis)}); the model's axes are '{model}': add it or fix --axes"
            )
        data = data[..., np.newaxis]
        axes += letter
    return np.ascontiguousarray(data.transpose([axes.index(letter) for letter in model]))


def from_model_layout(data: np.ndarray, tensor: Tensor, caller: Optional[str]) -> tuple[np.ndarray, str]:
    """Bring an output to the caller's conventions: drop singleton axes the caller did not have, caller's order."""
    letters = tensor.letters
    if caller is None:
        return data, letters
    drop = [i for i, letter in enumerate(letters) if letter not in caller and data.shape[i] == 1 and letter in "bcti"
            and not isinstance(tensor.axes[i].size, DataDependentSize)]  # a list of one box stays a list
    if drop:
        data = data.squeeze(axis=tuple(drop))
        letters = "".join(letter for i, letter in enumerate(letters) if i not in drop)
    shared = [letter for letter in caller if letter in letters]
    slots = iter(shared)
    order = "".join(next(slots) if letter in shared else letter for letter in letters)
    if order != letters:
        data = data.transpose([letters.index(letter) for letter in order])
    return data, order


def _describe(axis) -> str:
    if axis.type == "channel":
        names = f" {list(axis.channel_names)}" if axis.channel_names else ""
        return f"{axis.size} channel(s){names}"
    return f"{axis.type} axis '{axis.id}'"
