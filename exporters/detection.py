"""Export of a detection run: NMS inside the ONNX graph, box-list outputs with index axes, test tensors, checks.

A detection package differs from the dense ones in everything after the network, so it has its own path here
(``export_run`` hands detection runs over): the graph is ``DetectorWithNMS`` (decode + ONNX NonMaxSuppression,
thresholds from the run's test_metrics.json ``postprocessing``), the outputs are ``boxes [K, 4]``, ``scores [K]``
and ``labels [K]`` (int64, 1 = first class) with an index axis of the fixed size K = ``max_detections``: the
detections, then padding rows (score 0, label 0, box 0), recorded as ``config.biozoo.detection.padding`` so the
runtime drops them without guessing. A fixed K, because an image without objects must still give valid outputs
(the spec forbids a data-dependent axis of length 0). The input takes one image at a time (``batch: 1``: box lists
of several images cannot share a tensor). Parity is checked twice: the dense head maps at random valid sizes (as
for every zoo model), and the final box lists (their real rows) on the real test image and on the centre crops
bioimageio.core's test_model will feed it. Image padding is ``constant`` (zeros after normalization: background),
so padding never invents mirrored nuclei.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from biozoo.runtime.errors import ExportError

OUTPUTS = ("boxes", "scores", "labels")
CORNERS = ("x_min", "y_min", "x_max", "y_max")
DETECTION_CITE = ("Zhou, Wang, Kraehenbuehl: Objects as Points. arXiv 2019 (CenterNet)", "10.48550/arXiv.1904.07850")
TAGS = ("object-detection", "bounding-boxes", "nuclei", "fluorescence-light-microscopy", "2d", "biozoo")


def export_detection(run: Any, out: Path, *, authors: Sequence[str], license: str, opset: int,
                     name: Optional[str]) -> Any:
    from biozoo.zoo.detector import PADDING, DetectorWithNMS, export_detector_onnx

    from . import export_steps as E
    from .onnx_export import export_onnx
    from .parity import check_batch_independence, check_parity, onnx_forward, torch_forward
    from .zipper import write_deterministic_zip

    recipe, metrics = run.recipe, run.test_metrics
    post = E.postprocessing(run, "detection")
    net = run.trained_model()
    contract = run.contract(net)
    module = DetectorWithNMS(net, post["score_threshold"], post["iou_threshold"], post["max_detections"]).eval()
    raw, x = E.model_input(run, contract)
    percentiles = tuple(recipe.data.percentiles)
    with tempfile.TemporaryDirectory(prefix="biozoo-export-") as tmp:
        folder = Path(tmp)
        dense = export_onnx(net, torch.from_numpy(x), folder / "dense.onnx", input_name=E.INPUT_ID, opset=opset)
        parity = check_parity(torch_forward(net), onnx_forward(dense.path),
                              [x, *E.valid_random_inputs(contract, x.shape[1])]).as_dict()
        independence = {"max_abs_difference": check_batch_independence(torch_forward(net), x[0], "torch model"),
                        "passed": True, "note": "dense head maps in torch; the package takes one image at a time"}
        (folder / "dense.onnx").unlink()
        weights = export_detector_onnx(module, torch.from_numpy(x), folder / "weights.onnx", input_name=E.INPUT_ID,
                                       output_names=OUTPUTS, opset=opset)
        expected = _forward(module, x)
        found = _real_count(expected)
        if found == 0:
            raise ExportError(
                "the model detects nothing on the first held-out test image, so every test output tensor would be "
                "all padding (zeros), which bioimageio.spec refuses as a test tensor. Is the model trained (see mAP50 "
                f"in test_metrics.json)? Otherwise lower score_threshold in the recipe (now {post['score_threshold']})")
        parity["boxes"] = _box_parity(module, weights, x, contract)
        np.save(folder / "test_input.npy", raw[None, None].astype(np.float32))
        for tid, value in zip(OUTPUTS, expected):
            np.save(folder / f"test_{tid}.npy", value)
        import tifffile

        tifffile.imwrite(folder / "sample_input.tif", raw[None, None].astype(np.float32), metadata=None,
                         datetime=False, software=False)
        from .documents import write_cover

        write_cover(folder / "cover.png", raw, _draw_boxes(x[0, 0], expected[0][:found]), (0.0, 1.0))
        attachments = E.attach_curves(run, folder)
        config = E.biozoo_config(run, contract, parity, independence)
        config["pad_mode"] = "constant"
        config["detection"] = {"classes": list(recipe.classes), "label_offset": 1, "box_format": list(CORNERS),
                               "coordinates": "input pixels, pixel edges", **post,
                               # max_detections (in post) is K, the rows of every output; the runtime reads both
                               "padding": PADDING}
        title = name or recipe.name
        _readme(folder / "README.md", title, recipe, metrics, E.training_rows(run, contract), parity, independence,
                E.TOLERANCE, found, bool(attachments))
        descr = _model_descr(folder, title, recipe, authors, license, contract, percentiles, opset, attachments,
                             config, E.TOLERANCE, E.package_timestamp(run), E.file_sha256(weights))
        from .rdf import write_rdf

        write_rdf(descr, folder / "rdf.yaml")
        test = E.self_test(folder)
        write_deterministic_zip(folder, out)
    return E.ExportReport(out, E.file_sha256(out), parity, independence, test)


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


def _model_descr(root: Path, title: str, recipe, authors, license: str, contract, percentiles, opset: int,
                 attachments: list[str], config: dict, tolerance: dict, timestamp: str, sha256: str) -> Any:
    from bioimageio.spec import ValidationContext
    from bioimageio.spec.model import v0_5 as m
    from pydantic import ValidationError

    pixel = recipe.data.pixel_size

    def space(i: int, a: str) -> Any:
        unit = {"scale": float(pixel[i]), "unit": "micrometer"} if pixel else {}
        return m.SpaceInputAxis(id=m.AxisId(a), size=m.ParameterizedSize(min=contract.min_tile,
                                                                           step=contract.size_step), **unit)

    def listed(tid: str, description: str, dtype: str, channels: Sequence[str] = ()) -> Any:
        axes: list[Any] = [m.IndexOutputAxis(id=m.AxisId("detection"), size=int(config["detection"]["max_detections"]))]
        if channels:
            axes.append(m.ChannelAxis(channel_names=[m.Identifier(c) for c in channels]))
        return m.OutputTensorDescr(id=m.TensorId(tid), description=description, axes=axes,
                                   test_tensor=m.FileDescr(source=Path(f"test_{tid}.npy")),
                                   data=m.IntervalOrRatioDataDescr(type=dtype))

    lo, hi = percentiles
    padding = f"{config['detection']['max_detections']} rows: detections, then padding (all 0)"  # <= 128 chars
    classes = ", ".join(f"{i + 1} = {c}" for i, c in enumerate(recipe.classes))
    try:
        with ValidationContext(root=root, perform_io_checks=True):
            return m.ModelDescr(
                name=title, description=recipe.description or "object detector (boxes, scores, labels)",
                version="0.1.0", authors=[m.Author(name=a) for a in authors],
                cite=[m.CiteEntry(text=t, doi=m.Doi(d)) for t, d in (DETECTION_CITE,)],
                license=m.LicenseId(license), tags=list(TAGS), documentation=m.FileDescr(source=Path("README.md")),
                covers=[m.FileDescr(source=Path("cover.png"))],
                attachments=[m.FileDescr(source=Path(a)) for a in attachments],
                timestamp=m.Datetime.model_validate(timestamp),
                inputs=[m.InputTensorDescr(
                    id=m.TensorId("raw"), description="raw image, one at a time; normalized inside (scale_range)",
                    axes=[m.BatchAxis(size=1), m.ChannelAxis(channel_names=[m.Identifier("channel0")]),
                          *(space(i, a) for i, a in enumerate(contract.space_axes))],
                    test_tensor=m.FileDescr(source=Path("test_input.npy")),
                    sample_tensor=m.FileDescr(source=Path("sample_input.tif")),
                    data=m.IntervalOrRatioDataDescr(type="float32"),
                    preprocessing=[m.ScaleRangeDescr(kwargs=m.ScaleRangeKwargs(
                        axes=[m.AxisId("channel"), *(m.AxisId(a) for a in contract.space_axes)],
                        min_percentile=lo, max_percentile=hi))],
                )],
                outputs=[listed("boxes", f"x_min, y_min, x_max, y_max in input pixels (pixel edges), by decreasing "
                                         f"score; {padding}", "float32", CORNERS),
                         listed("scores", f"detection confidence (0..1), decreasing; {padding}", "float32"),
                         listed("labels", f"class label ({classes}); {padding}", "int64")],
                weights=m.WeightsDescr(onnx=m.OnnxWeightsDescr(source=Path("weights.onnx"), sha256=m.Sha256(sha256),
                                                               opset_version=opset)),
                config=m.Config(bioimageio=m.BioimageioConfig(reproducibility_tolerance=[
                    m.ReproducibilityTolerance(**tolerance)]), biozoo=config),
            )
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()[:10])
        raise ExportError(f"bioimageio.spec refused the detection description biozoo built: {problems}") from None


def _readme(path: Path, title: str, recipe, metrics: dict, training_rows, parity: dict, independence: dict,
            tolerance: dict, n_test_boxes: int, has_curves: bool) -> None:
    post, base, at = metrics["postprocessing"], metrics.get("baseline", {}), metrics.get("at_score_threshold", {})
    rows = [(k, f"{v.split(' (')[0]} (whole-image prediction: box lists are never tiled)" if k == "receptive field"
             else v) for k, v in training_rows]
    table = ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
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
    path.write_text("\n".join(lines), encoding="utf-8")
