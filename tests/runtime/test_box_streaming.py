"""Box-list (detector) packages block by block: above the memory budget in one process and on Dask.

The detector is test_detections' package: an in-graph-NMS graph whose 'objects' are a steep function of local
brightness (a box per bright square), so the boxes are a deterministic function of the image, never of training.
The in-memory prediction (one run on the whole image) is the reference: one block gives it box for box; several
blocks, overlapping by the margin, give the same boxes (corners within float32 rounding of the shift into image
coordinates), none lost and none twice, also for squares on the block borders.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from biozoo.runtime.checks.report import CheckReport
from biozoo.runtime.commands.predict_files import predict_files
from biozoo.runtime.commands.predict_streamed import predict_sample_streamed
from biozoo.runtime.engine.box_blocks import DEFAULT_IOU, DEFAULT_MARGIN, Boxes, box_plan, box_settings, merge_boxes
from biozoo.runtime.errors import InputError

from .test_detections import _image, build_detection_package

KINDS = (("yolo", "txt"), ("csv", "csv"), ("json", "json"))
# halo 16 + 2 x 12 (p95 object diameter): a margin of 40 px, so that blocks of 160 px have cores of 64 px
TRAINING = {"halo": 16, "object_size": {"median_diameter_px": 10.0, "p95_diameter_px": 12.0, "count": 9}}


def _patched(rdf: Path, training: dict | None = None, sizes: int | None = None, detection: dict | None = None) -> Path:
    desc = yaml.safe_load(rdf.read_text())
    desc["config"]["biozoo"]["training"].update(training or {})
    desc["config"]["biozoo"]["detection"].update(detection or {})
    if sizes:
        for axis in desc["inputs"][0]["axes"]:
            if axis.get("type") == "space":
                axis["size"] = sizes
    rdf.write_text(yaml.safe_dump(desc, sort_keys=False))
    return rdf


@pytest.fixture(scope="module", params=["fixed-capacity", "data-dependent"])
def any_detector(request, tmp_path_factory) -> Path:
    return build_detection_package(tmp_path_factory.mktemp("boxpkg"), request.param == "fixed-capacity")


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Path:
    return _patched(build_detection_package(tmp_path_factory.mktemp("boxpkg40"), True), TRAINING)


def _targets(folder: Path, stem: str = "in") -> dict[str, Path]:
    return {kind: folder / f"{stem}.{ext}" for kind, ext in KINDS}


def _texts(folder: Path, stem: str = "in") -> dict[str, str]:
    return {ext: (folder / f"{stem}.{ext}").read_text() for _, ext in KINDS}


def _streamed(package: Path, image: Path, folder: Path, tile=None) -> dict:
    from biozoo.runtime import load

    return predict_sample_streamed(load(package, device="cpu"), {"raw": image}, None, _targets(folder), tile=tile,
                                   tile_budget=1 << 22, report=CheckReport(()))


def _detections(folder: Path, stem: str = "in") -> tuple[np.ndarray, np.ndarray]:
    found = json.loads((folder / f"{stem}.json").read_text())["detections"]
    return (np.array([d["box"] for d in found], np.float64).reshape(-1, 4),
            np.array([d["score"] for d in found], np.float64))


def _grid_image(shape, spacing: int = 36, first: int = 20) -> tuple[np.ndarray, int]:
    centres = [(y, x) for y in range(first, shape[0] - 10, spacing) for x in range(first, shape[1] - 10, spacing)]
    return _image(shape, centres), len(centres)


def test_one_block_gives_the_in_memory_box_files_exactly(any_detector, tmp_path):
    x = _image((200, 232), [(20, 24), (100, 120), (150, 200), (190, 226)])  # not a multiple of 16: padded
    np.save(tmp_path / "in.npy", x)
    predict_files(str(any_detector), [str(tmp_path / "in.npy")], tmp_path / "memory", device="cpu", quiet=True)
    done = _streamed(any_detector, tmp_path / "in.npy", tmp_path / "blocks")
    assert done["boxes"]["blocks"] == 1 and done["detections"]["count"] == 4
    assert _texts(tmp_path / "blocks") == _texts(tmp_path / "memory")


def test_several_blocks_find_every_object_once_in_image_coordinates(detector, tmp_path):
    from biozoo.runtime import load

    x, count = _grid_image((360, 330))
    np.save(tmp_path / "in.npy", x)
    predict_files(str(detector), [str(tmp_path / "in.npy")], tmp_path / "memory", device="cpu", quiet=True)
    want_boxes, want_scores = _detections(tmp_path / "memory")
    assert len(want_scores) == count, "the reference finds one box per square"
    done = _streamed(detector, tmp_path / "in.npy", tmp_path / "blocks", tile={"y": 160, "x": 160})
    info = done["boxes"]
    assert info["blocks"] >= 25 and info["margin_px"] == 40 and "halo" in info["margin_source"]
    boxes, scores = _detections(tmp_path / "blocks")
    order, ref = np.lexsort(boxes.T[::-1]), np.lexsort(want_boxes.T[::-1])
    np.testing.assert_allclose(boxes[order], want_boxes[ref], atol=2e-3)  # none lost, none twice, same places
    np.testing.assert_allclose(scores[order], want_scores[ref], atol=2e-6)
    assert np.all(np.diff(scores) <= 0), "sorted by decreasing score, as in memory"
    plan = box_plan(load(detector, device="cpu").engine, {"raw": (1, 1, *x.shape)}, {"y": 160, "x": 160}, 1 << 22,
                    box_settings(load(detector, device="cpu").description))
    cuts = {p.axis_id: np.array(p.cuts[1:-1]) for p in plan.tiled}
    centre_y, centre_x = (boxes[:, 1] + boxes[:, 3]) / 2, (boxes[:, 0] + boxes[:, 2]) / 2
    straddle = [np.abs(c[:, None] - cuts[a][None]).min(1) < 8 for c, a in ((centre_y, "y"), (centre_x, "x"))]
    assert np.count_nonzero(straddle[0] | straddle[1]) >= 10, "squares on block borders are part of the test"


def test_above_the_memory_budget_a_detector_streams_block_by_block(detector, tmp_path, monkeypatch):
    from biozoo.runtime import load
    from biozoo.runtime.commands.memory_plan import streamed_held
    from biozoo.runtime.engine import memory

    monkeypatch.setattr(memory, "resident_bytes", lambda: 0)  # the budget counts tiles and held arrays only
    x, count = _grid_image((400, 420))
    np.save(tmp_path / "in.npy", x)
    engine = load(detector, device="cpu").engine
    per_pixel = memory.tile_bytes_per_pixel(engine, memory.activation_profile(engine))
    budget = 220 * 220 * per_pixel + streamed_held(x.size)
    summary = predict_files(str(detector), [str(tmp_path / "in.npy")], tmp_path / "blocks", device="cpu",
                            memory=f"{budget}B", quiet=True)
    item = summary["items"][0]
    assert item.get("streamed") and item["boxes"]["blocks"] > 1 and item["detections"]["count"] == count
    assert sorted(Path(p).name for p in item["written"].values()) == ["in.csv", "in.json", "in.txt"]
    predict_files(str(detector), [str(tmp_path / "in.npy")], tmp_path / "memory", device="cpu", quiet=True)
    got, want = _detections(tmp_path / "blocks")[0], _detections(tmp_path / "memory")[0]
    np.testing.assert_allclose(got[np.lexsort(got.T[::-1])], want[np.lexsort(want.T[::-1])], atol=2e-3)


def test_the_merge_drops_duplicates_across_block_borders_only():
    """Blocks whose margin was too small can each keep a box of one object; the merge keeps the higher-scored
    one. Overlapping boxes of one block (the network's NMS kept both) and of other classes stay."""
    cores = np.array([[-np.inf, -np.inf, 100, np.inf], [100, -np.inf, np.inf, np.inf]])
    left = Boxes(np.array([[90, 10, 108, 28], [20, 20, 40, 40], [24, 20, 44, 40]], np.float32),
                 np.array([0.9, 0.8, 0.7], np.float32), np.array([0, 0, 0]))
    right = Boxes(np.array([[92, 10, 110, 28], [91, 10, 109, 28], [150, 5, 170, 25]], np.float32),
                  np.array([0.95, 0.6, 0.5], np.float32), np.array([0, 1, 0]))
    merged, info = merge_boxes([left, right], cores, 0.5, height=60, width=160)
    assert merged.scores.tolist() == pytest.approx([0.95, 0.8, 0.7, 0.6, 0.5])  # left's 0.9 dropped
    assert merged.classes.tolist() == [0, 0, 0, 1, 0] and info["suppressed_across_blocks"] == 1
    assert merged.xyxy[-1].tolist() == [150, 5, 160, 25], "clipped to the image"
    alone, _ = merge_boxes([left], cores[:1], 0.5, 60, 160)
    assert len(alone.scores) == 3, "one block: the network's own NMS stands"
    empty, info = merge_boxes([Boxes.empty(), Boxes.empty()], cores, 0.5, 60, 160)
    assert empty.xyxy.shape == (0, 4) and info["blocks"] == 2


def test_the_margin_and_iou_come_from_the_package_or_documented_defaults(detector):
    from biozoo.runtime.format.description import parse_description

    desc = yaml.safe_load(detector.read_text())
    recorded = box_settings(parse_description(desc))
    assert (recorded.margin, recorded.iou) == (40, DEFAULT_IOU)
    desc["config"]["biozoo"]["training"] = {"pixel_size": {"y": 1.0, "x": 1.0}}  # third-party-like: nothing
    bare = box_settings(parse_description(desc))
    assert bare.margin == DEFAULT_MARGIN and "default" in bare.margin_source
    desc["config"]["biozoo"]["training"] = {"receptive_field": 60}
    desc["config"]["biozoo"]["detection"]["iou_threshold"] = 0.3
    settings = box_settings(parse_description(desc))
    assert (settings.margin, settings.iou, settings.iou_source) == (90, 0.3, "config.biozoo.detection.iou_threshold")


def test_a_detector_whose_fixed_input_is_smaller_than_its_margins_is_refused(tmp_path):
    (tmp_path / "fixed").mkdir()
    package = _patched(build_detection_package(tmp_path / "fixed", True), sizes=64)
    np.save(tmp_path / "in.npy", _image((200, 200), [(40, 40)]))
    with pytest.raises(InputError, match=r"blocks of 64 px along 'y' \(the model's fixed input size\) leave no core "
                                         r"between the margins of 128 px.*at most 64 px along 'y'"):
        _streamed(package, tmp_path / "in.npy", tmp_path / "out")
    assert not (tmp_path / "out").exists(), "nothing written"


# ------------------------------------------------------------------------------------------------ Dask
def test_on_dask_the_boxes_equal_the_streamed_ones_and_resume_skips_finished_blocks(detector, tmp_path):
    distributed = pytest.importorskip("distributed")
    x, _ = _grid_image((360, 330))
    np.save(tmp_path / "in.npy", x)
    _streamed(detector, tmp_path / "in.npy", tmp_path / "streamed", tile={"y": 160, "x": 160})
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  memory_limit=0) as cluster:
        run = dict(device="cpu", tile="160,160", scheduler=cluster.scheduler_address, quiet=True)
        summary = predict_files(str(detector), [str(tmp_path / "in.npy")], tmp_path / "dask", **run)
        item = summary["items"][0]
        assert item["distributed"]["blocks"] == item["boxes"]["blocks"] >= 25 and item["distributed"]["skipped"] == 0
        assert _texts(tmp_path / "dask") == _texts(tmp_path / "streamed")

        def stop(done: int, total: int) -> None:
            if done >= 4:
                raise KeyboardInterrupt  # as a user's Ctrl-C: the finished blocks stay in the journal

        with pytest.raises(KeyboardInterrupt):
            predict_files(str(detector), [str(tmp_path / "in.npy")], tmp_path / "resumed", progress=stop, **run)
        assert not (tmp_path / "resumed" / "in.json").exists()
        summary = predict_files(str(detector), [str(tmp_path / "in.npy")], tmp_path / "resumed", resume=True, **run)
        item = summary["items"][0]["distributed"]
        assert item["skipped"] >= 4 and item["run"] == item["blocks"] - item["skipped"]
        assert _texts(tmp_path / "resumed") == _texts(tmp_path / "streamed")


def test_tile_cuts_a_detectors_image_into_blocks(detector, tmp_path):
    """--tile on a box-list package (which cannot be stitched from tiles) chooses the blocks' size: the same box
    files as the block path with that tile, where in memory it was refused."""
    x, count = _grid_image((360, 330))
    np.save(tmp_path / "in.npy", x)
    summary = predict_files(str(detector), [str(tmp_path / "in.npy")], tmp_path / "tiled", device="cpu", quiet=True,
                            tile="160,160")
    assert summary["items"][0].get("streamed") is True
    _streamed(detector, tmp_path / "in.npy", tmp_path / "blocks", tile={"y": 160, "x": 160})
    assert _texts(tmp_path / "tiled") == _texts(tmp_path / "blocks")
    assert len(_detections(tmp_path / "tiled")[1]) == count
