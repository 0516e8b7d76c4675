"""The input checks themselves: each looks at one aspect of an input and adds one result to a CheckReport.

Thresholds (documented in the CLI help and README): pixel size +-10%; receptive field: at least a quarter of the
objects larger than it (foreground components merge touching objects, so a few large ones prove nothing), or, when
the package records the training objects' size, a median object diameter more than 2x off it (at least 5 objects);
distribution shift: a percentile of the normalized input more than half the training p_low..p_high range away from
the training value; batch effects: per-sample intensity spreads (p99 - p1)
differing more than 2x, or medians further apart than half the typical spread.
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..errors import InputError, PixelSizeError
from ..format.description import Axis, Tensor
from . import pixelsize
from .estimates import PixelSample
from .objects import foreground, object_diameters, recorded_objects, segmentation_like
from .report import CheckReport

LARGE_OBJECT_FRACTION = 0.25  # a few merged (touching) objects must not fire it
SIZE_RATIO_LIMIT = 2.0  # median object diameter vs the training objects'
MIN_OBJECTS_FOR_SIZE = 5
SHIFT_LIMIT = 0.5
SPREAD_RATIO_LIMIT = 2.0
MEDIAN_SHIFT_LIMIT = 0.5
MEMORY_ENV = "BIOZOO_MEMORY_LIMIT"  # bytes biozoo may use, e.g. "2GB"; default: the memory available now
RF_CROP = 1024  # the receptive-field check measures the objects of a central crop at most this long per space axis
LABEL_BYTES_PER_VALUE = 48  # connected-component labelling (objects.label): int64 run ids, bool masks, int32 labels
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50}


# ---- pixel size -------------------------------------------------------------------------------------------------
def pixel_size(report: CheckReport, training: Mapping[str, Any], space_axes: Sequence[Axis],
               given: Optional[dict[str, float]], source: str, rescale: bool) -> Optional[dict[str, float]]:
    """Compare pixel sizes; returns the per-axis factors (input/training size) to resample by, or None.

    Raises InputError when they differ by more than 10% and `rescale` is off (nothing has run or been written)."""
    name = "pixel-size"
    if not report.enabled(name):
        if rescale:
            raise InputError("--rescale needs the pixel-size check; remove --no-check pixel-size")
        return None
    train, train_source = pixelsize.training_pixel_size(training, space_axes)
    if train is None:
        if rescale:
            raise InputError("--rescale: the package records no training pixel size, so there is nothing to "
                             "resample to; predict without --rescale")
        report.add(name, "skipped", "the package records no training pixel size (third-party package or trained "
                                    "on data without one); the input's resolution cannot be checked")
        return None
    numbers: dict[str, Any] = {"training_pixel_size_um": train, "training_source": train_source}
    if given is None:
        if rescale:
            raise InputError(
                f"--rescale needs the input's pixel size, which {source} does not state; pass --pixel-size "
                f"{','.join(f'{train[a.id]:g}' for a in space_axes if a.id in train)} (micrometers, one per axis)")
        report.add(name, "warning", f"the input's pixel size is unknown (no OME/ImageJ/resolution metadata; pass "
                                    f"--pixel-size); the model was trained at {pixelsize.format_size(train)}: make "
                                    "sure the input has that resolution", **numbers)
        return None
    shared = {a: given[a] for a in train if a in given}
    numbers.update(input_pixel_size_um=shared, input_source=source)
    if not shared:
        report.add(name, "skipped", f"the input's pixel size names axes {sorted(given)}, the training one "
                                    f"{sorted(train)}: nothing to compare", **numbers)
        return None
    off = pixelsize.mismatch(shared, train)
    ratios = {a: shared[a] / train[a] for a in shared}
    numbers["ratio"] = {a: round(r, 4) for a, r in ratios.items()}
    if not off:
        report.add(name, "ok", f"input {pixelsize.format_size(shared)} ({source}) matches the training pixel size "
                               f"{pixelsize.format_size(train)} within {pixelsize.TOLERANCE:.0%}", **numbers)
        return None
    worst = max(off.values(), key=lambda r: abs(r - 1))
    detail = (f"input pixel size {pixelsize.format_size(shared)} ({source}) differs from the training pixel size "
              f"{pixelsize.format_size(train)} by {abs(worst - 1):.0%} (more than {pixelsize.TOLERANCE:.0%}): objects "
              f"appear {1 / worst:.2g}x their trained size")
    if rescale:
        report.add(name, "ok", f"{detail}; resampled to the training resolution, predicted, and resampled back "
                               "(linear for images, nearest neighbour for labels)", rescaled=True, **numbers)
        return ratios
    report.add(name, "error", detail, **numbers)
    raise PixelSizeError(f"{detail}. Pass --rescale to resample to the training resolution and back, --pixel-size "
                         "Y,X if the file's metadata is wrong, or --no-check pixel-size to predict anyway", ratios)


# ---- memory -----------------------------------------------------------------------------------------------------
def parse_bytes(text: str, what: str = f"${MEMORY_ENV}") -> int:
    """'2GB', '512 MiB', '1.5g', '1000000' -> bytes (K/M/G/T/P are powers of 1024)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise InputError(f"{what} is '{text}', not a memory size; expected e.g. 2GB, 512MB or a number of bytes")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            text = f.read().strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def available_memory() -> tuple[Optional[int], str]:
    """(bytes a prediction may use, where that number comes from); (None, reason) when it cannot be told.

    ${MEMORY_ENV} overrides; otherwise the smallest of MemAvailable (/proc/meminfo, else sysconf), the cgroup's
    limit minus its usage (containers), and the address-space limit (ulimit -v) minus what the process maps."""
    override = os.environ.get(MEMORY_ENV)
    if override:
        return parse_bytes(override), f"${MEMORY_ENV}"
    found: list[tuple[int, str]] = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append((int(line.split()[1]) * 1024, "MemAvailable"))
    except (OSError, ValueError, IndexError):
        pass
    if not found:
        try:
            found.append((os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free physical memory"))
        except (ValueError, OSError, AttributeError):
            pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 2**60:
            found.append((max(0, limit - usage), "the container's memory limit"))
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            mapped = 0
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmSize:"):
                        mapped = int(line.split()[1]) * 1024
            found.append((max(0, soft - mapped), "the address-space limit (ulimit -v)"))
    except (ImportError, OSError, ValueError):
        pass
    if not found:
        return None, "unknown on this system"
    value, source = min(found)
    return value, f"{source}; set ${MEMORY_ENV} to override"


# ---- receptive field --------------------------------------------------------------------------------------------
def central_crops(model: Any, outputs: Mapping[str, Any], side: int = RF_CROP) -> dict[str, np.ndarray]:
    """Each output (model layout; an array or a lazily written one) cut to its central `side` pixels along every
    space axis, read into memory: objects are measured there, at a cost that does not grow with the image (a 2048^2
    U-Net output of random noise: 44 ms whole, 12-14 ms cropped), and the same way in memory, streamed and on Dask."""
    crops = {}
    for tid, y in outputs.items():
        axes = model.description.output(tid).axes
        crops[tid] = np.asarray(y[tuple(slice(max(0, (n - side) // 2), max(0, (n - side) // 2) + side)
                                        if i < len(axes) and axes[i].type == "space" else slice(None)
                                        for i, n in enumerate(y.shape))])
    return crops


def receptive_field(report: CheckReport, model: Any, outputs: Mapping[str, Any]) -> None:
    """Runs after the prediction on central crops of the outputs (central_crops): it never raises (the outputs
    must not be lost to a check), and it is skipped, with the reason, when labelling the objects would need more
    memory than is available."""
    name = "receptive-field"
    if not report.enabled(name):
        return
    before = len(report.results)
    try:
        shapes = {tid: tuple(y.shape) for tid, y in outputs.items()}
        outputs = central_crops(model, outputs)
        cropped = any(tuple(y.shape) != shapes[tid] for tid, y in outputs.items())
        values = max((int(np.size(y)) for y in outputs.values()), default=0)
        limit, source = available_memory()
        need = values * LABEL_BYTES_PER_VALUE
        if limit is not None and need > limit:
            report.add(name, "skipped", f"measuring the objects of an output of {values} values needs about "
                                        f"{format_bytes(need)}, more than the {format_bytes(limit)} available "
                                        f"({source}); the outputs are kept, this check is not run",
                       needed_bytes=need, available_bytes=limit)
            return
        _receptive_field(report, model, outputs, f", in a central crop of {RF_CROP} px a side" if cropped else "")
    except Exception as e:  # MemoryError included: the prediction is done, a check must not lose it
        del report.results[before:]
        report.add(name, "skipped", f"the objects could not be measured ({type(e).__name__}: {e}); the outputs are "
                                    "kept, this check is not run")


def _receptive_field(report: CheckReport, model: Any, outputs: Mapping[str, np.ndarray], where: str = "") -> None:
    name = "receptive-field"
    desc, config = model.description, model.description.config
    training = (config.get("biozoo") or {}).get("training") or {} if isinstance(config, Mapping) else {}
    task = str((config.get("biozoo") or {}).get("task", "")) if isinstance(config, Mapping) else ""
    images = any(a.type == "space" for t in desc.outputs for a in t.axes)
    if images and recorded_objects(config) is False:  # trained without objects: its images are restored ones
        report.add(name, "skipped", f"'{task}' restores images: its output has no objects to measure")
        return
    rf, rf_source = training.get("receptive_field"), "config.biozoo.training.receptive_field"
    if not rf:
        halo = max((a.halo for t in desc.outputs for a in t.axes if a.type == "space"), default=0)
        rf, rf_source = (2 * halo + 1, "estimated as 2 x halo + 1 from the package's halo") if halo else (None, "")
    if not rf:
        report.add(name, "skipped", "the package records neither a receptive field nor a halo")
        return
    for t in desc.outputs:
        y = outputs.get(t.id)
        if y is None or not segmentation_like(t, config, y.dtype) or not any(a.type == "space" for a in t.axes):
            continue
        fg, how = foreground(y, t)
        if fg is None:
            continue
        d = object_diameters(fg)
        numbers: dict[str, Any] = {"output": t.id, "receptive_field_px": float(rf), "receptive_field_source":
                                   rf_source, "objects": int(d.size), "foreground": how}
        if isinstance(training.get("object_size"), Mapping):
            numbers["training_median_diameter_px"] = training["object_size"].get("median_diameter_px")
        if d.size == 0:
            report.add(name, "ok", f"no objects found in output '{t.id}' ({how})", **numbers)
            return
        large = int(np.count_nonzero(d > rf))
        p95 = float(np.percentile(d, 95))
        numbers.update(median_diameter_px=round(float(np.median(d)), 2), p95_diameter_px=round(p95, 2),
                       max_diameter_px=round(float(d.max()), 2), larger_than_receptive_field=large)
        sizes = (f"median diameter {np.median(d):.1f} px, 95th percentile {p95:.1f} px, largest {d.max():.1f} px vs "
                 f"a receptive field of {rf:g} px{where}")
        trained = numbers.get("training_median_diameter_px")
        ratio = float(np.median(d)) / float(trained) if trained else None
        if ratio is not None:
            numbers["median_diameter_vs_training"] = round(ratio, 3)
        if large >= max(1, LARGE_OBJECT_FRACTION * d.size):
            # enough to bring most of the too-large objects inside the receptive field (always > 1)
            factor = max(float(np.percentile(d, 90)), float(d[d > rf].min())) / float(rf)
            report.add(name, "warning", f"{large} of {d.size} objects in '{t.id}' are larger than the network's "
                                        f"receptive field ({sizes}): the network cannot see them whole. Downsample "
                                        f"the input about {math.ceil(factor * 10) / 10:g}x (or pass its true "
                                        "--pixel-size with --rescale) so that objects fit", **numbers)
        elif ratio is not None and d.size >= MIN_OBJECTS_FOR_SIZE and not 1 / SIZE_RATIO_LIMIT <= ratio <= \
                SIZE_RATIO_LIMIT:
            # objects too large for the network often come out fragmented: the output's sizes are then far off
            # the training objects' although none exceeds the receptive field
            report.add(name, "warning", f"objects in '{t.id}' have a median diameter of {np.median(d):.1f} px, the "
                                        f"training objects {float(trained):.1f} px ({ratio:.2f}x, more than "
                                        f"{SIZE_RATIO_LIMIT:g}x off): the input is probably at another scale than "
                                        "the training data (objects too large for the network come out fragmented), "
                                        "or the segmentation failed. Check the pixel size (--pixel-size, --rescale)",
                       **numbers)
        elif large == 0:
            report.add(name, "ok", f"all {d.size} objects in '{t.id}' fit the receptive field ({sizes})", **numbers)
        else:
            report.add(name, "ok", f"{large} of {d.size} objects in '{t.id}' are larger than the receptive field, "
                                   f"fewer than a quarter (touching objects merge in the output; {sizes})", **numbers)
        return
    report.add(name, "skipped", "no output of this model holds labels, masks or probabilities to measure objects in")


# ---- distribution shift -----------------------------------------------------------------------------------------
def distribution_shift(report: CheckReport, training: Mapping[str, Any], processed: np.ndarray,
                       valid: Optional[np.ndarray], sample: Optional[PixelSample] = None) -> None:
    """`sample`: the positions drawn for this input (shared with the other checks); drawn here when None. The
    percentiles are estimates from at most estimates.SAMPLE_SIZE values (rank error < 1.1 percentile points, see
    checks/estimates.py), far inside the limit of half the training range."""
    name = "distribution-shift"
    if not report.enabled(name):
        return
    ref = training.get("intensity_percentiles")
    if not isinstance(ref, Mapping) or len(ref) < 2:
        report.add(name, "skipped", "the package records no intensity statistics of its training data")
        return
    qs = sorted(float(q) for q in ref)
    expected = np.array([float(ref[k]) for k in sorted(ref, key=float)])
    if sample is None or sample.shape != processed.shape:
        sample = PixelSample(processed.shape, valid)
    got = sample.percentiles(processed, qs)
    spread = max(float(expected[-1] - expected[0]), 1e-6)
    deviation = np.abs(got - expected) / spread
    numbers = {"percentiles": [f"{q:g}" for q in qs], "input_values": [round(float(v), 4) for v in got],
               "training_values": [float(v) for v in expected], "max_deviation": round(float(deviation.max()), 3)}
    pairs = ", ".join(f"p{q:g} {g:.3g} (training {e:.3g})" for q, g, e in zip(qs, got, expected))
    if deviation.max() > SHIFT_LIMIT:
        report.add(name, "warning", f"after normalization the input's intensities are far from the training data's: "
                                    f"{pairs}; deviation {deviation.max():.2f} of the training p{qs[0]:g}-p{qs[-1]:g} "
                                    f"range (limit {SHIFT_LIMIT}). Check that the input is the same kind of image "
                                    "(modality, contrast not inverted, same channel) as in training", **numbers)
    else:
        report.add(name, "ok", f"normalized intensities match the training data ({pairs})", **numbers)


# ---- batch effects ----------------------------------------------------------------------------------------------
def intensity_summary(x: np.ndarray, valid: Optional[np.ndarray]) -> tuple[float, float, float]:
    """(p1, p50, p99) of one sample's raw valid pixels: estimates from a fixed-seed sample of at most
    estimates.SAMPLE_SIZE values (exact for smaller inputs; error bound in checks/estimates.py)."""
    p1, p50, p99 = PixelSample(x.shape, valid).percentiles(x, [1, 50, 99])
    return float(p1), float(p50), float(p99)


def batch_effects(report: CheckReport, summaries: Sequence[tuple[str, tuple[float, float, float]]],
                  dataset_normalized: bool) -> None:
    name = "batch-effects"
    if not report.enabled(name):
        return
    if not dataset_normalized:
        report.add(name, "skipped", "the model normalizes every sample by itself (per-sample statistics)")
        return
    if len(summaries) < 2:
        report.add(name, "skipped", "one sample: dataset statistics equal its own statistics")
        return
    spreads = np.array([max(p99 - p1, 1e-12) for _, (p1, _, p99) in summaries])
    medians = np.array([p50 for _, (_, p50, _) in summaries])
    ratio = float(spreads.max() / spreads.min())
    shift = float((medians.max() - medians.min()) / np.median(spreads))
    numbers = {"samples": [n for n, _ in summaries], "medians": [round(float(m), 4) for m in medians],
               "spreads_p1_p99": [round(float(s), 4) for s in spreads], "spread_ratio": round(ratio, 3),
               "median_shift": round(shift, 3)}
    if ratio > SPREAD_RATIO_LIMIT or shift > MEDIAN_SHIFT_LIMIT:
        lo, hi = int(spreads.argmin()), int(spreads.argmax())
        report.add(name, "warning", f"the model normalizes with statistics over all {len(summaries)} inputs, but "
                                    f"their intensities differ strongly (p1-p99 spread {spreads[lo]:.4g} in "
                                    f"{summaries[lo][0]} vs {spreads[hi]:.4g} in {summaries[hi][0]}, {ratio:.2f}x; "
                                    f"medians {medians.min():.4g}..{medians.max():.4g}), e.g. bleaching or depth: "
                                    "one normalization cannot fit all. Normalize per sample (predict the inputs one "
                                    "by one, or use a package with per-sample normalization)", **numbers)
    else:
        report.add(name, "ok", f"{len(summaries)} inputs have similar intensity distributions (spread ratio "
                               f"{ratio:.2f}, median shift {shift:.2f})", **numbers)


def dataset_normalized(model: Any) -> bool:
    return any(m.is_dataset for ops in model.preprocessing.values() for op in ops for m in op.measures)


def tensor_space_axes(tensor: Tensor) -> list[Axis]:
    return [a for a in tensor.axes if a.type == "space"]
