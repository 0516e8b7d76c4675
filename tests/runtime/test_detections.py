"""Box-list outputs in the runtime: recognising them, mapping them to the image, YOLO txt / CSV / JSON, predict CLI."""
from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from biozoo.runtime.format.description import DataDependentSize, parse_description
from biozoo.runtime.commands.box_files import (Detections, csv_text, json_record, to_detections, write_prediction,
                                               yolo_text)
from biozoo.runtime.engine.outputs import detection_outputs, drop_padding, unpadded_tensor
from biozoo.runtime.errors import InputError, PackageError

INDEX = {"id": "detection", "type": "index", "size": {}}
PADDED = {"padding": "rows with score 0"}  # what biozoo's exporter records for fixed-capacity lists


def _rdf(outputs: list[dict], config: dict | None = None) -> dict:
    return {"type": "model", "format_version": "0.5.4", "name": "det", "weights": {"onnx": {"source": "w.onnx"}},
            "inputs": [{"id": "raw", "axes": [{"type": "batch", "size": 1}, {"type": "channel", "channel_names": ["c"]},
                                              {"id": "y", "type": "space", "size": {"min": 32, "step": 16}},
                                              {"id": "x", "type": "space", "size": {"min": 32, "step": 16}}]}],
            "outputs": outputs, "config": config or {}}


def _out(tid: str, dtype: str = "float32", channels: tuple[str, ...] = (), size=None) -> dict:
    index = INDEX if size is None else {**INDEX, "size": size}
    axes = [index] + ([{"type": "channel", "channel_names": list(channels)}] if channels else [])
    return {"id": tid, "axes": axes, "data": {"type": dtype}}


CORNERS = ("x_min", "y_min", "x_max", "y_max")


def test_detection_outputs_by_id_by_shape_and_none_for_dense_models():
    desc = parse_description(_rdf([_out("boxes", channels=CORNERS), _out("scores"), _out("labels", "int64")],
                                  {"biozoo": {"detection": {"classes": ["nucleus", "mitosis"]}}}))
    found = detection_outputs(desc)
    assert (found.boxes, found.scores, found.classes, found.label_offset) == ("boxes", "scores", "labels", 1)
    assert found.class_names == ("nucleus", "mitosis")
    # third-party names: the 4-channel tensor holds boxes, the integer one 0-based classes, the float one scores
    other = detection_outputs(parse_description(_rdf([_out("det", channels=("a", "b", "c", "d")), _out("conf"),
                                                      _out("cls", "int32")])))
    assert (other.boxes, other.scores, other.classes, other.label_offset) == ("det", "conf", "cls", 0)
    dense = _rdf([{"id": "out", "axes": [{"type": "batch"}, {"type": "channel", "channel_names": ["p"]},
                                         {"id": "y", "type": "space", "size": {"tensor_id": "raw", "axis_id": "y"}},
                                         {"id": "x", "type": "space", "size": {"tensor_id": "raw", "axis_id": "x"}}]}])
    assert detection_outputs(parse_description(dense)) is None
    with pytest.raises(PackageError, match="none is a boxes tensor"):
        detection_outputs(parse_description(_rdf([_out("a"), _out("b")])))
    with pytest.raises(PackageError, match="which holds the scores"):
        detection_outputs(parse_description(_rdf([_out("boxes", channels=CORNERS), _out("a"), _out("b")])))


def test_to_detections_maps_labels_reorders_corners_drops_padding_and_sorts():
    desc = parse_description(_rdf([_out("boxes", channels=("y_min", "x_min", "y_max", "x_max")), _out("scores"),
                                   _out("labels", "int64")], {"biozoo": {"detection": {"classes": ["cell"]}}}))
    which = detection_outputs(desc)
    boxes = np.array([[10, 20, 30, 40],    # y0 x0 y1 x1: centre x 30, y 20: inside
                      [50, 90, 70, 110],   # centre x 100: in the padding of an 80-wide image: dropped
                      [0, 70, 12, 95],     # centre x 82.5: dropped too
                      [2, 60, 20, 90],     # centre x 75: kept, clipped to x 80
                      [5, 5, 15, 15]], np.float32)
    scores = np.array([0.5, 0.9, 0.8, 0.7, 0.6], np.float32)
    labels = np.array([1, 1, 1, 1, 0])  # 0 = background: not an object
    det = to_detections({"boxes": (boxes, "ic"), "scores": scores, "labels": labels}, which, height=60, width=80)
    assert det.scores.tolist() == pytest.approx([0.7, 0.5])
    assert det.xyxy.tolist() == [[60, 2, 80, 20], [20, 10, 40, 30]]
    assert det.classes.tolist() == [0, 0] and det.name(0) == "cell" and det.name(3) == "3"
    # --rescale: the model saw a grid 2x smaller along x: corners come back doubled along x
    scaled = to_detections({"boxes": boxes[:1], "scores": scores[:1], "labels": labels[:1]}, which, 60, 80,
                           scale=(1.0, 2.0))
    assert scaled.xyxy.tolist() == [[40, 10, 80, 30]]
    # a squeezed single box (K = 1 dropped by axis handling) still reads as one box
    one = to_detections({"boxes": boxes[0], "scores": scores[0], "labels": labels[0]}, which, 60, 80)
    assert len(one) == 1
    with pytest.raises(PackageError, match="disagree in length"):
        to_detections({"boxes": boxes, "scores": scores[:2], "labels": labels}, which, 60, 80)


def _fixed(k: int, detection: dict | None = None):
    return parse_description(_rdf([_out("boxes", channels=CORNERS, size=k), _out("scores", size=k),
                                   _out("labels", "int64", size=k)],
                                  {"biozoo": {"detection": {"classes": ["cell"], "max_detections": k, **PADDED,
                                                            **(detection or {})}}}))


def test_fixed_capacity_lists_are_recognised_by_their_padding_marker_only():
    which = detection_outputs(_fixed(6))
    assert (which.boxes, which.scores, which.classes, which.padding, which.capacity) == (
        "boxes", "scores", "labels", "rows with score 0", 6)
    assert which.lists == ("boxes", "scores", "labels")
    # the same fixed-size index axes without the marker: not taken for box lists (the runtime does not guess)
    bare = _rdf([_out("boxes", channels=CORNERS, size=6), _out("scores", size=6)])
    assert detection_outputs(parse_description(bare)) is None
    # older biozoo packages record max_detections (then per class) but no padding: still data-dependent lists
    old = parse_description(_rdf([_out("boxes", channels=CORNERS), _out("scores")],
                                 {"biozoo": {"detection": {"max_detections": 1000}}}))
    assert detection_outputs(old).padding is None
    with pytest.raises(PackageError, match="padding is 'rows with label 0'; this biozoo knows"):
        detection_outputs(_fixed(6, {"padding": "rows with label 0"}))
    with pytest.raises(PackageError, match="max_detections is 5 but the box-list outputs have 6 rows"):
        detection_outputs(_fixed(6, {"max_detections": 5}))
    mixed = _rdf([_out("boxes", channels=CORNERS, size=6), _out("scores", size=7)],
                 {"biozoo": {"detection": PADDED}})
    with pytest.raises(PackageError, match="needs one fixed size K"):
        detection_outputs(parse_description(mixed))


def test_padding_rows_are_dropped_before_anything_else_sees_them():
    desc = _fixed(5)
    which = detection_outputs(desc)
    boxes = np.zeros((5, 4), np.float32)
    boxes[:2] = [[10, 20, 30, 40], [1, 2, 3, 4]]
    raw = {"boxes": boxes, "scores": np.array([0.9, 0.4, 0, 0, 0], np.float32), "labels": np.array([1, 1, 0, 0, 0])}
    kept = drop_padding(desc, raw)
    assert [v.shape for v in kept.values()] == [(2, 4), (2,), (2,)]
    np.testing.assert_array_equal(kept["boxes"], boxes[:2])
    assert drop_padding(desc, kept)["scores"].tolist() == kept["scores"].tolist()  # idempotent
    empty = drop_padding(desc, {k: np.zeros_like(v) for k, v in raw.items()})  # a blank image: all padding
    assert [v.shape for v in empty.values()] == [(0, 4), (0,), (0,)]
    # to_detections on raw session outputs drops the padding itself: a padding row has a centre (0, 0) inside
    # the image and would otherwise become a box
    assert len(to_detections(raw, which, 60, 80)) == 2
    assert len(to_detections({k: np.zeros_like(v) for k, v in raw.items()}, which, 60, 80)) == 0
    # data-dependent lists are never cut, even where a score is 0
    dd = parse_description(_rdf([_out("boxes", channels=CORNERS), _out("scores"), _out("labels", "int64")]))
    assert drop_padding(dd, raw)["scores"].shape == (5,)
    with pytest.raises(PackageError, match="disagree in length"):
        drop_padding(desc, {**raw, "labels": raw["labels"][:4]})
    # after dropping, the index axis reads as data dependent (a list of one box must stay a list)
    assert unpadded_tensor(desc, "boxes").axes[0].size == DataDependentSize(0, 5)
    assert unpadded_tensor(dd, "boxes") is dd.output("boxes")


def _dets() -> Detections:
    return Detections(np.array([[10.0, 20.0, 30.0, 50.0], [0.0, 0.0, 4.5, 3.0]], np.float32),
                      np.array([0.9, 0.4], np.float32), np.array([1, 0]), ("nucleus", "mitosis"))


def test_yolo_text_is_what_the_zoo_reads_back():
    from biozoo.zoo.boxes import parse_yolo

    det = _dets()
    text = yolo_text(det, height=100, width=200)
    assert text.splitlines()[0] == "1 0.100000 0.350000 0.100000 0.300000"
    back = parse_yolo(text, 100, 200)
    np.testing.assert_allclose(back.xyxy, det.xyxy, atol=1e-3)
    assert back.classes.tolist() == [1, 0]
    assert yolo_text(Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int)), 10, 10) == ""


def test_csv_and_json_hold_scores_names_and_pixel_boxes():
    det = _dets()
    rows = list(csv.DictReader(io.StringIO(csv_text(det))))
    assert rows[0]["class_name"] == "mitosis" and float(rows[0]["score"]) == pytest.approx(0.9)
    assert [float(rows[0][k]) for k in ("x_min", "y_min", "x_max", "y_max", "width", "height")] == [10, 20, 30, 50, 20,
                                                                                                    30]
    record = json_record(det, 100, 200, "a.tif")
    assert record["count"] == 2 and record["detections"][1] == {"class_id": 0, "class": "nucleus", "score": 0.4,
                                                                "box": [0.0, 0.0, 4.5, 3.0]}
    json.dumps(record)  # plain JSON types only


def test_write_prediction_needs_a_folder(tmp_path):
    which = detection_outputs(parse_description(_rdf([_out("boxes", channels=CORNERS), _out("scores")])))
    outputs = {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32)}
    with pytest.raises(InputError, match="give -o a folder"):
        write_prediction(tmp_path / "out.tif", "a", outputs, which, 10, 10)
    written, summary = write_prediction(tmp_path / "out", "a", outputs, which, 10, 10)
    assert summary == {"count": 0, "per_class": {}} and Path(written["yolo"]).read_text() == ""


# ------------------------------------------------------------------------------------ a real detection package
def _as_data_dependent(path: Path) -> None:
    """Rewrite a fixed-capacity detector graph into the older form (data-dependent length: only rows with score
    > 0), as biozoo exported before the capacity and other tools still do."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    graph = model.graph
    names = [o.name for o in graph.output]
    for node in graph.node:
        node.output[:] = [f"{n}_padded" if n in names else n for n in node.output]
        node.input[:] = [f"{n}_padded" if n in names else n for n in node.input]
    graph.initializer.extend([helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
                              helper.make_tensor("flat", TensorProto.INT64, [1], [-1])])
    graph.node.extend([helper.make_node("Greater", ["scores_padded", "zero"], ["real"]),
                       helper.make_node("NonZero", ["real"], ["rows2d"]),
                       helper.make_node("Reshape", ["rows2d", "flat"], ["rows"]),
                       *(helper.make_node("Gather", [f"{n}_padded", "rows"], [n], axis=0) for n in names)])
    for output in graph.output:
        output.type.tensor_type.shape.dim[0].dim_param = "detections"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture(scope="module", params=["fixed-capacity", "data-dependent"])
def package(request, tmp_path_factory) -> Path:
    """A detection package in both box-list forms: K = 1000 rows with padding (what biozoo exports) and the older
    data-dependent length."""
    return build_detection_package(tmp_path_factory.mktemp("detpkg"), request.param == "fixed-capacity")


def build_detection_package(root: Path, fixed: bool) -> Path:
    """A detection package around an in-graph-NMS graph whose 'detector' is a steep function of local brightness
    (one 'blob' per bright square of _image); returns its rdf.yaml."""
    torch = pytest.importorskip("torch")
    from biozoo.zoo.detector import DetectorConfig, DetectorWithNMS, export_detector_onnx

    class Pooled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = DetectorConfig(depth=2, stride=4)

        def forward(self, x):
            p = torch.nn.functional.avg_pool2d(x, 20, stride=4, padding=8)  # one smooth bump per blob
            return torch.cat([12 * p - 4, *(torch.log(torch.full_like(p, 2.0 + k / 20)) for k in range(4))], 1)

    export_detector_onnx(DetectorWithNMS(Pooled(), 0.5, 0.5), torch.zeros(1, 1, 32, 32), root / "weights.onnx")
    if not fixed:
        _as_data_dependent(root / "weights.onnx")
    x = _image((64, 96), [(20, 24), (44, 72)])
    np.save(root / "test_input.npy", x[None, None])
    import onnxruntime as ort

    lo, hi = np.percentile(x, [1, 99.8])
    outs = ort.InferenceSession(str(root / "weights.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"raw": ((x - lo) / (hi - lo + 1e-6)).astype(np.float32)[None, None]})
    for tid, value in zip(("boxes", "scores", "labels"), outs):
        np.save(root / f"test_{tid}.npy", value)
    k = 1000 if fixed else None
    assert [len(v) for v in outs] == [1000 if fixed else 2] * 3  # the graph's rows: capacity, or the detections
    detection = {"classes": ["blob"], **({"max_detections": k, **PADDED} if fixed else {})}
    rdf = _rdf([_out("boxes", channels=CORNERS, size=k), _out("scores", size=k), _out("labels", "int64", size=k)],
               {"biozoo": {"pad_mode": "constant", "detection": detection,
                           "training": {"pixel_size": {"y": 1.0, "x": 1.0}, "pixel_size_unit": "micrometer"}}})
    rdf["format_version"] = "0.5.4"
    rdf["weights"] = {"onnx": {"source": "weights.onnx", "sha256": _sha(root / "weights.onnx"), "opset_version": 17}}
    rdf["inputs"][0]["test_tensor"] = {"source": "test_input.npy", "sha256": _sha(root / "test_input.npy")}
    rdf["inputs"][0]["preprocessing"] = [{"id": "scale_range", "kwargs": {
        "axes": ["channel", "y", "x"], "min_percentile": 1.0, "max_percentile": 99.8}}]
    for out in rdf["outputs"]:
        out["test_tensor"] = {"source": f"test_{out['id']}.npy", "sha256": _sha(root / f"test_{out['id']}.npy")}
    (root / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    return root / "rdf.yaml"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _image(shape, centres, half=8) -> np.ndarray:
    x = np.random.default_rng(0).normal(100, 2, shape).astype(np.float32)
    for cy, cx in centres:
        x[cy - half:cy + half, cx - half:cx + half] += 200
    return x


def test_a_detection_package_tests_and_predicts_box_lists(package):
    from biozoo.runtime import load

    model = load(package, device="cpu")
    assert model.test()["status"] == "passed"
    out = model.predict(_image((64, 96), [(20, 24), (44, 72)]), axes="yx", pixel_size=1.0)
    assert set(out) == {"boxes", "scores", "labels"} and out["labels"].tolist() == [1, 1]
    one = model.predict(_image((64, 96), [(30, 40)]), axes="yx", pixel_size=1.0)
    assert [v.shape for v in one.values()] == [(1, 4), (1,), (1,)]  # a list of one box is still a list
    # a blank frame (per-image normalization would blow noise up into objects): no row, and no padding row
    none = model.predict(np.full((64, 96), 100.0, np.float32), axes="yx", pixel_size=1.0,
                         skip_checks=["masked-normalization"])
    assert [v.shape for v in none.values()] == [(0, 4), (0,), (0,)]
    with pytest.raises(InputError, match="cannot be stitched from tiles"):
        model.predict(_image((64, 96), [(30, 40)]), axes="yx", pixel_size=1.0, tile={"y": 32, "x": 32})


def test_predict_cli_writes_yolo_csv_json_and_maps_rescaled_boxes_back(package, tmp_path, capsys):
    from biozoo.runtime.cli import main

    centres = [(24, 24), (56, 104)]
    image = _image((80, 136), centres)  # not a multiple of the step: padded (with zeros) and boxes kept inside
    tifffile.imwrite(tmp_path / "cells.tif", image)
    assert main(["predict", str(package), str(tmp_path / "cells.tif"), "-o", str(tmp_path / "out"), "--json"]) == 0
    item = json.loads(capsys.readouterr().out)["items"][0]
    assert item["detections"] == {"count": 2, "per_class": {"blob": 2}}
    assert sorted(Path(p).name for p in item["written"].values()) == ["cells.csv", "cells.json", "cells.txt"]
    found = json.loads((tmp_path / "out" / "cells.json").read_text())
    centre = sorted(((b[1] + b[3]) / 2, (b[0] + b[2]) / 2) for b in (d["box"] for d in found["detections"]))
    np.testing.assert_allclose(centre, centres, atol=4)
    lines = (tmp_path / "out" / "cells.txt").read_text().splitlines()
    assert len(lines) == 2 and all(line.startswith("0 ") for line in lines)
    # the input at 0.5 um/px, the model at 1 um/px: --rescale halves the image, the boxes come back doubled
    big = _image((160, 272), [(2 * cy, 2 * cx) for cy, cx in centres], half=16)
    tifffile.imwrite(tmp_path / "fine.tif", big)
    assert main(["predict", str(package), str(tmp_path / "fine.tif"), "-o", str(tmp_path / "out"),
                 "--pixel-size", "0.5,0.5", "--rescale", "--json"]) == 0
    capsys.readouterr()
    found = json.loads((tmp_path / "out" / "fine.json").read_text())
    centre = sorted(((b[1] + b[3]) / 2, (b[0] + b[2]) / 2) for b in (d["box"] for d in found["detections"]))
    np.testing.assert_allclose(centre, [(2 * cy, 2 * cx) for cy, cx in centres], atol=8)


def test_api_rescale_maps_boxes_back_onto_the_input_grid(package):
    """Model.predict(rescale=True) returns boxes in the caller's pixel coordinates, as `biozoo predict` writes them."""
    from biozoo.runtime import load

    model = load(package, device="cpu")
    centres = [(24, 24), (56, 104)]
    native = model.predict(_image((80, 136), centres), axes="yx", pixel_size=1.0)
    big = _image((160, 272), [(2 * cy, 2 * cx) for cy, cx in centres], half=16)
    rescaled = model.predict(big, axes="yx", pixel_size=0.5, rescale=True)
    assert len(rescaled["boxes"]) == len(native["boxes"]) == 2
    np.testing.assert_allclose(np.sort(rescaled["boxes"], 0), np.sort(native["boxes"] * 2, 0), atol=8)
