"""How much memory a prediction needs and how it is run within a budget: the up-front estimate from the file
headers and the model's output shapes, the --memory budget, and the choice between in memory (largest tile that
fits) and streamed (inputs read lazily, outputs written tile by tile)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from ..checks.input_checks import available_memory, format_bytes, parse_bytes
from ..engine.tiling import output_shapes
from ..errors import InputError
from ..model import Model
from .imageio import image_info


def _layout(shape: tuple[int, ...], letters: Optional[str], tensor) -> Optional[list[int]]:
    """The file's shape in the tensor's axis order (1 where the file lacks an axis), without touching pixels;
    None when the axes cannot be told (then only the element count is used)."""
    model = tensor.letters
    if letters is None or len(letters) != len(shape):
        for candidate in (model, model.replace("b", ""), model.replace("b", "").replace("c", "")):
            if len(candidate) == len(shape):
                letters = candidate
                break
        else:
            return None
    return [shape[letters.index(letter)] if letter in letters else 1 for letter in model]


def estimate_memory(model: Model, sample: dict[str, Path], axes: Optional[str],
                    factors: Optional[Mapping[str, float]]) -> tuple[int, list[str]]:
    """Bytes one sample's prediction holds at its peak (a lower bound: the raw file, its float32 copy, the
    resampled, preprocessed and padded copies, the network's and the final outputs) and the parts, for messages."""
    desc = model.description
    total, parts = 0, []
    layouts, scaled = {}, {}
    for tid, path in sample.items():
        shape, dtype, found = image_info(path)
        tensor = desc.input(tid)
        n = math.prod(shape)
        layout = _layout(shape, axes or found, tensor)
        factor = 1.0
        if factors and layout is not None:
            layouts[tid] = layout
            scaled[tid] = [max(1, round(n_ * factors[a.id])) if a.type == "space" and a.id in factors else n_
                           for a, n_ in zip(tensor.axes, layout)]
            factor = math.prod(scaled[tid]) / max(1, math.prod(layout))
        elif factors:
            factor = math.prod(factors.values())
        elif layout is not None:
            layouts[tid] = scaled[tid] = layout
        m = int(n * factor)
        copies = 3 + (1 if factors else 0)  # float32, (resampled,) preprocessed, padded
        total += n * dtype.itemsize + (n + m * (copies - 1)) * 4
        parts.append(f"'{path.name}' {'x'.join(map(str, shape))} {dtype}" + (f", resampled {factor:.3g}x" if factors
                                                                             else ""))
    if len(scaled) == len(sample):
        try:
            held = [(desc, scaled)]  # the outputs at the model's resolution, ...
            if model.network is not desc:
                held.append((model.network, scaled))  # ... the network's before shape-changing post-processing ...
            if factors:
                held.append((desc, layouts))  # ... and resampled back onto the input's grid
            out_bytes = 0
            for description, shapes_in in held:
                shapes = output_shapes(description, shapes_in)
                for t in description.outputs:
                    if shapes.get(t.id):
                        out_bytes += math.prod(shapes[t.id]) * _itemsize(t.dtype)
            total += out_bytes
            parts.append(f"outputs {format_bytes(out_bytes)}")
        except Exception:  # an unusual description: the inputs alone still bound the need from below
            pass
    return total, parts


def _itemsize(dtype: str) -> int:
    try:
        return max(np.dtype(dtype).itemsize, 4)  # outputs are computed in float32 before any cast
    except TypeError:
        return 4


def check_memory(model: Model, samples: Sequence[dict[str, Path]], axes: Optional[str],
                 factors: Sequence[Optional[Mapping[str, float]]], mask: Optional[Path],
                 budget: Optional[tuple[Optional[int], str]] = None) -> None:
    """Refuse, before any pixel is read, a prediction held in memory that needs more than is available (or than
    the --memory budget)."""
    limit, source = budget or available_memory()
    if limit is None:
        return
    extra = 0
    if mask is not None:
        shape, dtype, _ = image_info(mask)
        extra = math.prod(shape) * (dtype.itemsize + 1)
    for sample, f in zip(samples, factors):
        need, parts = estimate_memory(model, sample, axes, f)
        need += extra
        if need > limit:
            hint = ("predict a crop or a downsampled copy of the image, or use a machine with more memory")
            if f and math.prod(f.values()) > 4:
                hint = (f"--rescale resamples the image by {' x '.join(f'{v:.3g}' for v in f.values())} (its pixel "
                        "size vs the training one): check the file's pixel size (--pixel-size overrides wrong "
                        "metadata), or " + hint)
            raise InputError(f"{next(iter(sample.values()))}: the prediction needs at least {format_bytes(need)} of "
                             f"memory ({', '.join(parts)}), but {format_bytes(limit)} are available ({source}); "
                             f"nothing was computed. {hint[0].upper()}{hint[1:]}")


QUICK_BYTES_PER_PIXEL = 4096  # no activation measurement when even this (8x a 32-channel U-Net's) fits


def memory_budget(memory: Optional[str]) -> tuple[Optional[int], str]:
    """(bytes, where from): --memory when given, else what available_memory() reports ($BIOZOO_MEMORY_LIMIT)."""
    if memory is None:
        return available_memory()
    return parse_bytes(memory, "--memory"), "--memory"


def memory_plan(model: Model, sample: dict[str, Path], targets: Mapping[str, Path], axes: Optional[str],
                factors: Optional[Mapping[str, float]], masked: bool, budget: tuple[Optional[int], str],
                explicit: bool, tile: Optional[Mapping[str, int]]) -> tuple[bool, int]:
    """(streamed, tile budget in input elements) for one sample.

    In memory, unchanged, when the whole-image arrays (estimate_memory) plus one tile of the default tile budget
    fit the budget at a generous QUICK_BYTES_PER_PIXEL (no measurement then). Otherwise the network's activation
    memory is measured (engine/memory.py, cached) and the tile is the largest the budget leaves after the
    whole-image arrays (capped at the default tile budget unless --memory is given). When even that does not fit
    and the sample can be streamed (.npy/TIFF/Zarr in and out, a dense, StarDist or box-list model: see
    engine/streaming.py, engine/box_blocks.py; --rescale too, with a mask or not: commands/rescaled.py),
    it is streamed with the tile the whole budget allows (and a resampling band with --rescale); when not even that
    fits, the budget's error (--memory) or check_memory (the memory available) refuses it. An explicit --tile
    wins: in memory, except for a box-list package, whose only tiling is the block path (the blocks' size).
    `masked` (--mask/--ignore-value) streams too (commands/streamed_masks.py), holding a little more besides its
    tiles (the mask's slabs and the compacted valid values)."""
    from ..engine.instance_blocks import why_not_blockwise
    from ..engine.memory import tile_budget
    from ..engine.tiling import DEFAULT_TILE_BUDGET
    from .predict_streamed import STREAMED_INPUTS, STREAMED_OUTPUTS
    from .rescaled import band_bytes

    # --rescale streams too: the image resampled band by band into a temporary file (disk), then streamed
    # (commands/rescaled.py); a band is held besides the tiles
    streamable = (why_not_blockwise(model.engine) is None
                  and all(p.suffix.lower() in STREAMED_INPUTS for p in sample.values())
                  and (model.engine.box_lists is not None  # box files: written whole at the end
                       or all(p.suffix.lower() in STREAMED_OUTPUTS for p in targets.values())))
    if tile and streamable and model.engine.box_lists is not None:
        return True, DEFAULT_TILE_BUDGET  # box lists cannot be stitched from tiles: --tile gives the blocks' size
    limit, _ = budget
    if limit is None:
        return False, DEFAULT_TILE_BUDGET
    need, _ = estimate_memory(model, sample, axes, factors)
    primary = model.description.inputs[0]
    shape, _, _ = image_info(sample[primary.id])
    tile_elements = min(math.prod(shape), DEFAULT_TILE_BUDGET)
    if not explicit and need + tile_elements * QUICK_BYTES_PER_PIXEL <= limit:
        return False, DEFAULT_TILE_BUDGET
    try:
        elements, _ = tile_budget(model.engine, limit, held=need)
        if elements >= math.prod(shape) or not streamable or tile:
            return False, elements if explicit else min(elements, DEFAULT_TILE_BUDGET)
    except InputError:
        if not streamable and explicit:
            raise
        if not streamable:
            return False, DEFAULT_TILE_BUDGET  # check_memory refuses it with the whole-image numbers
    try:
        held = streamed_held(math.prod(shape), masked)
        if factors:  # --rescale: one band of the image and of its resampled copy besides the tiles
            held += band_bytes(int(math.prod(shape) * (1 + math.prod(factors.values()))))
        return True, tile_budget(model.engine, limit, held=held)[0]
    except InputError:  # not even streamed: --memory says why, else check_memory refuses with whole-image numbers
        if explicit:
            raise
        return False, DEFAULT_TILE_BUDGET


def streamed_held(elements: int, masked: bool = False) -> int:
    """Bytes a streamed prediction holds besides its tiles: the statistics' read blocks and their float copies
    (`masked`: the mask's blocks and the valid values gathered into the pairwise sums' leaves too)."""
    from ..ops.streamed_stats import STREAM_CHUNK

    return (32 if masked else 16) * min(elements, STREAM_CHUNK)


def distributed_tile_budget(model: Model, budget: tuple[Optional[int], str], explicit: bool,
                            workers: Optional[int]) -> int:
    """The tile budget of one Dask worker: the budget shared by the local workers and the driver (with
    --scheduler, --memory is per worker), capped at the default tile budget unless --memory is given."""
    from ..engine.memory import tile_budget
    from ..engine.tiling import DEFAULT_TILE_BUDGET

    limit, _ = budget
    if limit is None:
        return DEFAULT_TILE_BUDGET
    share = limit // (workers + 1) if workers else limit
    elements = tile_budget(model.engine, share)[0]
    return elements if explicit else min(elements, DEFAULT_TILE_BUDGET)
