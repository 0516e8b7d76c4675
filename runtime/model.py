"""`load` a package and `predict` with it: the runtime's public entry point.

    model = load("model.zip")               # verifies sha256, builds the onnxruntime session once
    out = model.predict(image, axes="yx")   # numpy in, numpy out (dict by output id when several)
    report = model.test()                   # same checks as `biozoo test`
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

import numpy as np

from .checks.conditions import InputOptions, Prediction, predict_checked
from .checks.input_checks import parse_bytes
from .checks.report import parse_no_check
from .checks.testing import run_model_test
from .engine.engine import ArrayInputs, AxesArg, Engine, Progress
from .engine.memory import tile_budget as elements_for_budget, whole_image_bytes
from .engine.session import OnnxSession
from .engine.tiling import DEFAULT_TILE_BUDGET
from .errors import PackageError
from .format.description import ModelDescription, parse_description
from .format.description_checks import check_consistency
from .format.onnx_scan import external_data_locations
from .format.package import Package, open_package
from .ops.stats import DatasetStatistics, Measure

log = logging.getLogger("biozoo")


def load(source: Union[str, os.PathLike], device: str = "auto", threads: int = 0, arena: bool = True) -> "Model":
    """Open and verify a package (.zip, folder or rdf.yaml) and build its onnxruntime session; `arena`: keep
    onnxruntime's CPU memory arena (engine/session.cpu_memory_options: faster, and it holds the peak of the largest
    tile run while the Model lives; False frees each run's activations when it ends)."""
    package = open_package(source)
    description = parse_description(package.rdf)
    check_consistency(description)
    weights = verified_onnx_weights(package, description)
    model = Model(package, description, OnnxSession(weights, device=device, threads=threads, arena=arena))
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
        self.engine = Engine(package, description, session)

    package = property(lambda self: self.engine.package)
    description = property(lambda self: self.engine.description)
    session = property(lambda self: self.engine.session)
    preprocessing = property(lambda self: self.engine.preprocessing)
    postprocessing = property(lambda self: self.engine.postprocessing)
    network = property(lambda self: self.engine.network)  # the network's own outputs (see Engine)
    pad_mode = property(lambda self: self.engine.pad_mode)

    @property
    def name(self) -> str:
        return self.description.name

    @property
    def provider(self) -> str:
        return self.engine.provider

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
        memory: Union[None, int, str] = None,
        **checks: Any,
    ) -> Union[np.ndarray, dict[str, np.ndarray]]:
        """Run the model on numpy arrays; outputs come back in the caller's axis conventions.

        `inputs`: one array (single-input models) or a dict by input tensor id. `axes`: letters per array, e.g.
        "yx", "cyx", "zyx", "byx" (a str for all inputs or a dict by id); guessed from the model when omitted.
        `tile`: tile length per space axis id, e.g. {"y": 512, "x": 512}; default: whole image within `tile_budget`.
        `memory`: a byte budget for the whole process (an int or e.g. "2GB"): the tile is then the largest that fits
        next to the whole-image arrays, counting the network's measured activation memory (an explicit `tile`
        wins); see biozoo.runtime.engine.memory.
        Input checks (see biozoo.runtime.checks): `pixel_size` (micrometers: one number, one per space axis, or a dict),
        `rescale`, `mask` (non-zero = pixels to use), `ignore_value`, `skip_checks` (names, like --no-check).
        A pixel-size mismatch raises InputError; warnings are raised as `biozoo.runtime.checks.InputWarning`.
        Use `predict_with_report` to get the check results as data.
        """
        outputs = self.predict_with_axes(inputs, axes, tile=tile, tile_budget=tile_budget, dataset_stats=dataset_stats,
                                         progress=progress, memory=memory, **checks)
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
        memory: Union[None, int, str] = None,
        **checks: Any,
    ) -> dict[str, tuple[np.ndarray, str]]:
        """Like predict, but every output comes with its axes string (for writers and viewers)."""
        prediction = self.predict_with_report(inputs, axes, tile=tile, tile_budget=tile_budget,
                                              dataset_stats=dataset_stats, progress=progress, memory=memory, **checks)
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
        memory: Union[None, int, str] = None,
    ) -> Prediction:
        """Predict and return a Prediction: `.outputs` (array, axes) by output id and `.report` (a CheckReport)."""
        if memory is not None and not tile:
            tile_budget = self.memory_tile_budget(inputs, axes, memory)
        opts = InputOptions(pixel_size=pixel_size, file_pixel_size=dict(file_pixel_size) if file_pixel_size else None,
                            rescale=rescale, mask=mask, ignore_value=ignore_value, skip=parse_no_check(skip_checks))
        return predict_checked(self.engine, inputs, axes, opts, tile=tile, tile_budget=tile_budget,
                               dataset_stats=dataset_stats, progress=progress, batch_effects=batch_effects)

    def memory_tile_budget(self, inputs: ArrayInputs, axes: AxesArg, memory: Union[int, str]) -> int:
        """The tile budget (input elements) a byte budget leaves for these inputs held in memory."""
        budget = memory if isinstance(memory, int) and not isinstance(memory, bool) else parse_bytes(str(memory),
                                                                                                     "memory")
        arrays, _ = self.engine.prepare_inputs(inputs, axes)
        return elements_for_budget(self.engine, budget, held=whole_image_bytes(self.engine, {k: v.shape for k, v in
                                                                                       arrays.items()}))[0]

    def dataset_statistics(self, samples: Iterable[Any], axes: AxesArg = None) -> DatasetStatistics:
        """Accumulate the dataset statistics the preprocessing needs over many samples (one pass).

        Each sample is what predict takes (an array or a dict by id), or a pair (sample, its axes).
        """
        return self.engine.dataset_statistics(samples, axes)

    def test(self, sizes: bool = True, skip_checks: Iterable[str] = ()) -> dict[str, Any]:
        """Reproduce the package's test tensors, check other valid sizes and batch independence, report the input
        checks on the test tensors; see checks.testing.run_model_test."""
        return run_model_test(self.engine, check_sizes=sizes, skip_checks=skip_checks)

    # ---- building blocks (used by test and bench): the engine's ------------------------------------------------
    def prepare_inputs(self, inputs: ArrayInputs, axes: AxesArg) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Check the caller's arrays and bring them into each input tensor's axis order (as float32)."""
        return self.engine.prepare_inputs(inputs, axes)

    def run_model_layout(self, arrays: Mapping[str, np.ndarray], *, tile: Optional[Mapping[str, int]] = None,
                         tile_budget: int = DEFAULT_TILE_BUDGET, dataset_stats: Optional[DatasetStatistics] = None,
                         progress: Progress = None, postprocess: bool = True) -> dict[str, np.ndarray]:
        """Preprocess, run (padded and tiled as needed), postprocess. Arrays are in model layout."""
        return self.engine.run_model_layout(arrays, tile=tile, tile_budget=tile_budget, dataset_stats=dataset_stats,
                                            progress=progress, postprocess=postprocess)

    def run_processed(self, processed: Mapping[str, np.ndarray], raw_arrays: Mapping[str, np.ndarray], *,
                      tile: Optional[Mapping[str, int]] = None, tile_budget: int = DEFAULT_TILE_BUDGET,
                      dataset_stats: Optional[DatasetStatistics] = None, progress: Progress = None,
                      postprocess: bool = True, masks: Optional[Mapping[str, np.ndarray]] = None
                      ) -> dict[str, np.ndarray]:
        """Run (padded and tiled) on preprocessed inputs, then postprocess (statistics also see the raw inputs)."""
        return self.engine.run_processed(processed, raw_arrays, tile=tile, tile_budget=tile_budget,
                                         dataset_stats=dataset_stats, progress=progress, postprocess=postprocess,
                                         masks=masks)

    def preprocess(self, arrays: Mapping[str, np.ndarray], dataset_stats: Optional[DatasetStatistics] = None,
                   masks: Optional[Mapping[str, np.ndarray]] = None) -> dict[str, np.ndarray]:
        """Run each input's preprocessing chain (statistics from the raw inputs; `masks`: True = pixel used)."""
        return self.engine.preprocess(arrays, dataset_stats, masks)

    def _axis_ids(self, tensor_id: str) -> tuple[str, ...]:
        return self.engine.axis_ids(tensor_id)

    def required_measures(self) -> tuple[Measure, ...]:
        return self.engine.required_measures()

    def __repr__(self) -> str:
        return f"<biozoo Model {self.name!r} from {self.package.source} on {self.provider}>"
