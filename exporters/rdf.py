"""rdf.yaml (format 0.5) built through bioimageio.spec's description classes, never by string templates.

One builder for every task: the input tensor, weights, config and everything around them are the same for all;
the outputs come from the task (``ExportTask.output_descrs``). Building the ``ModelDescr`` object validates every
field as it is made, so a package biozoo writes is valid by construction; bioimageio.spec itself writes the file.
"""
from __future__ import annotations

import math

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from biozoo.runtime import ExportError


@dataclass(frozen=True)
class RdfParts:
    """Everything around the outputs, gathered by the exporter (file names are relative to the package folder)."""

    name: str
    description: str
    authors: Sequence[str]
    license: str
    tags: Sequence[str]
    cite: Sequence[tuple[str, str]]
    attachments: Sequence[str]
    input_id: str
    input_description: str
    batch_size: Optional[int]
    space_axes: str
    in_channels: Sequence[str]
    min_size: int
    size_step: int
    pixel_size: Optional[Sequence[float]]
    halo: int  # of the outputs, in input pixels: the axis scales are chosen so that the spec's halo check holds
    percentiles: tuple[float, float]
    test_input: str
    sample_input: str
    weights: Sequence[Any]  # weight_formats.WeightsFile, one per format written
    opset: int
    tolerance: dict[str, float]
    biozoo_config: dict[str, Any]
    timestamp: str
    documentation: str = "README.md"
    cover: str = "cover.png"
    version: str = "0.1.0"


def _scale_unit(pixel_size: Optional[Sequence[float]], i: int, halo: int) -> dict[str, Any]:
    return {"scale": spec_safe_scale(float(pixel_size[i]), halo), "unit": "micrometer"} if pixel_size is not None else {}


def spec_safe_scale(scale: float, halo: int) -> float:
    """The double nearest `scale` for which bioimageio.spec's check of an output halo, halo * scale / scale, gives
    the integer back: with 0.645 um and a halo of 56 it gives 56.00000000000001, and the spec refuses the package.
    One or two units in the last place away there is always such a double (the change is ~1e-16 um)."""
    up = down = scale
    for _ in range(64):
        for candidate in (up, down):
            if not halo or halo * candidate / candidate == halo:
                return candidate
        up, down = math.nextafter(up, math.inf), math.nextafter(down, -math.inf)
    return scale


def space_output_axes(m: Any, contract: Any, pixel_size: Optional[Sequence[float]], input_id: str) -> list[Any]:
    """Output space axes of the input's size (a size reference), with the contract's halo for tiling."""
    cls = m.SpaceOutputAxisWithHalo if contract.halo else m.SpaceOutputAxis
    extra = {"halo": contract.halo} if contract.halo else {}
    return [cls(id=m.AxisId(a), **extra, **_scale_unit(pixel_size, i, contract.halo),
                size=m.SizeReference(tensor_id=m.TensorId(input_id), axis_id=m.AxisId(a)))
            for i, a in enumerate(contract.space_axes)]


def build_model_descr(parts: RdfParts, root: Path, outputs: Callable[[Any], list[Any]], what: str) -> Any:
    """A ``bioimageio.spec.model.v0_5.ModelDescr``; ``outputs(m)`` gives the output descriptions. ExportError
    listing the invalid fields otherwise (``what`` names the task in that message)."""
    from bioimageio.spec import ValidationContext
    from bioimageio.spec.model import v0_5 as m
    from pydantic import ValidationError

    def file(name: str) -> Any:
        return m.FileDescr(source=Path(name))

    batch = m.BatchAxis(size=parts.batch_size) if parts.batch_size is not None else m.BatchAxis()
    in_axes = [batch, m.ChannelAxis(channel_names=[m.Identifier(n) for n in parts.in_channels]),
               *(m.SpaceInputAxis(id=m.AxisId(a), size=m.ParameterizedSize(min=parts.min_size, step=parts.size_step),
                                  **_scale_unit(parts.pixel_size, i, parts.halo)) for i, a in enumerate(parts.space_axes))]
    lo, hi = parts.percentiles
    try:
        with ValidationContext(root=root, perform_io_checks=True):
            return m.ModelDescr(
                name=parts.name, description=parts.description, version=parts.version,
                authors=[m.Author(name=a) for a in parts.authors],
                cite=[m.CiteEntry(text=text, doi=m.Doi(doi)) for text, doi in parts.cite],
                license=m.LicenseId(parts.license), tags=list(parts.tags),
                documentation=file(parts.documentation), covers=[file(parts.cover)],
                attachments=[file(a) for a in parts.attachments],
                timestamp=m.Datetime.model_validate(parts.timestamp),
                inputs=[m.InputTensorDescr(
                    id=m.TensorId(parts.input_id), description=parts.input_description, axes=in_axes,
                    test_tensor=file(parts.test_input), sample_tensor=file(parts.sample_input),
                    data=m.IntervalOrRatioDataDescr(type="float32"),
                    preprocessing=[m.ScaleRangeDescr(kwargs=m.ScaleRangeKwargs(
                        axes=[m.AxisId("channel"), *(m.AxisId(a) for a in parts.space_axes)],
                        min_percentile=lo, max_percentile=hi))],
                )],
                outputs=outputs(m),
                weights=_weights_descr(m, parts),
                config=m.Config(
                    bioimageio=m.BioimageioConfig(reproducibility_tolerance=[m.ReproducibilityTolerance(
                        **parts.tolerance)]),
                    biozoo=parts.biozoo_config,
                ),
            )
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()[:10])
        raise ExportError(f"bioimageio.spec refused the {what} description biozoo built: {problems}; this is a "
                          "biozoo bug (please report it with the run's recipe.yaml)") from None


def _weights_descr(m: Any, parts: RdfParts) -> Any:
    """One entry per written format; ``parent`` names the format the entry was converted from (one has none)."""
    from .weight_formats import pytorch_version

    entries: dict[str, Any] = {}
    for w in parts.weights:
        common = {"source": Path(w.source), "sha256": m.Sha256(w.sha256), "parent": w.parent}
        if w.format == "onnx":
            entries["onnx"] = m.OnnxWeightsDescr(**common, opset_version=parts.opset)
        elif w.format == "torchscript":
            entries["torchscript"] = m.TorchscriptWeightsDescr(**common, pytorch_version=m.Version(pytorch_version()))
        else:
            a = w.architecture
            entries["pytorch_state_dict"] = m.PytorchStateDictWeightsDescr(
                **common, pytorch_version=m.Version(pytorch_version()),
                architecture=m.ArchitectureFromFileDescr(source=Path(a["source"]), sha256=m.Sha256(a["sha256"]),
                                                         callable=m.Identifier(a["callable"]), kwargs=a["kwargs"]))
    return m.WeightsDescr(**entries)


def write_rdf(descr: Any, path: Path) -> None:
    from bioimageio.spec import save_bioimageio_yaml_only

    save_bioimageio_yaml_only(descr, file=path)
