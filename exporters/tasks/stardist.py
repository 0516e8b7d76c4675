"""The StarDist task's package: the network's probability + distance maps in ONNX, ``stardist_postprocessing`` in rdf.

The ONNX graph outputs (B, Y / grid, X / grid, 1 + n_rays), channels last: bioimageio.core's stardist op returns
(batch, y, x, channel) and keeps the tensor's axes, so the output is described in that order before and after the
op. The rdf describes what users get after the post-op: one int32 label image per sample at the input's size
(bioimageio.core and biozoo both turn the maps into labels with stardist's NMS; biozoo tiles the maps and runs the
NMS once on the stitched maps, so objects on tile borders are found once). Thresholds are the ones chosen on the
validation split (the run's test_metrics.json ``postprocessing``). The test output is made by biozoo's own
post-processing of the onnxruntime maps, which gives stardist's result exactly, so both runtimes reproduce it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from biozoo.runtime import ExportError

from ..export_steps import INPUT_ID, check_graph, postprocessing
from ..onnx_export import export_onnx
from ..parity import Forward, onnx_forward, torch_forward
from ..rdf import space_output_axes
from .base import ExportContext, ExportTask, Graph, TestOutput

OUTPUT_ID = "labels"
STARDIST_CITE = ("Schmidt, Weigert, Broaddus, Myers: Cell Detection with Star-convex Polygons. MICCAI 2018",
                 "10.1007/978-3-030-00934-2_30")
# labels are integers, equal or not; up to 100 per million pixels may differ: two runtimes normalize the test input
# with float differences of ~1e-7, which can move a polygon's border by a pixel (seen: 1 pixel of 750k), while one
# object missed or added changes hundreds (a 24 px nucleus is ~450 pixels: ~600 per million of a 688x1088 image)
TOLERANCE = {"absolute_tolerance": 0.0, "relative_tolerance": 0.0, "mismatched_elements_per_million": 100}


def _name_output_axes(path: Path) -> None:
    """The exporter marks dims 0, 2, 3 dynamic (a bcyx output); this output is byxc: name batch, y and x instead."""
    import onnx

    proto = onnx.load(str(path))
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    for dim, name in zip(dims, ("batch", "y", "x")):
        dim.ClearField("dim_value")
        dim.dim_param = name
    dims[3].ClearField("dim_param")
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


class StarDistExport(ExportTask):
    name = "stardist"
    output_id = OUTPUT_ID
    output_description = "instance labels: 0 = background, 1.. one id per object"
    tags = ("instance-segmentation", "stardist", "nuclei", "fluorescence-light-microscopy", "2d", "biozoo")
    cite = (STARDIST_CITE,)
    tolerance = TOLERANCE
    records_object_size = True
    packaged_output = "channels_last"

    @property
    def description(self) -> str:
        return "StarDist 2D instance segmentation"

    @property
    def readme_description(self) -> str:
        return "StarDist 2D"

    def postprocessing(self, run: Any) -> dict:
        return postprocessing(run, "StarDist")

    def graph(self, ctx: ExportContext) -> Graph:
        x = ctx.x
        exported = self.wrap(ctx.net).eval()
        info = export_onnx(exported, torch.from_numpy(x), ctx.folder / "weights.onnx", input_name=INPUT_ID,
                           output_names=(OUTPUT_ID,), opset=ctx.opset)
        _name_output_axes(info.path)
        reference, candidate = torch_forward(exported), onnx_forward(info.path)
        parity, independence = check_graph(reference, candidate, x, ctx.contract)
        independence["note"] = "probability and distance maps"
        (labels,) = self.test_outputs(ctx, candidate)
        if labels.max() == 0:
            raise ExportError(f"the model finds no object in the test image '{ctx.run.split['test'][0]}' at its "
                              f"thresholds {ctx.post}; a package needs a test output with objects (check the run's "
                              "test metrics)")
        return Graph(info.path, ctx.opset, parity, independence,
                     (TestOutput(OUTPUT_ID, labels, "test_labels.npy", "sample_labels.tif"),))

    def test_outputs(self, ctx: ExportContext, forward: Forward) -> tuple[np.ndarray, ...]:
        """Labels by biozoo's StarDist post-processing of the maps ``forward`` gives (what the rdf describes)."""
        from biozoo.runtime import stardist_instances  # numba's kernels load only when a StarDist run is exported

        recipe, post, g = ctx.recipe, ctx.post, ctx.contract.output_stride
        maps = forward(ctx.x)[0]
        if maps.shape[-1] != 1 + recipe.n_rays:
            raise ExportError(f"the network gives {maps.shape[-1]} maps, the recipe's n_rays {recipe.n_rays} needs "
                              f"{1 + recipe.n_rays}")
        labels = stardist_instances(maps[..., 0], maps[..., 1:], post["prob_threshold"], post["nms_threshold"],
                                    (g, g), post["border"])
        return (labels[None, :, :, None].astype(np.int32),)

    def cover(self, ctx: ExportContext, graph: Graph) -> tuple[np.ndarray, tuple[float, float]]:
        return _outlines(ctx.x[0, 0], graph.outputs[0].data[0, ..., 0]), (0.0, 1.0)

    def config(self, ctx: ExportContext) -> dict[str, Any]:
        g = ctx.contract.output_stride
        return {"stardist": {"n_rays": ctx.recipe.n_rays, "grid": [g, g], **ctx.post,
                             "thresholds_chosen_on": "validation split (thresholds.json of the run)"}}

    def task_notes(self, ctx: ExportContext) -> list[str]:
        return _notes(ctx.recipe, ctx.post, ctx.contract.output_stride)

    def metrics_lines(self, ctx: ExportContext) -> list[str]:
        return _metrics_lines(ctx.run.test_metrics)

    def output_descrs(self, m: Any, ctx: ExportContext, graph: Graph) -> list[Any]:
        """byxc before and after the stardist_postprocessing op (core's op keeps the tensor's axes)."""
        post, g, out = ctx.post, ctx.contract.output_stride, graph.outputs[0]
        axes = [m.BatchAxis(), *space_output_axes(m, ctx.contract, ctx.recipe.data.pixel_size, INPUT_ID),
                m.ChannelAxis(channel_names=[m.Identifier("instance_labels")])]
        return [m.OutputTensorDescr(
            id=m.TensorId(OUTPUT_ID), description=self.output_description, axes=axes,
            test_tensor=m.FileDescr(source=Path(out.test_file)), sample_tensor=m.FileDescr(source=Path(out.sample_file)),
            data=m.IntervalOrRatioDataDescr(type="int32"),
            postprocessing=[m.StardistPostprocessingDescr(kwargs=m.StardistPostprocessingKwargs2D(
                prob_threshold=float(post["prob_threshold"]), nms_threshold=float(post["nms_threshold"]),
                n_rays=int(ctx.recipe.n_rays), grid=(g, g), b=int(post["border"])))])]


def _outlines(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The normalized image (dimmed) with each object's outline at full brightness: the cover's right half."""
    out = np.clip(image, 0, 1) * 0.7
    edge = np.zeros(labels.shape, bool)
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    out[edge & (labels > 0)] = 1.0
    return out


def _notes(recipe, post: dict, g: int) -> list[str]:
    return [
        f"the network gives an object probability and {recipe.n_rays} ray distances on a {g}x{g} grid; the "
        f"`stardist_postprocessing` step (probability > {post['prob_threshold']:g}, polygon NMS with overlap > "
        f"{post['nms_threshold']:g}, border {post['border']}) turns them into one int32 label image (0 = background, "
        "1.. objects, 1 = most probable).",
        "biozoo tiles large inputs and runs the NMS once on the stitched maps: objects on tile borders are neither "
        "lost nor duplicated. bioimageio.core needs `pip install stardist` for this post-processing.",
    ]


def _metrics_lines(m: dict) -> list[str]:
    a, b = m["matching"]["0.5"], m.get("baseline", {})
    return [
        f"instance matching at IoU 0.5 (optimal assignment) over {a['n_true']} objects: accuracy tp/(tp+fp+fn) "
        f"**{a['accuracy']:.3f}**, F1 {a['f1']:.3f}, precision {a['precision']:.3f}, recall {a['recall']:.3f}, "
        f"panoptic quality {a['panoptic_quality']:.3f}",
        f"baseline {b.get('name', '?')} (parameters chosen on the validation split): accuracy "
        f"{b.get('accuracy_iou50', float('nan')):.3f}",
        "accuracy per IoU threshold: " + ", ".join(f"{k}: {v['accuracy']:.3f}" for k, v in m["matching"].items()),
    ]


PLUGINS = (StarDistExport(),)  # what biozoo.exporters.tasks registers from this module
