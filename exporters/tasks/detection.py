"""The detection task's package: NMS inside the ONNX graph, box-list outputs with index axes, test tensors, checks.

A detection package differs from the dense ones in everything after the network: the graph is ``DetectorWithNMS``
(decode + ONNX NonMaxSuppression, thresholds from the run's test_metrics.json ``postprocessing``), the outputs are
``boxes [K, 4]``, ``scores [K]`` and ``labels [K]`` (int64, 1 = first class) with an index axis of the fixed size K
= ``max_detections``: the detections, then padding rows (score 0, label 0, box 0), recorded as
``config.biozoo.detection.padding`` so the runtime drops them without guessing. A fixed K, because an image without
objects must still give valid outputs (the spec forbids a data-dependent axis of length 0). The input takes one
image at a time (``batch: 1``: box lists of several images cannot share a tensor). Parity is checked twice: the
dense head maps at random valid sizes (as for every zoo model), and the final box lists (their real rows) on the
real test image and on the centre crops bioimageio.core's test_model will feed it. Image padding is ``constant``
(zeros after normalization: background), so padding never invents mirrored nuclei.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from biozoo.runtime import ExportError

from ..documents import table_lines
from ..export_steps import INPUT_ID, postprocessing, training_rows, valid_random_inputs
from ..onnx_export import export_onnx
from ..parity import check_batch_independence, check_parity, onnx_forward, torch_forward
from .base import ExportContext, ExportTask, Graph, TestOutput

OUTPUTS = ("boxes", "scores", "labels")
CORNERS = ("x_min", "y_min", "x_max", "y_max")
DETECTION_CITE = ("Zhou, Wang, Kraehenbuehl: Objects as Points. arXiv 2019 (CenterNet)", "10.48550/arXiv.1904.07850")


class DetectionExport(ExportTask):
    name = "detection"
    weight_formats = ("onnx",)  # the NMS inside the graph is an ONNX NonMaxSuppression node, no torch op
    output_id = "boxes"
    output_description = "object detector (boxes, scores, labels)"
    tags = ("object-detection", "bounding-boxes", "nuclei", "fluorescence-light-microscopy", "2d", "biozoo")
    cite = (DETECTION_CITE,)
    input_description = "raw image, one at a time; normalized inside (scale_range)"
    batch_size = 1  # box lists of several images cannot share a tensor
    records_object_size = True

    def postprocessing(self, run: Any) -> dict:
        return postprocessing(run, "detection")

    def graph(self, ctx: ExportContext) -> Graph:
        from biozoo.zoo.detector import DetectorWithNMS, export_detector_onnx

        net, x, post, contract = ctx.net, ctx.x, ctx.post, ctx.contract
        module = DetectorWithNMS(net, post["score_threshold"], post["iou_threshold"], post["max_detections"]).eval()
        dense = export_onnx(net, torch.from_numpy(x), ctx.folder / "dense.onnx", input_name=INPUT_ID, opset=ctx.opset)
        parity = check_parity(torch_forward(net), onnx_forward(dense.path),
                              [x, *valid_random_inputs(contract, x.shape[1])]).as_dict()
        independence = {"max_abs_difference": check_batch_independence(torch_forward(net), x[0], "torch model"),
                        "passed": True, "note": "dense head maps in torch; the package takes one image at a time"}
        dense.path.unlink()
        weights = export_detector_onnx(module, torch.from_numpy(x), ctx.folder / "weights.onnx", input_name=INPUT_ID,
                                       output_names=OUTPUTS, opset=ctx.opset)
        expected = _forward(module, x)
        if _real_count(expected) == 0:
            raise ExportError(
                "the model detects nothing on the first held-out test image, so every test output tensor would be "
                "all padding (zeros), which bioimageio.spec refuses as a test tensor. Is the model trained (see mAP50 "
                f"in test_metrics.json)? Otherwise lower score_threshold in the recipe (now {post['score_threshold']})")
        parity["boxes"] = _box_parity(module, weights, x, contract)
        return Graph(weights, ctx.opset, parity, independence,
                     tuple(TestOutput(tid, value, f"test_{tid}.npy") for tid, value in zip(OUTPUTS, expected)))

    def cover(self, ctx: ExportContext, graph: Graph) -> tuple[np.ndarray, tuple[float, float]]:
        boxes = graph.outputs[0].data[:_real_count([o.data for o in graph.outputs])]
        return _draw_boxes(ctx.x[0, 0], boxes), (0.0, 1.0)

    def config(self, ctx: ExportContext) -> dict[str, Any]:
        from biozoo.zoo.detector import PADDING

        return {"pad_mode": "constant",
                "detection": {"classes": list(ctx.recipe.classes), "label_offset": 1, "box_format": list(CORNERS),
                              "coordinates": "input pixels, pixel edges", **ctx.post,
                              # max_detections (in post) is K, the rows of every output; the runtime reads both
                              "padding": PADDING}}

    def readme(self, ctx: ExportContext, graph: Graph, title: str, has_curves: bool) -> str:
        return _readme(title, ctx.recipe, ctx.run.test_metrics, training_rows(ctx.run, ctx.contract), graph.parity,
                       graph.independence, self.tolerance, _real_count([o.data for o in graph.outputs]), has_curves)

    def output_descrs(self, m: Any, ctx: ExportContext, graph: Graph) -> list[Any]:
        k = int(ctx.post["max_detections"])
        padding = f"{k} rows: detections, then padding (all 0)"  # <= 128 chars

        def listed(tid: str, description: str, dtype: str, channels: Sequence[str] = ()) -> Any:
            axes: list[Any] = [m.IndexOutputAxis(id=m.AxisId("detection"), size=k)]
            if channels:
                axes.append(m.ChannelAxis(channel_names=[m.Identifier(c) for c in channels]))
            return m.OutputTensorDescr(id=m.TensorId(tid), description=description, axes=axes,
                                       test_tensor=m.FileDescr(source=Path(f"test_{tid}.npy")),
                                       data=m.IntervalOrRatioDataDescr(type=dtype))

        classes = ", ".join(f"{i + 1} = {c}" for i, c in enumerate(ctx.recipe.classes))
        return [listed("boxes", f"x_min, y_min, x_max, y_max in input pixels (pixel edges), by decreasing score; "
                                f"{padding}", "float32", CORNERS),
                listed("scores", f"detection confidence (0..1), decreasing; {padding}", "float32"),
                listed("labels", f"class label ({classes}); {padding}", "int64")]


def _forward(module: torch.nn.Module, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in module(torch.from_numpy(np.ascontiguousarray(x, np.float32)))]


def _real_count(outputs: Sequence[np.ndarray]) -> int:
    """The detections among the K rows (boxes, scores, labels): real scores are > 0, padding rows 0 and last."""
    return int(np.count_nonzero(np.asarray(outputs[1]) != 0))


def _box_parity(module, weights: Path, x: np.ndarray, contract) -> dict[str, Any]:
    """torch vs onnxruntime on the final box lists: the test image and centre crops at the sizes core will try.

    Both must give K rows, the same number of detections (an empty list is fine: all padding), the same labels, and
    scores / corners within rounding; the padding rows must be zeros."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(weights), providers=["CPUExecutionProvider"])
    k = module.settings["max_detections"]
    h, w = x.shape[2:]
    lo = contract.min_tile
    crops = [x] + [_centre_crop(x, min(lo + n * contract.size_step, h), min(lo + n * contract.size_step, w))
                   for n in range(3)]
    worst, counts = 0.0, []
    for crop in crops:
        want = _forward(module, crop)
        got = session.run(None, {session.get_inputs()[0].name: crop})
        shapes = [tuple(g.shape) for g in got]
        if shapes != [(k, 4), (k,), (k,)]:
            raise ExportError(f"the exported detector gives outputs of shapes {shapes} for input {crop.shape}; "
                              f"expected ({k}, 4), ({k},), ({k},) (max_detections rows): the in-graph padding is "
                              "broken")
        n, n_torch = _real_count(got), _real_count(want)
        diff = float(np.abs(got[0][:n] - want[0][:n]).max(initial=0.0)) if n == n_torch else np.inf
        score_diff = float(np.abs(got[1][:n] - want[1][:n]).max(initial=0.0)) if n == n_torch else np.inf
        padding_ok = not (np.any(got[0][n:]) or np.any(got[1][n:]) or np.any(got[2][n:]))
        if diff > 1e-2 or score_diff > 1e-4 or not np.array_equal(got[2][:n], want[2][:n]) or not padding_ok:
            raise ExportError(
                f"box parity failed for input {crop.shape}: onnxruntime found {n} boxes, torch {n_torch}, corners "
                f"differ by up to {diff:.3g} px, scores by {score_diff:.3g}, padding rows all zero: {padding_ok}. "
                "With a trained model this means the in-graph decode/NMS is broken; with an untrained one, "
                "thousands of near-equal scores make float rounding pick different boxes: train longer")
        worst = max(worst, diff)
        counts.append(n)
    return {"max_box_corner_difference_px": worst, "boxes_found": counts, "capacity": k,
            "shapes": [list(c.shape) for c in crops], "passed": True}


def _centre_crop(x: np.ndarray, h: int, w: int) -> np.ndarray:
    y0, x0 = (x.shape[2] - h) // 2, (x.shape[3] - w) // 2
    return np.ascontiguousarray(x[:, :, y0:y0 + h, x0:x0 + w])


def _draw_boxes(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The normalized image (dimmed) with box outlines at full brightness: the cover's right half."""
    out = np.clip(image, 0, 1) * 0.7
    h, w = out.shape
    for x0, y0, x1, y1 in np.round(boxes).astype(int):
        x0, x1, y0, y1 = max(x0, 0), min(x1, w) - 1, max(y0, 0), min(y1, h) - 1
        if x1 < x0 or y1 < y0:
            continue
        out[y0, x0:x1 + 1] = out[y1, x0:x1 + 1] = 1.0
        out[y0:y1 + 1, x0] = out[y0:y1 + 1, x1] = 1.0
    return out


def _readme(title: str, recipe, metrics: dict, training_rows, parity: dict, independence: dict, tolerance: dict,
            n_test_boxes: int, has_curves: bool) -> str:
    post, base, at = metrics["postprocessing"], metrics.get("baseline", {}), metrics.get("at_score_threshold", {})
    rows = [(k, f"{v.split(' (')[0]} (whole-image prediction: box lists are never tiled)" if k == "receptive field"
             else v) for k, v in training_rows]
    table = table_lines(rows)
    lines = [
        f"# {title}", "", recipe.description or "An anchor-free single-stage object detector.", "",
        "## Inputs and outputs", "",
        "- input `raw`: one 2D image at a time (axes `bcyx`, batch 1); any size, biozoo pads (with background).",
        f"- every output has K = {post['max_detections']} rows (the capacity, whatever the image holds): the "
        "detections by decreasing score, then padding rows with score 0, label 0 and box 0, 0, 0, 0 "
        "(`config.biozoo.detection.padding`). `biozoo` drops the padding rows; other tools: keep the rows with "
        "score > 0.",
        "- output `boxes` [K, 4]: x_min, y_min, x_max, y_max in input pixels (pixel edges: column c spans [c, c+1)).",
        "- output `scores` [K]: confidence, sorted decreasing; output `labels` [K]: "
        + ", ".join(f"{i + 1} = {c}" for i, c in enumerate(recipe.classes)) + " (torchvision convention).",
        f"- inside the graph: 3x3 peak filter on the objectness maps, score > {post['score_threshold']:g} (chosen on "
        f"{post.get('score_threshold_chosen_on', '?')}), ONNX NonMaxSuppression at IoU {post['iou_threshold']:g}, "
        f"the best {post['max_detections']} boxes kept, padded to {post['max_detections']} rows.", "",
        "## How to run", "", "```bash", "pip install biozoo", "biozoo test model.zip",
        "biozoo predict model.zip image.tif -o predictions/   # image.txt (YOLO), image.csv, image.json", "```", "",
        "```python", "from biozoo.runtime import load", 'out = load("model.zip").predict(image, axes="yx")',
        'boxes, scores, labels = out["boxes"], out["scores"], out["labels"]', "```", "",
        "## Training", "", *table, "", *(["![training curves](curves.png)", ""] if has_curves else []),
        "# Validation", "",
        "Held-out test split (made once from file content hashes, never used for training or model selection), "
        "COCO-style 101-point interpolated AP:", "",
        f"- mAP50 **{metrics['mAP50']:.3f}**, mAP50-95 **{metrics['mAP50-95']:.3f}** over "
        f"{metrics.get('ground_truth')} objects in {metrics.get('images')} images (detections above score "
        f"{post.get('map_score_threshold')}).",
        f"- baseline {base.get('name', '?')}: mAP50 {base.get('mAP50', float('nan')):.3f}, mAP50-95 "
        f"{base.get('mAP50-95', float('nan')):.3f}.",
        f"- at the package's score threshold: precision {at.get('precision50', float('nan')):.3f}, recall "
        f"{at.get('recall50', float('nan')):.3f}, F1 {at.get('f1_50', float('nan')):.3f} (IoU 0.5).",
        f"- torch vs onnxruntime: dense maps max abs error {parity['max_abs_error']:.3g}; box lists identical in count "
        f"and labels, corners within {parity['boxes']['max_box_corner_difference_px']:.3g} px "
        f"({parity['boxes']['boxes_found']} detections at sizes {parity['boxes']['shapes']}).",
        f"- batch independence (dense maps, torch): {independence['max_abs_difference']:.3g}.",
        f"- the test image holds {n_test_boxes} detections; test tensors are reproduced within abs "
        f"{tolerance['absolute_tolerance']:g} / rel {tolerance['relative_tolerance']:g}.", "",
        "## Limitations", "",
        "- Trained on the data named above; other pixel sizes or intensity distributions may give wrong boxes: "
        "`biozoo predict` checks them against `config.biozoo`.",
        "- One image per call (batch 1); tiling is not used (box lists cannot be stitched), so very large images "
        "need the memory of one whole-image pass.", "",
    ]
    return "\n".join(lines)


PLUGINS = (DetectionExport(),)  # what biozoo.exporters.tasks registers from this module
