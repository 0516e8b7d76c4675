"""What a task contributes to its package, with the dense defaults (one image in, one image of the same size out).

`export.export_run` is the one pipeline for every task: scratch folder -> the task's graph (ONNX + parity + test
outputs) -> tensors -> cover -> curves -> config -> README -> ModelDescr -> self-test -> zip. It reads every
difference from the run's `ExportTask` (registered under the recipe's task id in `exporters.tasks`); a task
subclass overrides only the steps where it differs from these defaults (StarDist: channels-last maps and a
post-op; detection: NMS in the graph and box lists).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence

import numpy as np
import torch

from ..documents import readme_text
from ..export_steps import INPUT_ID, TOLERANCE, check_graph, training_rows
from ..onnx_export import export_onnx
from ..parity import Forward, onnx_forward, torch_forward
from ..rdf import space_output_axes
from ..weight_formats import FORMATS
from ..run_dir import RunDir

Citation = tuple[str, str]


@dataclass(frozen=True)
class TestOutput:
    """One output's test tensor (and its sample TIFF, if the package shows one), as written in the package."""

    id: str
    data: np.ndarray
    test_file: str
    sample_file: Optional[str] = None


@dataclass(frozen=True)
class Graph:
    """What a task's graph step leaves in the scratch folder: the ONNX weights, their checks, the test outputs."""

    weights: Path
    opset: int
    parity: dict
    independence: dict
    outputs: tuple[TestOutput, ...]


@dataclass(frozen=True)
class ExportContext:
    """The run being packaged and what every step reads from it (x: the test image as the network sees it)."""

    run: RunDir
    net: torch.nn.Module
    contract: Any
    raw: np.ndarray
    x: np.ndarray
    folder: Path
    opset: int
    post: Optional[dict]  # thresholds an instance task chose on the validation split; None for dense tasks

    @property
    def recipe(self) -> Any:
        return self.run.recipe


class ExportTask:
    """A task's part of a package. Class attributes describe it; methods are the dense defaults."""

    name: ClassVar[str]  # == the recipe's task id
    output_id: ClassVar[str]
    output_description: ClassVar[str]
    tags: ClassVar[tuple[str, ...]]
    cite: ClassVar[tuple[Citation, ...]]
    tolerance: ClassVar[dict] = TOLERANCE
    input_description: ClassVar[str] = "raw image; normalized inside the package (scale_range)"
    batch_size: ClassVar[Optional[int]] = None  # None: any batch size
    records_object_size: ClassVar[bool] = False  # config.biozoo.training.object_size (the runtime checks it)
    cover_range: ClassVar[Optional[tuple[float, float]]] = None  # fixed display range of the cover's output half
    notes: ClassVar[tuple[str, ...]] = ()
    packaged_output: ClassVar[str] = "network"  # the output step of networks.OUTPUTS the exported graph ends with
    weight_formats: ClassVar[tuple[str, ...]] = FORMATS  # what `--weights` may ask for (default: all of them)

    @property
    def description(self) -> str:
        """The rdf's description when the recipe gives none."""
        return self.output_description

    @property
    def readme_description(self) -> str:
        return self.description

    def citations(self, recipe: Any) -> tuple[Citation, ...]:
        return self.cite

    def channel_names(self, recipe: Any) -> list[str]:
        return [self.output_id]

    def postprocessing(self, run: RunDir) -> Optional[dict]:
        return None

    def wrap(self, net: torch.nn.Module) -> torch.nn.Module:
        """The trained network -> the exported one (e.g. softmax added), as networks.build rebuilds it."""
        from biozoo.zoo.networks import wrap

        return wrap(net, self.packaged_output)

    def test_outputs(self, ctx: ExportContext, forward: Forward) -> tuple[np.ndarray, ...]:
        """The test output tensors that ``forward`` (the exported network in some weight format) gives for the test
        input, in the order of ``Graph.outputs``: every weight format must reproduce them."""
        return (forward(ctx.x),)

    def graph(self, ctx: ExportContext) -> Graph:
        exported = self.wrap(ctx.net).eval()
        reference = torch_forward(exported)
        expected = reference(ctx.x)
        info = export_onnx(exported, torch.from_numpy(ctx.x), ctx.folder / "weights.onnx", input_name=INPUT_ID,
                           output_names=(self.output_id,), opset=ctx.opset)
        parity, independence = check_graph(reference, onnx_forward(info.path), ctx.x, ctx.contract)
        return Graph(info.path, info.opset, parity, independence,
                     (TestOutput(self.output_id, expected, "test_output.npy", "sample_output.tif"),))

    def cover_image(self, output: np.ndarray) -> np.ndarray:
        """The 2D image shown next to the input, from the first sample's output (channel, space...)."""
        return output[0]

    def cover(self, ctx: ExportContext, graph: Graph) -> tuple[np.ndarray, Optional[tuple[float, float]]]:
        return self.cover_image(graph.outputs[0].data[0]), self.cover_range

    def config(self, ctx: ExportContext) -> dict[str, Any]:
        """Task entries added to config.biozoo (after the common ones)."""
        return {}

    def metrics_lines(self, ctx: ExportContext) -> list[str]:
        return []

    def task_notes(self, ctx: ExportContext) -> list[str]:
        return list(self.notes)

    def readme(self, ctx: ExportContext, graph: Graph, title: str, has_curves: bool) -> str:
        return readme_text(name=title, description=ctx.recipe.description or self.readme_description,
                           task_notes=self.task_notes(ctx), metrics_lines=self.metrics_lines(ctx),
                           training_rows=training_rows(ctx.run, ctx.contract), parity=graph.parity,
                           independence=graph.independence, tolerance=self.tolerance, input_id=INPUT_ID,
                           output_id=self.output_id, axes=ctx.contract.axes, has_curves=has_curves)

    def output_descrs(self, m: Any, ctx: ExportContext, graph: Graph) -> list[Any]:
        """bioimageio.spec OutputTensorDescr objects (``m`` is ``bioimageio.spec.model.v0_5``)."""
        out = graph.outputs[0]
        names = self.channel_names(ctx.recipe)
        axes = [m.BatchAxis(), m.ChannelAxis(channel_names=[m.Identifier(n) for n in names]),
                *space_output_axes(m, ctx.contract, ctx.recipe.data.pixel_size, INPUT_ID)]
        return [m.OutputTensorDescr(
            id=m.TensorId(out.id), description=self.output_description, axes=axes,
            test_tensor=m.FileDescr(source=Path(out.test_file)), sample_tensor=m.FileDescr(source=Path(out.sample_file)),
            data=m.IntervalOrRatioDataDescr(type="float32"))]

