"""The plugin's napari-free half (biozoo.napari_plugin.layers / models): axes of layers, slice-by-slice prediction,
outputs as layer data tuples. Runs in the default suite, without napari or Qt."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from biozoo.napari_plugin.layers import (Cancelled, LayerGeometry, layer_axes, merged_checks, output_geometry,
                                         output_layers, predict_layers)
from biozoo.runtime.errors import InputError


def test_importing_the_plugin_and_the_runtime_loads_no_napari_qt_torch_or_scipy():
    code = ("import sys, biozoo.runtime, biozoo.runtime.cli, biozoo.napari_plugin, biozoo.napari_plugin.layers, "
            "biozoo.napari_plugin.models, biozoo.napari_plugin.reader; biozoo.runtime.load; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'vispy', 'torch', 'scipy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_layer_axes_use_letters_labels_then_the_runtime_guess_then_a_time_axis(models):
    tensor = models("unet2d").description.inputs[0]  # b c y x, one channel
    assert layer_axes((64, 64), tensor) == "yx"
    assert layer_axes((5, 64, 64), tensor) == "tyx"  # a time-lapse for a 2D model
    assert layer_axes((5, 64, 64), tensor, axis_labels=("z", "y", "x")) == "zyx"
    assert layer_axes((5, 64, 64), tensor, axis_labels=("-2", "-1", "0")) == "tyx"  # napari's default labels
    assert layer_axes((64, 64, 3), tensor, rgb=True) == "yxc"
    two_channels = models("softmax3").description.inputs[0]  # b c y x with 2 channels
    assert layer_axes((2, 64, 64), two_channels) == "cyx"
    assert layer_axes((5, 2, 64, 64), two_channels) == "bcyx"  # the runtime's own rule: a batch
    assert layer_axes((5, 64, 64, 3), two_channels, rgb=True) == "tyxc"
    with pytest.raises(InputError, match="cannot tell the axes"):
        layer_axes((2, 3, 64, 64, 9), tensor)


def test_a_time_lapse_is_predicted_frame_by_frame_and_equals_model_predict(models):
    model = models("unet2d")
    frames = np.random.default_rng(0).random((3, 48, 64)).astype(np.float32)
    seen = []
    result = predict_layers(model, {"raw": frames}, {"raw": "tyx"}, progress=lambda d, t: seen.append((d, t)))
    (tid, (data, axes)), = result.outputs.items()
    assert axes[0] == "t" and data.shape[0] == 3 and result.slices == 3
    for i in range(3):
        np.testing.assert_array_equal(data[i], model.predict(frames[i], axes="yx"))
    assert seen[-1][0] == seen[-1][1] and all(b >= a for (a, _), (b, _) in zip(seen, seen[1:]))  # monotone, to the end
    assert {c["slice"] for c in result.checks} == {"t=0", "t=1", "t=2"}


def test_cancel_stops_before_the_next_tile(models):
    import threading

    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        predict_layers(models("unet2d"), {"raw": np.zeros((2, 32, 32), np.float32)}, {"raw": "tyx"}, cancel=cancel)


def test_output_geometry_overlays_scaled_outputs_on_the_input():
    source = LayerGeometry("yx", (0.5, 0.5), (10.0, 20.0))
    scale, translate = output_geometry("yx", (64, 64), source, (64, 64))
    assert scale == [0.5, 0.5] and translate == [10.0, 20.0]
    scale, translate = output_geometry("cyx", (2, 256, 128), source, (64, 64))  # x4 and x2 upsampled, channels
    assert scale == [1.0, 0.125, 0.25]
    # the first output pixel centre lies where resampling puts it: (0.5 / 4 - 0.5) input pixels from the origin
    assert translate == [0.0, 10.0 + 0.5 * (0.25 - 1) / 2, 20.0 + 0.5 * (0.5 - 1) / 2]


def test_outputs_become_labels_images_and_channel_layers(models):
    source = LayerGeometry("yx", (2.0, 2.0), (0.0, 0.0))
    model = models("softmax3")
    x = np.random.default_rng(1).random((2, 40, 40)).astype(np.float32)  # two channels in, three classes out
    result = predict_layers(model, {"raw": x}, {"raw": "cyx"})
    (data, kwargs, kind), = output_layers(model, result, LayerGeometry("cyx", (1.0, 2.0, 2.0), (0.0, 0.0, 0.0)),
                                          x.shape)
    out, axes = result.outputs["probs"]
    assert kind == "image" and axes == "cyx" and kwargs["channel_axis"] == 0
    assert kwargs["name"] == [f"{model.description.name} [{c}]" for c in ("background", "foreground", "boundary")]
    assert kwargs["scale"] == [2.0, 2.0]
    model = models("multi_io")  # one bool output: a Labels layer
    ins = {t.id: np.random.default_rng(2).random((32, 32)).astype(np.float32) for t in model.description.inputs}
    result = predict_layers(model, ins, {t: "yx" for t in ins})
    kinds = {kwargs["metadata"]["biozoo"]["output"]: kind for _, kwargs, kind in output_layers(model, result, source,
                                                                                                 (32, 32))}
    for tid, (data, _) in result.outputs.items():
        assert kinds[tid] == ("labels" if data.dtype == bool or np.issubdtype(data.dtype, np.integer) else "image")
    assert "labels" in kinds.values() and "image" in kinds.values()


def test_merged_checks_keep_the_worst_status_per_check():
    rows = merged_checks([{"name": "pixel-size", "status": "ok", "message": "a", "slice": "t=0"},
                          {"name": "pixel-size", "status": "warning", "message": "b", "slice": "t=1"},
                          {"name": "pixel-size", "status": "ok", "message": "c", "slice": "t=2"},
                          {"name": "other", "status": "skipped", "message": "d"},
                          {"name": "other", "status": "ok", "message": "e"}])  # twice in one run: two rows
    assert [(r["name"], r["status"], r["message"], r["count"]) for r in rows] == [
        ("pixel-size", "warning", "b", 3), ("other", "skipped", "d", 1), ("other", "ok", "e", 1)]
