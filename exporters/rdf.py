"""rdf.yaml (format 0.5) built through bioimageio.spec's description classes, never by string templates.

Building the ``ModelDescr`` object validates every field as it is made, so a package biozoo writes is valid by
construction; the file is then written by bioimageio.spec itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from biozoo.runtime.errors import ExportError


@dataclass(frozen=True)
class TensorFiles:
    test_input: str
    test_output: str
    sample_input: str
    sample_output: str


@dataclass(frozen=True)
class RdfParts:
    """Everything the rdf needs, gathered by the exporter (file names are relative to the package folder)."""

    name: str
    description: str
    authors: Sequence[str]
    license: str
    tags: Sequence[str]
    cite: Sequence[tuple[str, str]]
    documentation: str
    covers: Sequence[str]
    attachments: Sequence[str]
    input_id: str
    output_id: str
    input_description: str
    output_description: str
    space_axes: str
    in_channels: Sequence[str]
    out_channels: Sequence[str]
    min_size: int
    size_step: int
    halo: int
    pixel_size: Optional[Sequence[float]]
    percentiles: tuple[float, float]
    files: TensorFiles
    onnx_file: str
    onnx_sha256: str
    opset: int
    tolerance: dict[str, float]
    biozoo_config: dict[str, Any]
    timestamp: str
    version: str = "0.1.0"


def build_model_descr(parts: RdfParts, root: Path) -> Any:
    """A ``bioimageio.spec.model.v0_5.ModelDescr``; ExportError listing the invalid fields otherwise."""
    from bioimageio.spec import ValidationContext
    from bioimageio.spec.model import v0_5 as m
    from pydantic import ValidationError

    def space(axis_id: str, i: int, output: bool) -> Any:
        scale_unit = {}
        if parts.pixel_size is not None:
            scale_unit = {"scale": float(parts.pixel_size[i]), "unit": "micrometer"}
        if output:
            cls = m.SpaceOutputAxisWithHalo if parts.halo else m.SpaceOutputAxis
            extra = {"halo": parts.halo} if parts.halo else {}
            return cls(id=m.AxisId(axis_id), **extra, **scale_unit,
                                     size=m.SizeReference(tensor_id=m.TensorId(parts.input_id),
                                                          axis_id=m.AxisId(axis_id)))
        return m.SpaceInputAxis(id=m.AxisId(axis_id), size=m.ParameterizedSize(min=parts.min_size, step=parts.size_step),
                                **scale_unit)

    def axes(output: bool) -> list[Any]:
        names = parts.out_channels if output else parts.in_channels
        return [m.BatchAxis(), m.ChannelAxis(channel_names=[m.Identifier(n) for n in names]),
                *(space(a, i, output) for i, a in enumerate(parts.space_axes))]

    def file(name: str) -> Any:
        return m.FileDescr(source=Path(name))

    lo, hi = parts.percentiles
    try:
        with ValidationContext(root=root, perform_io_checks=True):
            return m.ModelDescr(
                name=parts.name, description=parts.description, version=parts.version,
                authors=[m.Author(name=a) for a in parts.authors],
                cite=[m.CiteEntry(text=text, doi=m.Doi(doi)) for text, doi in parts.cite],
                license=m.LicenseId(parts.license), tags=list(parts.tags),
                documentation=file(parts.documentation),
                covers=[file(c) for c in parts.covers],
                attachments=[file(a) for a in parts.attachments],
                timestamp=m.Datetime.model_validate(parts.timestamp),
                inputs=[m.InputTensorDescr(
                    id=m.TensorId(parts.input_id), description=parts.input_description, axes=axes(False),
                    test_tensor=file(parts.files.test_input), sample_tensor=file(parts.files.sample_input),
                    data=m.IntervalOrRatioDataDescr(type="float32"),
                    preprocessing=[m.ScaleRangeDescr(kwargs=m.ScaleRangeKwargs(
                        axes=[m.AxisId("channel"), *(m.AxisId(a) for a in parts.space_axes)],
                        min_percentile=lo, max_percentile=hi))],
                )],
                outputs=[m.OutputTensorDescr(
                    id=m.TensorId(parts.output_id), description=parts.output_description, axes=axes(True),
                    test_tensor=file(parts.files.test_output), sample_tensor=file(parts.files.sample_output),
                    data=m.IntervalOrRatioDataDescr(type="float32"),
                )],
                weights=m.WeightsDescr(onnx=m.OnnxWeightsDescr(
                    source=Path(parts.onnx_file), sha256=m.Sha256(parts.onnx_sha256), opset_version=parts.opset)),
                config=m.Config(
                    bioimageio=m.BioimageioConfig(reproducibility_tolerance=[m.ReproducibilityTolerance(
                        **parts.tolerance)]),
                    biozoo=parts.biozoo_config,
                ),
            )
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()[:10])
        raise ExportError(f"bioimageio.spec refused the description biozoo built: {problems}") from None


def write_rdf(descr: Any, path: Path) -> None:
    from bioimageio.spec import save_bioimageio_yaml_only

    save_bioimageio_yaml_only(descr, file=path)
