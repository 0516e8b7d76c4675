"""`load` a package and `predict` with it: the runtime's public entry point.

    model = load("model.zip")               # verifies sha256, builds the onnxruntime session once
    out = model.predict(image, axes="yx")   # numpy in, numpy out (dict by output id when several)
    report = model.test()                   # same checks as `biozoo test`
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional, Union

import numpy as np

from . import axes as axes_mod
from .description import ModelDescription, ParameterizedSize, parse_description
from .description_checks import check_consistency
from .errors import InputError, PackageError
from .onnx_scan import external_data_locations
from .ops import Op, build_chain, network_description, run_chain
from .package import Package, open_package
from .session import OnnxSession
from .stats import DatasetStatistics, Measure, StatsContext
from .tiling import DEFAULT_TILE_BUDGET, output_shapes, plan_tiles, run_tiled

if TYPE_CHECKING:
    from .conditions import Prediction

log = logging.getLogger("biozoo")
ArrayInputs = Union[np.ndarray, Mapping[str, np.ndarray]]
AxesArg = Union[None, str, Mapping[str, str]]
Progress = Optional[Callable[[int, int], None]]


def load(source: Union[str, os.PathLike], device: str = "auto", threads: int = 0) -> "Model":
    """Open and verify a package (.zip, folder or rdf.yaml) and build its onnxruntime session."""
    package = open_package(source)
    description = parse_description(package.rdf)
    check_consistency(description)
    weights = verified_onnx_weights(package, description)
    model = Model(package, description, OnnxSession(weights, device=device, threads=threads))
    if model.session.binding_note:
        log.info("%s", model.session.binding_note)
    return model


def verified_onnx_weights(package: Package, description: ModelDescription) -> Path:
    """The ONNX file, its sha256 checked, and every external-data file it names listed in `weights.onnx.
    external_data` with a sha256 that matches, before onnxruntime reads a byte of it."""
    weights = package.file(description.onnx, "weights.onnx")
    try:
        locations = external_data_locations(weights)
    except (ValueError, IndexError):
        raise PackageError(f"'{weights.name}' is not a valid ONNX file (unreadable protobuf); re-export it") from None
    listed = description.onnx.get("external_data")
    listed_source = listed.get("source") if isinstance(listed, Mapping) else listed
    folder = weights.parent.relative_to(package.root).as_posix()
    for location in locations:
        relative = location if folder == "." else f"{folder}/{location}"  # onnxruntime resolves next to the .onnx
        data = package.inside(relative, f"external data of {weights.name}")
        if not data.is_file():
            raise PackageError(f"{weights.name} needs external data '{location}', which is missing from the package")
        if not isinstance(listed, Mapping) or not listed.get("sha256") or str(listed_source) != relative:
            raise PackageError(
                f"{weights.name} reads external data '{location}', but rdf.yaml does not list it with a sha256 "
                f"(weights.onnx.external_data is {listed!r}); biozoo runs only bytes the description hashes. Add "
                f"'external_data: {{source: {relative}, sha256: ...}}' to weights.onnx, or re-export the weights"
            )
        package.file(listed, "weights.onnx.external_data")
    return weights


class Model:
    """A loaded package: description, processing chains, and one onnxruntime session reused for every call."""

    def __init__(self, package: Package, description: ModelDescription, session: OnnxSession):
        self.package = package
        self.description = description
        self.session = session
        session.bind([t.id for t in description.inputs], [t.id for t in description.outputs])
        self.preprocessing: dict[str, tuple[Op, ...]] = {
            t.id: build_chain(t, f"inputs[{i}].preprocessing") for i, t in enumerate(description.inputs)
        }
        self.postprocessing: dict[str, tuple[Op, ...]] = {
            t.id: build_chain(t, f"outputs[{i}].postprocessing") for i, t in enumerate(description.outputs)
        }
        # the network's own outputs (before shape-changing post-processing such as StarDist's): what is tiled
        self.network = network_description(description, self.postprocessing)
        biozoo_config = description.config.get("biozoo") or {}
        self.pad_mode = str(biozoo_config.get("pad_mode", "reflect"))

    @property
    def name(self) -> str:
        return self.description.name

    @property
    def provider(self) -> str:
        return self.session.provider

    # ---- the public API -------------------------------------------------------------------------------------
    def predict(
        self,
        inputs: ArrayInputs,
        axes: AxesArg = None,
        *,
        tile: Optional[Mapping[str, int]] = None,
        tile_budget: int = DEFAULT_TILE_BUDGET,
        dataset_stats: Optional[DatasetStatistics] = None,
        progress: Progress = None,
        **checks: Any,
    ) -> Union[np.ndarray, dict[str, np.ndarray]]:
        """Run the model on numpy arrays; outputs come back in the caller's axis conventions.

        `inputs`: one array (single-input models) or a dict by input tensor id. `axes`: letters per array, e.g.
        "yx", "cyx", "zyx", "byx" (a str for all inputs or a dict by id); guessed from the model when omitted.
        `tile`: tile length per space axis id, e.g. {"y": 512, "x": 512}; default: whole image within `tile_budget`.
        Input checks (see checks.py): `pixel_size` (micrometers: one number, one per space axis, or a dict),
        `rescale`, `mask` (non-zero = pixels to use), `ignore_value`, `skip_checks` (names, like --no-check).
        A pixel-size mismatch raises InputError; warnings are raised as `biozoo.runtime.checks.InputWarning`.
        Use `predict_with_report` to get the check results as data.
        """
        outputs = self.predict_with_axes(
            inputs, axes, tile=tile, tile_budget=tile_budget, dataset_stats=dataset_stats, progress=progress, **checks
        )
        if len(outputs) == 1:
            return next(iter(outputs.values()))[0]
        return {k: v for k, (v, _) in outputs.items()}

    def predict_with_axes(
        self,
        inputs: ArrayInputs,
        axes: AxesArg = None,
        *,
        tile: Optional[Mapping[str, int]] = None,
        tile_budget: int = DEFAULT_TILE_BUDGET,
        dataset_stats: Optional[DatasetStatistics] = None,
        progress: Progress = None,
        **checks: Any,
    ) -> dict[str, tuple[np.ndarray, str]]:
        """Like predict, but every output comes with its axes string (for writers and viewers)."""
        prediction = self.predict_with_report(
            inputs, axes, tile=tile, tile_budget=tile_budget, dataset_stats=dataset_stats, progress=progress, **checks
        )
        prediction.report.warn()
        return prediction.outputs

    def predict_with_report(
        self,
        inputs: ArrayInputs,
        axes: AxesArg = None,
        *,
        tile: Optional[Mapping[str, int]] = None,
        tile_budget: int = DEFAULT_TILE_BUDGET,
        dataset_stats: Optional[DatasetStatistics] = None,
        progress: Progress = None,
        pixel_size: Any = None,
        rescale: bool = False,
        mask: Optional[np.ndarray] = None,
        ignore_value: Optional[float] = None,
        skip_checks: Iterable[str] = (),
        file_pixel_size: Optional[Mapping[str, float]] = None,
        batch_effects: bool = True,
    ) -> "Prediction":
        """Predict and return a Prediction: `.outputs` (array, axes) by output id and `.report` (a CheckReport)."""
        from .checks import parse_no_check
        from .conditions import InputOptions, predict_checked

        opts = InputOptions(pixel_size=pixel_size, file_pixel_size=dict(file_pixel_size) if file_pixel_size else None,
                            rescale=rescale, mask=mask, ignore_value=ignore_value, skip=parse_no_check(skip_checks))
        return predict_checked(self, inputs, axes, opts, tile=tile, tile_budget=tile_budget,
                               dataset_stats=dataset_stats, progress=progress, batch_effects=batch_effects)

    def dataset_statistics(self, samples: Iterable[Any], axes: AxesArg = None) -> DatasetStatistics:
        """Accumulate the dataset statistics the preprocessing needs over many samples (one pass).

        Each sample is what predict takes (an array or a dict by id), or a pair (sample, its axes).
        """
        inputs = {t.id for t in self.description.inputs}
        stats = DatasetStatistics(m for m in self.required_measures() if m.tensor_id in inputs)
        for sample in samples:
            sample, sample_axes = sample if isinstance(sample, tuple) else (sample, axes)
            arrays, _ = self.prepare_inputs(sample, sample_axes or None)
            stats.update({tid: (x, self._axis_ids(tid)) for tid, x in arrays.items()})
        return stats

    def test(self, sizes: bool = True, skip_checks: Iterable[str] = ()) -> dict[str, Any]:
        """Reproduce the package's test tensors, check other valid sizes and batch independence, report the input
        checks on the test tensors; see testing.run_model_test."""
        from .testing import run_model_test

        return run_model_test(self, check_sizes=sizes, skip_checks=skip_checks)

    # ---- building blocks (used by test and bench) ------------------------------------------------------------
    def prepare_inputs(self, inputs: ArrayInputs, axes: AxesArg) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Check the caller's arrays and bring them into each input tensor's axis order (as float32)."""
        described = self.description.inputs
        if not isinstance(inputs, Mapping):
            required = [t for t in described if not t.optional]
            if len(required) != 1:
                raise InputError(
                    f"this model takes {len(described)} inputs {[t.id for t in described]}; pass a dict by tensor id"
                )
            inputs = {required[0].id: inputs}
        known = {t.id for t in described}
        unknown = sorted(set(inputs) - known)
        if unknown:
            raise InputError(f"unknown input tensor id(s) {unknown}; this model's inputs are {sorted(known)}")
        missing = [t.id for t in described if not t.optional and t.id not in inputs]
        if missing:
            raise InputError(f"missing input(s) {missing}; this model needs {[t.id for t in described]}")
        arrays, caller = {}, {}
        for t in described:
            if t.id not in inputs:
                continue
            data = _check_array(inputs[t.id], t.id)
            given = axes.get(t.id) if isinstance(axes, Mapping) else axes
            caller[t.id] = axes_mod.check_axes_string(given, data.ndim, f"input '{t.id}'") if given else _guess_axes(
                data, t
            )
            x = axes_mod.to_model_layout(data, caller[t.id], t)
            _check_fixed_sizes(x, t)
            arrays[t.id] = x.astype(np.float32, copy=False)
        return arrays, caller

    def run_model_layout(
        self,
        arrays: Mapping[str, np.ndarray],
        *,
        tile: Optional[Mapping[str, int]] = None,
        tile_budget: int = DEFAULT_TILE_BUDGET,
        dataset_stats: Optional[DatasetStatistics] = None,
        progress: Progress = None,
        postprocess: bool = True,
    ) -> dict[str, np.ndarray]:
        """Preprocess, run (padded and tiled as needed), postprocess. Arrays are in model layout."""
        processed = self.preprocess(arrays, dataset_stats)
        return self.run_processed(processed, arrays, tile=tile, tile_budget=tile_budget, dataset_stats=dataset_stats,
                                  progress=progress, postprocess=postprocess)

    def run_processed(
        self,
        processed: Mapping[str, np.ndarray],
        raw_arrays: Mapping[str, np.ndarray],
        *,
        tile: Optional[Mapping[str, int]] = None,
        tile_budget: int = DEFAULT_TILE_BUDGET,
        dataset_stats: Optional[DatasetStatistics] = None,
        progress: Progress = None,
        postprocess: bool = True,
        masks: Optional[Mapping[str, np.ndarray]] = None,
    ) -> dict[str, np.ndarray]:
        """Run (padded and tiled) on preprocessed inputs, then postprocess (statistics also see the raw inputs)."""
        raw = {tid: (x, self._axis_ids(tid)) for tid, x in raw_arrays.items()}
        plan = plan_tiles(self.network, {k: v.shape for k, v in processed.items()}, tile, tile_budget)
        outputs = run_tiled(self.network, processed, self.session.run, plan, self.pad_mode, progress)
        if not postprocess:
            return outputs
        post_stats = StatsContext({**raw, **{tid: (y, self._axis_ids(tid)) for tid, y in outputs.items()}},
                                  dataset_stats, masks)
        final = {
            tid: run_chain(self.postprocessing[tid], y, self._axis_ids(tid), post_stats) for tid, y in outputs.items()
        }
        if self.network is not self.description:  # e.g. labels from a subsampled grid: back to the input's extent
            wanted = output_shapes(self.description, {k: v.shape for k, v in processed.items()})
            final = {tid: y[tuple(slice(0, n) for n in wanted[tid])] if wanted.get(tid) else y
                     for tid, y in final.items()}
        return final

    def preprocess(
        self,
        arrays: Mapping[str, np.ndarray],
        dataset_stats: Optional[DatasetStatistics] = None,
        masks: Optional[Mapping[str, np.ndarray]] = None,
    ) -> dict[str, np.ndarray]:
        """Run each input's preprocessing chain (statistics taken from the raw inputs, as the spec says;
        `masks`: bool arrays by tensor id, True = pixel used by the statistics)."""
        stats = StatsContext({tid: (x, self._axis_ids(tid)) for tid, x in arrays.items()}, dataset_stats, masks)
        return {tid: run_chain(self.preprocessing[tid], x, self._axis_ids(tid), stats) for tid, x in arrays.items()}

    def _axis_ids(self, tensor_id: str) -> tuple[str, ...]:
        return tuple(a.id for a in self.description.tensor(tensor_id).axes)

    def required_measures(self) -> tuple[Measure, ...]:
        chains = (*self.preprocessing.values(), *self.postprocessing.values())
        return tuple(dict.fromkeys(m for ops in chains for op in ops for m in op.measures))

    def __repr__(self) -> str:
        return f"<biozoo Model {self.name!r} from {self.package.source} on {self.provider}>"


def _check_array(data: Any, tensor_id: str) -> np.ndarray:
    array = np.asarray(data)
    if array.dtype.kind not in "biuf":
        raise InputError(f"input '{tensor_id}' has dtype {array.dtype}; expected a numeric image (int or float)")
    if array.size == 0:
        raise InputError(f"input '{tensor_id}' is empty (shape {array.shape}); expected an image with pixels")
    if array.dtype.kind == "f":
        bad = np.count_nonzero(~np.isfinite(array))
        if bad:
            raise InputError(
                f"input '{tensor_id}' contains {bad} NaN/Inf value(s) out of {array.size}; the model needs finite "
                "values: replace them (e.g. np.nan_to_num) or mask them out"
            )
        limit = float(np.finfo(np.float32).max)  # the network runs in float32: larger values would become Inf
        if array.dtype.itemsize > 4 and (array.max() > limit or array.min() < -limit):
            big = np.count_nonzero((array > limit) | (array < -limit))
            raise InputError(
                f"input '{tensor_id}' ({array.dtype}) has {big} value(s) outside the float32 range (|x| > {limit:.4g}, "
                f"largest magnitude {max(abs(float(array.max())), abs(float(array.min()))):.4g}); the model computes "
                "in float32, where they would become Inf: rescale the image (e.g. divide by its maximum) or clip it"
            )
    return array


def _guess_axes(data: np.ndarray, tensor) -> str:
    """The model's letters, minus batch, minus a singleton channel: whichever matches the array's ndim."""
    letters = tensor.letters
    candidates = [letters, letters.replace("b", "")]
    channel = next((a for a in tensor.axes if a.type == "channel"), None)
    if channel is None or channel.size == 1:
        candidates.append(letters.replace("b", "").replace("c", ""))
    for c in candidates:
        if len(c) == data.ndim:
            return c
    raise InputError(
        f"cannot tell the axes of input '{tensor.id}' with shape {data.shape}: the model's axes are '{letters}'; "
        "pass axes explicitly (e.g. axes='yx' or --axes yx)"
    )


def _check_fixed_sizes(x: np.ndarray, tensor) -> None:
    for axis, n in zip(tensor.axes, x.shape):
        if axis.type in ("space",) or axis.size is None:
            continue
        if isinstance(axis.size, int) and n != axis.size and not (axis.type == "batch"):
            names = f" {list(axis.channel_names)}" if axis.channel_names else ""
            raise InputError(
                f"input '{tensor.id}' has {n} along axis '{axis.id}', but the model needs exactly {axis.size}{names}; "
                "check --axes, or select/convert channels to match"
            )
        if isinstance(axis.size, ParameterizedSize) and axis.type != "space" and n < axis.size.min:
            raise InputError(f"input '{tensor.id}' axis '{axis.id}' has {n}; the model needs at least {axis.size.min}")
    batch = next((a for a in tensor.axes if a.type == "batch"), None)
    if batch is not None and batch.size == 1 and x.shape[tensor.axes.index(batch)] != 1:
        raise InputError(
            f"input '{tensor.id}' has a batch of {x.shape[tensor.axes.index(batch)]}, but the model takes one sample "
            "at a time (batch size 1); pass the samples one by one"
        )
