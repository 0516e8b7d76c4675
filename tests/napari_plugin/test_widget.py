"""The napari plugin as a person uses it: a real napari viewer (Qt on a virtual screen), the dock widget, layers in
and out, the input checks in the widget, notifications for bad packages. `make test-napari`."""
from __future__ import annotations

import shutil
import zipfile

import numpy as np
import pytest

pytestmark = pytest.mark.napari
napari = pytest.importorskip("napari")

from tests import packages  # noqa: E402


@pytest.fixture
def viewer_widget(make_napari_viewer, virtual_screen):
    from biozoo.napari_plugin.widget import ModelWidget

    viewer = make_napari_viewer()
    widget = ModelWidget(viewer)
    viewer.window.add_dock_widget(widget, name="biozoo")
    return viewer, widget


def _run(qtbot, widget, rescale=False, timeout=60_000):
    widget.run(rescale=rescale)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=timeout)


def _errors():
    from napari.utils.notifications import NotificationSeverity, notification_manager

    return [n.message for n in notification_manager.records if n.severity == NotificationSeverity.ERROR]


def test_unet_output_is_an_image_layer_that_overlays_the_input_and_equals_model_predict(viewer_widget, rdf, models,
                                                                                       qtbot):
    viewer, widget = viewer_widget
    x = np.random.default_rng(0).random((72, 96)).astype(np.float32)
    viewer.add_image(x, name="cells", scale=(0.5, 0.25), translate=(10.0, -4.0))
    assert widget.load_package(str(rdf("unet2d")))
    assert "biozoo test unet2d" in widget.info_label.text() or widget.model.description.name in widget.info_label.text()
    combo, axes = widget._inputs["raw"]
    assert combo.currentText() == "cells" and axes.text() == "yx"
    _run(qtbot, widget)
    out = [layer for layer in viewer.layers if layer.name != "cells"]
    assert len(out) == 1 and type(out[0]).__name__ == "Image"
    np.testing.assert_array_equal(out[0].data, models("unet2d").predict(x, axes="yx"))
    assert tuple(out[0].scale) == (0.5, 0.25) and tuple(out[0].translate) == (10.0, -4.0)
    assert widget.checks() and all(status in ("ok", "skipped", "warning") for _, status, _ in widget.checks())
    _run(qtbot, widget)  # a rerun replaces its layer
    assert len(viewer.layers) == 2


def test_stardist_gives_labels_and_a_time_lapse_keeps_its_frames(viewer_widget, tmp_path, qtbot):
    from biozoo.runtime import load

    viewer, widget = viewer_widget
    package = packages.build_package("stardist_maps", tmp_path)
    maps = np.stack([packages.star_maps(64, 80, count=6, seed=s) for s in (1, 2)])  # t y x c
    viewer.add_image(maps, name="maps", rgb=False)
    assert widget.load_package(str(package))
    widget._inputs["maps"][1].setText("tyxc")
    viewer.add_points([[1, 1]], name="a new layer")  # the typed axes stay
    assert widget._inputs["maps"][1].text() == "tyxc"
    _run(qtbot, widget)
    labels = viewer.layers[-1]
    assert type(labels).__name__ == "Labels" and labels.data.shape == (2, 64, 80)
    model = load(package, device="cpu")
    for t in range(2):
        expected = np.squeeze(model.predict(maps[t], axes="yxc"))
        np.testing.assert_array_equal(labels.data[t], expected)
        assert labels.data[t].max() >= 3
    assert "2 slices" in widget.status_label.text()


def test_pixel_size_mismatch_is_shown_offers_rescale_and_an_unknown_size_warns(viewer_widget, tmp_path, qtbot):
    viewer, widget = viewer_widget
    package = packages.build_package("blobseg", tmp_path)  # trained at 0.5 um
    image = packages.blob_image(np.random.default_rng(3), 96, 6, 5)[0, 0]
    viewer.add_image(image, name="blobs")
    assert widget.load_package(str(package))
    _run(qtbot, widget)  # no pixel size known: it runs, and says so
    rows = {name: (status, message) for name, status, message in widget.checks()}
    assert rows["pixel-size"][0] == "warning" and "unknown" in rows["pixel-size"][1]
    assert len(viewer.layers) == 2
    widget.pixel_edit.setText("1.0")  # twice the training pixel size: refused, nothing added
    _run(qtbot, widget)
    rows = {name: (status, message) for name, status, message in widget.checks()}
    assert rows["pixel-size"][0] == "error" and "differs from the training pixel size" in rows["pixel-size"][1]
    assert widget.rescale_button.isEnabled() and len(viewer.layers) == 2
    assert any("differs from the training pixel size" in m for m in _errors())
    _run(qtbot, widget, rescale=True)
    rows = {name: (status, message) for name, status, message in widget.checks()}
    assert rows["pixel-size"][0] == "ok" and "resampled" in rows["pixel-size"][1]
    assert viewer.layers[-1].data.shape == image.shape


def test_masks_come_from_labels_or_shapes_layers(viewer_widget, rdf, models, qtbot):
    viewer, widget = viewer_widget
    x = np.random.default_rng(4).random((64, 64)).astype(np.float32) + 1
    x[:, 40:] = 0  # a region outside the sample
    viewer.add_image(x, name="img")
    mask = np.zeros((64, 64), np.uint8)
    mask[:, :40] = 1
    viewer.add_labels(mask, name="valid")
    viewer.add_shapes([np.array([[0, 0], [0, 39], [63, 39], [63, 0]])], shape_type="rectangle", name="roi")
    assert widget.load_package(str(rdf("unet2d")))
    expected = models("unet2d").predict(x, axes="yx", mask=mask)
    for name in ("valid", "roi"):
        widget._inputs["raw"][0].setCurrentText("img")
        widget.mask_combo.setCurrentText(name)
        _run(qtbot, widget)
        rows = {check: (status, message) for check, status, message in widget.checks()}
        assert rows["masked-normalization"][1].startswith("--mask: 37.5% of the pixels excluded"), rows
        np.testing.assert_allclose(viewer.layers[-1].data, expected, atol=1e-6)


def test_detector_boxes_are_rectangles_with_score_and_label(viewer_widget, detection_package, qtbot):
    from biozoo.runtime import load
    from biozoo.runtime.commands.box_files import to_detections

    viewer, widget = viewer_widget
    from tests.runtime.test_detections import _image

    image = _image((64, 96), [(20, 24), (44, 72)])
    viewer.add_image(image, name="img")
    assert widget.load_package(str(detection_package))
    _run(qtbot, widget)
    shapes = viewer.layers[-1]
    assert type(shapes).__name__ == "Shapes" and len(shapes.data) == 2
    model = load(detection_package, device="cpu")
    det = to_detections(model.predict_with_axes(image, "yx"), model.engine.box_lists, 64, 96)
    for rect, (x0, y0, x1, y1) in zip(shapes.data, det.xyxy):
        np.testing.assert_allclose(rect.min(axis=0), [y0 - 0.5, x0 - 0.5], atol=1e-4)
        np.testing.assert_allclose(rect.max(axis=0), [y1 - 0.5, x1 - 0.5], atol=1e-4)
    assert list(shapes.features["label"]) == ["blob", "blob"]
    np.testing.assert_allclose(shapes.features["score"], det.scores, rtol=1e-6)


def test_cancel_stops_the_run_and_adds_nothing(viewer_widget, rdf, qtbot):
    viewer, widget = viewer_widget
    viewer.add_image(np.random.default_rng(5).random((200, 64, 64)).astype(np.float32), name="movie")
    assert widget.load_package(str(rdf("unet2d")))
    widget.run()
    qtbot.waitUntil(lambda: widget.progress_bar.value() > 0, timeout=30_000)
    widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=30_000)
    assert "cancelled" in widget.status_label.text() and len(viewer.layers) == 1


def test_a_corrupted_package_is_a_notification_with_the_cli_message(viewer_widget, zipped, tmp_path, capsys):
    from biozoo.runtime.cli import main

    viewer, widget = viewer_widget
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(zipped("unet2d")) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, data[:-1] + bytes([data[-1] ^ 1]) if item.filename.endswith(".onnx") else data)
    assert main(["info", str(bad)]) == 2
    cli_message = capsys.readouterr().err.strip().splitlines()[-1]
    assert not widget.load_package(str(bad))
    assert widget.model is None and not widget.run_button.isEnabled()
    message = _errors()[-1]
    assert "sha256" in message and message in cli_message


def test_dropping_a_package_opens_its_test_input_and_selects_it_in_the_widget(make_napari_viewer, virtual_screen,
                                                                               zipped, qtbot):
    from biozoo.napari_plugin.reader import WIDGET, get_reader

    package = zipped("unet2d")
    assert get_reader(str(package)) is not None and get_reader(str(package.with_suffix(".txt"))) is None
    viewer = make_napari_viewer()
    layers = viewer.open(str(package), plugin="biozoo")
    assert len(layers) == 1 and "test input" in layers[0].name
    _, widget = viewer.window.add_plugin_dock_widget(*WIDGET)  # the docked one
    assert widget.model is not None and widget._inputs["raw"][0].currentText() == layers[0].name
    _run(qtbot, widget)
    assert len(viewer.layers) == 2


def test_ome_zarr_outputs_open_lazily_with_their_labels(make_napari_viewer, virtual_screen, tmp_path):
    pytest.importorskip("ome_zarr")
    from biozoo.runtime.cli import main

    package = packages.build_package("stardist_maps", tmp_path)
    maps = packages.star_maps(96, 96, count=8, seed=3)
    np.save(tmp_path / "maps.npy", maps)
    assert main(["predict", str(package), str(tmp_path / "maps.npy"), "--axes", "yxc", "-o",
                 str(tmp_path / "out.ome.zarr"), "--quiet"]) == 0
    viewer = make_napari_viewer()
    layers = viewer.open(str(tmp_path / "out.ome.zarr"), plugin="biozoo")
    kinds = sorted(type(layer).__name__ for layer in layers)
    assert "Labels" in kinds
    labels = next(layer for layer in layers if type(layer).__name__ == "Labels")
    data = labels.data[0] if labels.multiscale else labels.data
    assert not isinstance(data, np.ndarray)  # a zarr array, read as napari draws
    assert np.asarray(data).max() >= 3


@pytest.fixture(scope="module")
def detection_package(tmp_path_factory):
    from tests.runtime.test_detections import build_detection_package

    return build_detection_package(tmp_path_factory.mktemp("detector"), fixed=True)


THIRDPARTY = sorted((packages.pathlib.Path(__file__).resolve().parents[3] / "shared" / "thirdparty").glob("*.zip"))


@pytest.mark.parametrize("package", THIRDPARTY, ids=lambda p: p.stem)
def test_third_party_packages_open_run_and_overlay(make_napari_viewer, virtual_screen, package, tmp_path, qtbot):
    """Real packages biozoo did not write (format 0.4, two inputs, outputs x4 or half the input size, a new output
    axis): dropped into napari, their test inputs open, each in its input's row, and the outputs equal
    Model.predict and lie on the input's grid."""
    from biozoo.napari_plugin.reader import WIDGET
    from biozoo.runtime import load

    local = tmp_path / package.name
    shutil.copy(package, local)
    viewer = make_napari_viewer()
    opened = viewer.open(str(local), plugin="biozoo")
    _, widget = viewer.window.add_plugin_dock_widget(*WIDGET)
    model = load(local, device="cpu")
    assert [layer.metadata["biozoo_input"] for layer in opened] == [t.id for t in model.description.inputs]
    for layer in opened:
        assert widget._inputs[layer.metadata["biozoo_input"]][0].currentText() == layer.name
    _run(qtbot, widget, timeout=120_000)
    assert widget.last_result is not None, widget.status_label.text()
    arrays = {layer.metadata["biozoo_input"]: layer.data for layer in opened}
    axes = {tid: widget._inputs[tid][1].text() for tid in arrays}
    expected = model.predict_with_axes(arrays, axes)
    primary = opened[0]
    for tid, (data, out_axes) in expected.items():
        layer = next(layer for layer in viewer.layers if layer.metadata.get("biozoo", {}).get("output") == tid)
        np.testing.assert_allclose(np.asarray(layer.data), np.squeeze(data) if layer.data.ndim < data.ndim else data,
                                   rtol=1e-5, atol=1e-6)
        for letter in "yx":
            if letter in out_axes:
                ratio = primary.data.shape[axes[opened[0].metadata["biozoo_input"]].index(letter)] / \
                    data.shape[out_axes.index(letter)]
                kept = [a for a in layer.metadata["biozoo"]["axes"]]
                assert layer.scale[kept.index(letter)] == pytest.approx(ratio)


def test_a_lazily_read_ome_zarr_layer_is_predicted_block_by_block_into_a_file(viewer_widget, rdf, models, tmp_path,
                                                                              qtbot):
    """A layer napari reads from an OME-Zarr slice by slice: predicted from its file under the memory budget (tile
    by tile into an OME-Zarr, as `biozoo predict --memory`), the output opened lazily, equal to Model.predict."""
    pytest.importorskip("ome_zarr")
    from biozoo.runtime.commands.imageio import write_image

    viewer, widget = viewer_widget
    x = np.random.default_rng(6).random((600, 520)).astype(np.float32)
    write_image(tmp_path / "big.ome.zarr", x, "yx", pixel_size={"y": 0.5, "x": 0.5})
    (layer,) = viewer.open(str(tmp_path / "big.ome.zarr"), plugin="biozoo")
    assert not isinstance(layer.data[0] if layer.multiscale else layer.data, np.ndarray)
    assert widget.load_package(str(rdf("unet2d")))
    widget._inputs["raw"][0].setCurrentText(layer.name)
    assert widget.pixel_edit.text() == "0.5,0.5"  # the layer's scale in micrometers
    from biozoo.runtime.engine.memory import resident_bytes

    # the process (Qt, napari) and 12 MB: the 1.2 MB image fits, its in-memory prediction (activations) does not
    widget.memory_edit.setText(f"{(resident_bytes() >> 20) + 12}MB")
    _run(qtbot, widget)
    result = widget.last_result
    assert result is not None and result.written and result.streamed, widget.status_label.text()
    out = viewer.layers[-1]
    data = out.data[0] if out.multiscale else out.data
    assert not isinstance(data, np.ndarray)  # opened lazily from the written file
    np.testing.assert_allclose(np.asarray(data), models("unet2d").predict(x, axes="yx"), atol=1e-5)
    assert tuple(out.scale)[-2:] == tuple(layer.scale)[-2:]
