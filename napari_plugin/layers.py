"""Between napari layers and biozoo's `Model`: axes of a layer, predictions slice by slice, outputs as layers.

Plain numpy and biozoo.runtime, no napari or Qt import: the widget (widget.py) hands layers' data and
metadata in and adds the layer data tuples ``(data, kwargs, layer_type)`` this module returns.

Axes follow `biozoo predict --axes`: one letter per dimension (b, c, t, i, z, y, x). Letters the model has no
axis for (a time-lapse, or a stack for a 2D model) are predicted one slice at a time and stacked back, so a
layer keeps its dimensions.
"""
from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from biozoo.runtime.errors import InputError
from biozoo.runtime.format.axes import KNOWN_LETTERS, check_axes_string

LayerData = tuple[Any, dict[str, Any], str]  # napari's LayerDataTuple
CHANNEL_LAYERS_MAX = 8  # outputs with at most this many channels come back as one layer per channel


class Cancelled(Exception):
    """The user pressed cancel: raised from the progress callback between tiles, nothing is added."""


@dataclass(frozen=True)
class LayerGeometry:
    """Where a layer's pixels lie in the world: napari's per-dimension scale and translate, with the axes."""

    axes: str
    scale: tuple[float, ...]
    translate: tuple[float, ...]

    def of(self, letter: str) -> tuple[float, float]:
        i = self.axes.index(letter)
        return float(self.scale[i]), float(self.translate[i])


def layer_axes(shape: Sequence[int], tensor: Any, *, rgb: bool = False, axis_labels: Sequence[str] = ()) -> str:
    """The axes to prefill for a layer: its axis labels when they are axis letters (OME-Zarr layers carry them),
    else the runtime's own guess, else a leading time axis before that guess (a time-lapse for a 2D model), keeping
    only guesses whose fixed sizes (channels) fit. Raises InputError when none fits: the user then types them."""
    from biozoo.runtime.engine.engine import guess_axes

    labels = "".join(str(a).lower() for a in axis_labels)
    if len(labels) == len(shape) and len(set(labels)) == len(labels) and set(labels) <= KNOWN_LETTERS:
        return labels
    if rgb:  # napari's RGB(A) layers keep colour last, after the model's space axes (and a time axis)
        space = "".join(a for a in tensor.letters if a in "zyx")
        for letters in (space + "c", "t" + space + "c"):
            if len(letters) == len(shape):
                return letters
    candidates = []
    for lead, rest in (("", tuple(shape)), ("t", tuple(shape)[1:])):
        if not lead or ("t" not in tensor.letters and rest):
            try:
                candidates.append(lead + guess_axes(rest, tensor))
            except InputError:
                pass
    fitting = [c for c in candidates if _fixed_sizes_fit(c, shape, tensor)]
    if not fitting:
        raise InputError(f"cannot tell the axes of a layer of shape {tuple(shape)} for input '{tensor.id}' (model "
                         f"axes '{tensor.letters}'); type one letter per dimension, e.g. "
                         f"{'t' if 't' not in tensor.letters else ''}{tensor.letters.replace('b', '')}")
    return fitting[0]


def _fixed_sizes_fit(letters: str, shape: Sequence[int], tensor: Any) -> bool:
    """Whether axes the model fixes (a channel count) have that size in the layer."""
    for axis in tensor.axes:
        if axis.type != "space" and isinstance(axis.size, int) and axis.letter in letters:
            if shape[letters.index(axis.letter)] != axis.size:
                return False
    return True


def sliced_axes(axes: str, tensor: Any) -> str:
    """The letters of `axes` the model has no axis for and that are predicted one slice at a time."""
    return "".join(a for a in axes if a not in tensor.letters)


@dataclass
class LayerPrediction:
    """What one run gives back: outputs by id as (array, axes) in the layer's conventions, or as OME-Zarr paths
    (`written`, a file predicted in bounded memory), and the check results."""

    outputs: dict[str, tuple[np.ndarray, str]]
    checks: list[dict[str, Any]]
    slices: int = 1
    detections: list[tuple[tuple[int, ...], Any]] = field(default_factory=list)  # (slice index, Detections)
    written: dict[str, str] = field(default_factory=dict)
    streamed: bool = False  # tile by tile (or block by block) into the written files, not held in memory


def why_not_from_file(model: Any, data: Any, source: Optional[str], axes: str, mask: Any) -> Optional[str]:
    """None when a layer is better predicted from its file, block by block into an OME-Zarr (bounded memory, as
    `biozoo predict` does), than from its data in memory; else why not. Only lazily loaded layers (OME-Zarr and
    other arrays napari reads slice by slice) qualify: a layer in memory is predicted in memory."""
    from biozoo.runtime.commands.omezarr import in_zarr, open_pyramid
    from biozoo.runtime.engine.instance_blocks import why_not_blockwise
    from biozoo.runtime.errors import BiozooError

    if isinstance(data, np.ndarray):
        return "the layer is in memory"
    if not source or not in_zarr(Path(source)):
        return "the layer does not come from a Zarr / OME-Zarr file"
    if mask is not None:
        return "a mask is given (masks apply to layers in memory)"
    if sliced_axes(axes, model.description.inputs[0]) or len(model.description.inputs) > 1:
        return "the layer has axes the model lacks, or the model takes several inputs"
    try:
        levels = open_pyramid(Path(source))[0]
    except BiozooError as e:
        return f"its file is not an OME-Zarr biozoo reads ({e})"
    if not levels or tuple(levels[0].shape) != tuple(np.shape(data)):
        return "the layer is a part of its file (one channel of it)"
    if model.engine.box_lists is not None:  # boxes become a Shapes layer, not an OME-Zarr written block by block
        return "the model's outputs are box lists"
    return why_not_blockwise(model.engine)


def predict_from_file(package: str, source: str, axes: str, folder: Path, *, pixel_size: Any = None,
                      rescale: bool = False, skip_checks: Sequence[str] = (), memory: Optional[str] = None,
                      progress: Optional[Callable[[int, int], None]] = None,
                      cancel: Optional[threading.Event] = None) -> LayerPrediction:
    """`biozoo predict SOURCE -o FOLDER/NAME.ome.zarr`: tiles or blocks sized by the memory available, written as
    they are computed (a huge layer never has to fit in memory); the outputs open lazily. Files in `folder` from
    an earlier run of the same input are replaced; cancelling leaves none behind."""
    from biozoo.runtime.commands.predict_files import predict_files

    def tick(done: int, total: int) -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        if progress is not None:
            progress(done, total)

    folder.mkdir(parents=True, exist_ok=True)
    stem = Path(source).name.split(".")[0] or "layer"
    summary = predict_files(package, [source], folder / f"{stem}.ome.zarr", axes=axes, pixel_size=pixel_size,
                            rescale=rescale, no_check=skip_checks, overwrite=True, quiet=True, memory=memory,
                            progress=tick)
    item = summary["items"][0]
    return LayerPrediction({}, summary["checks"], written=dict(item["written"]), streamed=bool(item.get("streamed")))


def predict_layers(model: Any, arrays: Mapping[str, np.ndarray], axes: Mapping[str, str], *,
                   pixel_size: Any = None, rescale: bool = False, mask: Optional[np.ndarray] = None,
                   skip_checks: Sequence[str] = (), memory: Optional[str] = None,
                   progress: Optional[Callable[[int, int], None]] = None,
                   cancel: Optional[threading.Event] = None) -> LayerPrediction:
    """Predict layers' data with `Model.predict_with_report`, one slice at a time along axes the model lacks.

    `arrays` and `axes`: by input tensor id. `mask`: non-zero = pixels to use, either the primary input's space
    axes or its full shape (then sliced with it). `progress(done, total)` counts tiles over all slices; setting
    `cancel` stops the run at the next tile or slice with Cancelled."""
    from biozoo.runtime.commands.box_files import image_size, to_detections

    described = {t.id: t for t in model.description.inputs}
    primary = model.description.inputs[0].id
    for tid, letters in axes.items():
        check_axes_string(letters, np.ndim(arrays[tid]), f"layer for input '{tid}'")
    loop = sliced_axes(axes[primary], described[primary])
    for tid, letters in axes.items():
        if sliced_axes(letters, described[tid]) != loop:
            raise InputError(f"the layers' axes do not agree: '{axes[primary]}' for '{primary}' and '{letters}' for "
                             f"'{tid}' (predicted one slice at a time along '{loop}' only when every input has it)")
    lengths = {a: np.shape(arrays[primary])[axes[primary].index(a)] for a in loop}
    for tid, letters in axes.items():
        for a in loop:
            if np.shape(arrays[tid])[letters.index(a)] != lengths[a]:
                raise InputError(f"input '{tid}' has {np.shape(arrays[tid])[letters.index(a)]} along '{a}', input "
                                 f"'{primary}' {lengths[a]}; the layers must have the same length along '{a}'")
    indices = list(itertools.product(*(range(lengths[a]) for a in loop)))
    full_mask = mask is not None and np.ndim(mask) == len(axes[primary]) and loop

    def take(data: Any, letters: str, index: tuple[int, ...]) -> tuple[np.ndarray, str]:
        key = tuple(index[loop.index(a)] if a in loop else slice(None) for a in letters)
        return np.asarray(data[key]), "".join(a for a in letters if a not in loop)

    boxes = model.engine.box_lists
    per_slice, checks, found = [], [], []
    tiles = {"per_slice": 1}  # tiles of one slice, as the tiling reports them (one tile: no report)
    for n, index in enumerate(indices):
        def tick(done: int, total: int, n=n) -> None:
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            tiles["per_slice"] = total
            if progress is not None:
                progress(n * total + done, len(indices) * total)

        if cancel is not None and cancel.is_set():
            raise Cancelled()
        inputs, inputs_axes = {}, {}
        for tid in arrays:
            inputs[tid], inputs_axes[tid] = take(arrays[tid], axes[tid], index)
        slice_mask = take(mask, axes[primary], index)[0] if full_mask else mask
        prediction = model.predict_with_report(inputs, inputs_axes, pixel_size=pixel_size, rescale=rescale,
                                               mask=slice_mask, skip_checks=skip_checks, progress=tick,
                                               memory=memory)
        where = ", ".join(f"{a}={i}" for a, i in zip(loop, index))
        checks.extend({**c, "slice": where} if where else c for c in prediction.report.as_list())
        if boxes is not None:
            height, width = image_size(inputs[primary], inputs_axes[primary])
            found.append((index, to_detections(prediction.outputs, boxes, height, width)))
        per_slice.append(prediction.outputs)
        if progress is not None:
            progress((n + 1) * tiles["per_slice"], len(indices) * tiles["per_slice"])
    outputs: dict[str, tuple[np.ndarray, str]] = {}
    if boxes is not None:  # lists of different lengths per slice: they come back as `detections`
        return LayerPrediction(outputs, checks, len(indices), found)
    for tid, (_, out_axes) in per_slice[0].items():
        stacked = np.stack([o[tid][0] for o in per_slice]) if loop else per_slice[0][tid][0]
        outputs[tid] = (stacked.reshape(tuple(lengths.values()) + per_slice[0][tid][0].shape), loop + out_axes)
    return LayerPrediction(outputs, checks, len(indices), found)


def output_geometry(out_axes: str, out_shape: Sequence[int], source: LayerGeometry, in_shape: Sequence[int]
                    ) -> tuple[list[float], list[float]]:
    """(scale, translate) of an output so that it overlays the input layer: an axis the input has takes the input's
    scale divided by the size ratio (an x4 upsampled output has a quarter of the scale), with the pixel centres
    moved as resampling moves them; other axes (channels, new axes) get 1 and 0."""
    scale, translate = [], []
    for letter, n in zip(out_axes, out_shape):
        if letter in source.axes and letter != "c":
            s, t = source.of(letter)
            ratio = in_shape[source.axes.index(letter)] / n if n else 1.0
            scale.append(s * ratio)
            translate.append(t + s * (ratio - 1) / 2)
        else:
            scale.append(1.0)
            translate.append(0.0)
    return scale, translate


def output_layers(model: Any, result: LayerPrediction, source: LayerGeometry, in_shape: Sequence[int]
                  ) -> list[LayerData]:
    """The layers of a prediction: Labels for integer outputs (instances, classes), Image for the others
    (probabilities, restored images; one layer per channel up to CHANNEL_LAYERS_MAX), Shapes rectangles for box
    lists with score and class as features. Every layer overlays the input (scale and translate)."""
    name = model.description.name
    if model.engine.box_lists is not None:
        return [box_layer(name, result, source)]
    layers: list[LayerData] = []
    for tid, (data, out_axes) in result.outputs.items():
        if "c" in out_axes and data.shape[out_axes.index("c")] == 1:  # one channel: not a dimension to slide
            data, out_axes = data.squeeze(out_axes.index("c")), out_axes.replace("c", "")
        scale, translate = output_geometry(out_axes, data.shape, source, in_shape)
        title = f"{name}: {tid}" if len(result.outputs) > 1 else name
        common = {"name": title, "metadata": {"biozoo": {"output": tid, "axes": out_axes, "model": name}}}
        if data.dtype == bool or np.issubdtype(data.dtype, np.integer):
            labels = data.astype(np.uint8) if data.dtype == bool else data
            layers.append((labels, {**common, "scale": scale, "translate": translate}, "labels"))
            continue
        c = out_axes.find("c")
        if 1 < (data.shape[c] if c >= 0 else 0) <= CHANNEL_LAYERS_MAX:
            tensor = model.description.output(tid)
            names = next((list(a.channel_names) for a in tensor.axes if a.channel_names), [])
            names = names if len(names) == data.shape[c] else [str(i) for i in range(data.shape[c])]
            keep = [i for i in range(len(out_axes)) if i != c]
            layers.append((data, {**common, "name": [f"{title} [{n}]" for n in names], "channel_axis": c,
                                  "scale": [scale[i] for i in keep], "translate": [translate[i] for i in keep],
                                  "blending": "additive"}, "image"))
            continue
        layers.append((data, {**common, "scale": scale, "translate": translate}, "image"))
    return layers


def box_layer(name: str, result: LayerPrediction, source: LayerGeometry) -> LayerData:
    """One Shapes layer of rectangles for every slice's boxes. Boxes are in pixel edges (column c spans
    [c, c + 1)), napari puts pixel centres on integers: a box edge e lies at e - 0.5 pixels."""
    lead = [a for a in source.axes if a not in "yxc"][: len(result.detections[0][0]) if result.detections else 0]
    sy, ty = source.of("y") if "y" in source.axes else (1.0, 0.0)
    sx, tx = source.of("x") if "x" in source.axes else (1.0, 0.0)
    rectangles, scores, classes = [], [], []
    for index, det in result.detections:
        lead_world = [source.of(a)[1] + source.of(a)[0] * i for a, i in zip(lead, index)]
        for (x0, y0, x1, y1), score, cls in zip(det.xyxy.astype(np.float64), det.scores, det.classes):
            corners = [(y0, x0), (y0, x1), (y1, x1), (y1, x0)]
            rectangles.append([[*lead_world, ty + sy * (y - 0.5), tx + sx * (x - 0.5)] for y, x in corners])
            scores.append(float(score))
            classes.append(det.name(int(cls)))
    ndim = len(lead) + 2
    kwargs = {"name": f"{name}: boxes", "shape_type": "rectangle", "edge_width": 2 * min(sy, sx),
              "edge_color": "yellow", "face_color": "transparent", "ndim": ndim,
              "features": {"score": np.asarray(scores, np.float32), "label": np.asarray(classes, dtype=object)},
              "text": {"string": "{label} {score:.2f}", "size": 8, "color": "yellow", "anchor": "upper_left"},
              "metadata": {"biozoo": {"model": name, "boxes": len(scores)}}}
    return (np.asarray(rectangles, np.float64).reshape(-1, 4, ndim) if rectangles else [], kwargs, "shapes")


def merged_checks(checks: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per check for the widget: its worst status over the slices, with that slice's message and how many
    slices share it (a time-lapse of 100 frames must not give 100 rows per check). A check reported several times
    in one slice (once per output) keeps its rows."""
    rank = {"error": 0, "warning": 1, "ok": 2, "skipped": 3}
    rows: dict[tuple[str, str, int], dict[str, Any]] = {}
    seen: dict[tuple[str, str, str], int] = {}
    for c in checks:
        name, where = str(c.get("name")), str(c.get("input") or "")
        occurrence = seen.get((name, where, str(c.get("slice"))), 0)
        seen[(name, where, str(c.get("slice")))] = occurrence + 1
        key = (name, where, occurrence)
        row = rows.get(key)
        if row is None or rank.get(c["status"], 4) < rank.get(row["status"], 4):
            rows[key] = {**c, "count": 1 if row is None else row["count"] + 1}
        else:
            row["count"] += 1
    return list(rows.values())
