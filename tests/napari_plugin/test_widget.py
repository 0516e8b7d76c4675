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
        assert "--mask" in rows["masked-normalization"][1] or rows["masked-normalization"][0] == "ok"
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
