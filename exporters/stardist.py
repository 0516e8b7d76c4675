"""Export of a StarDist run: the network's probability + distance maps in ONNX, ``stardist_postprocessing`` in rdf.

The ONNX graph outputs (B, Y / grid, X / grid, 1 + n_rays), channels last: bioimageio.core's stardist op returns
(batch, y, x, channel) and keeps the tensor's axes, so the output is described in that order before and after the
op. The rdf describes what users get after the post-op: one int32 label image per sample at the input's size
(bioimageio.core and biozoo both turn the maps into labels with stardist's NMS; biozoo tiles the maps and runs the
NMS once on the stitched maps, so objects on tile borders are found once). Thresholds are the ones chosen on the
validation split (the run's test_metrics.json ``postprocessing``). The test output is made by biozoo's own
post-processing of the onnxruntime maps, which gives stardist's result exactly, so both runtimes reproduce it.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from biozoo.runtime.errors import ExportError

OUTPUT_ID = "labels"
STARDIST_CITE = ("Schmidt, Weigert, Broaddus, Myers: Cell Detection with Star-convex Polygons. MICCAI 2018",
                 "10.1007/978-3-030-00934-2_30")
TAGS = ("instance-segmentation", "stardist", "nuclei", "fluorescence-light-microscopy", "2d", "biozoo")
# labels are integers: equal or wrong (a missed object renumbers the others)
TOLERANCE = {"absolute_tolerance": 0.0, "relative_tolerance": 0.0, "mismatched_elements_per_million": 0}


class ChannelsLast(torch.nn.Module):
    """(B, C, Y, X) maps -> (B, Y, X, C), the layout bioimageio.core's stardist post-processing produces."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).permute(0, 2, 3, 1)


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


def export_stardist(run: Any, out: Path, *, authors: Sequence[str], license: str, opset: int,
                    name: Optional[str]) -> Any:
    from biozoo.runtime import stardist_instances as instances

    from . import export_steps as E
    from .documents import write_cover, write_readme
    from .onnx_export import export_onnx
    from .parity import onnx_forward, torch_forward
    from .rdf import write_rdf
    from .zipper import write_deterministic_zip

    recipe, metrics = run.recipe, run.test_metrics
    post = E.postprocessing(run, "StarDist")
    net = run.trained_model()
    contract = run.contract(net)
    n_maps = 1 + recipe.n_rays
    exported = ChannelsLast(net).eval()
    g = contract.output_stride
    raw, x = E.model_input(run, contract)
    percentiles = tuple(recipe.data.percentiles)
    with tempfile.TemporaryDirectory(prefix="biozoo-export-") as tmp:
        folder = Path(tmp)
        info = export_onnx(exported, torch.from_numpy(x), folder / "weights.onnx", input_name=E.INPUT_ID,
                           output_names=(OUTPUT_ID,), opset=opset)
        _name_output_axes(info.path)
        reference, candidate = torch_forward(exported), onnx_forward(info.path)
        parity, independence = E.check_graph(reference, candidate, x, contract)
        independence["note"] = "probability and distance maps"
        maps = candidate(x)[0]
        if maps.shape[-1] != n_maps:
            raise ExportError(f"the network gives {maps.shape[-1]} maps, the recipe's n_rays {recipe.n_rays} needs "
                              f"{n_maps}")
        labels = instances(maps[..., 0], maps[..., 1:], post["prob_threshold"], post["nms_threshold"], (g, g),
                           post["border"])[None, :, :, None].astype(np.int32)
        if labels.max() == 0:
            raise ExportError(f"the model finds no object in the test image '{run.split['test'][0]}' at its thresholds "
                              f"{post}; a package needs a test output with objects (check the run's test metrics)")
        import tifffile

        np.save(folder / "test_input.npy", raw[None, None].astype(np.float32))
        np.save(folder / "test_labels.npy", labels)
        tifffile.imwrite(folder / "sample_input.tif", raw[None, None].astype(np.float32), metadata=None,
                         datetime=False, software=False)
        tifffile.imwrite(folder / "sample_labels.tif", labels, metadata=None, datetime=False, software=False)
        write_cover(folder / "cover.png", raw, _outlines(x[0, 0], labels[0, ..., 0]), (0.0, 1.0))
        attachments = E.attach_curves(run, folder)
        config = E.biozoo_config(run, contract, parity, independence)
        config["stardist"] = {"n_rays": recipe.n_rays, "grid": [g, g], **post,
                              "thresholds_chosen_on": "validation split (thresholds.json of the run)"}
        title = name or recipe.name
        write_readme(folder / "README.md", name=title, description=recipe.description or "StarDist 2D",
                     task_notes=_notes(recipe, post, g), metrics_lines=_metrics_lines(metrics),
                     training_rows=E.training_rows(run, contract), parity=parity, independence=independence,
                     tolerance=TOLERANCE, input_id=E.INPUT_ID, output_id=OUTPUT_ID, axes=contract.axes,
                     has_curves=bool(attachments))
        descr = _model_descr(folder, title, recipe, authors, license, contract, percentiles, opset, attachments,
                             config, post, E.package_timestamp(run), E.file_sha256(info.path))
        write_rdf(descr, folder / "rdf.yaml")
        test = E.self_test(folder)
        write_deterministic_zip(folder, out)
    return E.ExportReport(out, E.file_sha256(out), parity, independence, test)


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


def _model_descr(root: Path, title: str, recipe, authors, license: str, contract, percentiles, opset: int,
                 attachments: list[str], config: dict, post: dict, timestamp: str, sha256: str) -> Any:
    from bioimageio.spec import ValidationContext
    from bioimageio.spec.model import v0_5 as m
    from pydantic import ValidationError

    pixel = recipe.data.pixel_size
    g = contract.output_stride

    def unit(i: int) -> dict:
        return {"scale": float(pixel[i]), "unit": "micrometer"} if pixel else {}

    in_axes = [m.BatchAxis(), m.ChannelAxis(channel_names=[m.Identifier("channel0")]),
               *(m.SpaceInputAxis(id=m.AxisId(a), size=m.ParameterizedSize(min=contract.min_tile,
                                                                             step=contract.size_step), **unit(i))
                 for i, a in enumerate(contract.space_axes))]
    out_axes = [m.BatchAxis(),
                *(m.SpaceOutputAxisWithHalo(id=m.AxisId(a), halo=contract.halo, **unit(i),
                                            size=m.SizeReference(tensor_id=m.TensorId("raw"), axis_id=m.AxisId(a)))
                  for i, a in enumerate(contract.space_axes)),
                m.ChannelAxis(channel_names=[m.Identifier("instance_labels")])]
    lo, hi = percentiles
    try:
        with ValidationContext(root=root, perform_io_checks=True):
            return m.ModelDescr(
                name=title, description=recipe.description or "StarDist 2D instance segmentation",
                version="0.1.0", authors=[m.Author(name=a) for a in authors],
                cite=[m.CiteEntry(text=t, doi=m.Doi(d)) for t, d in (STARDIST_CITE,)],
                license=m.LicenseId(license), tags=list(TAGS), documentation=m.FileDescr(source=Path("README.md")),
                covers=[m.FileDescr(source=Path("cover.png"))],
                attachments=[m.FileDescr(source=Path(a)) for a in attachments],
                timestamp=m.Datetime.model_validate(timestamp),
                inputs=[m.InputTensorDescr(
                    id=m.TensorId("raw"), description="raw image; normalized inside the package (scale_range)",
                    axes=in_axes, test_tensor=m.FileDescr(source=Path("test_input.npy")),
                    sample_tensor=m.FileDescr(source=Path("sample_input.tif")),
                    data=m.IntervalOrRatioDataDescr(type="float32"),
                    preprocessing=[m.ScaleRangeDescr(kwargs=m.ScaleRangeKwargs(
                        axes=[m.AxisId("channel"), *(m.AxisId(a) for a in contract.space_axes)],
                        min_percentile=lo, max_percentile=hi))],
                )],
                outputs=[m.OutputTensorDescr(
                    id=m.TensorId(OUTPUT_ID), description="instance labels: 0 = background, 1.. one id per object",
                    axes=out_axes, test_tensor=m.FileDescr(source=Path("test_labels.npy")),
                    sample_tensor=m.FileDescr(source=Path("sample_labels.tif")),
                    data=m.IntervalOrRatioDataDescr(type="int32"),
                    postprocessing=[m.StardistPostprocessingDescr(kwargs=m.StardistPostprocessingKwargs2D(
                        prob_threshold=float(post["prob_threshold"]), nms_threshold=float(post["nms_threshold"]),
                        n_rays=int(recipe.n_rays), grid=(g, g), b=int(post["border"])))],
                )],
                weights=m.WeightsDescr(onnx=m.OnnxWeightsDescr(source=Path("weights.onnx"), sha256=m.Sha256(sha256),
                                                               opset_version=opset)),
                config=m.Config(bioimageio=m.BioimageioConfig(reproducibility_tolerance=[
                    m.ReproducibilityTolerance(**TOLERANCE)]), biozoo=config),
            )
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()[:10])
        raise ExportError(f"bioimageio.spec refused the StarDist description biozoo built: {problems}") from None
