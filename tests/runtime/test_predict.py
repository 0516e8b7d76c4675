"""predict: axes mapping, padding to valid sizes, tiling equal to whole-image runs, several inputs and outputs,
dataset statistics, and clear errors for bad arrays."""
from __future__ import annotations

import os

import numpy as np
import pytest

from biozoo.runtime import InputError

RNG = np.random.default_rng(7)


def _image(*shape):
    return (RNG.random(shape, dtype=np.float32) * 200 + 20).astype(np.float32)


def test_axes_are_mapped_and_mapped_back(models):
    model = models("unet2d")
    x = _image(64, 48)
    yx = model.predict(x, axes="yx")
    assert yx.shape == (64, 48)
    np.testing.assert_allclose(model.predict(x.T, axes="xy"), yx.T, atol=1e-6)
    np.testing.assert_allclose(model.predict(x[None], axes="cyx"), yx[None], atol=1e-6)
    batch = model.predict(np.stack([x, x[::-1]]), axes="byx")
    assert batch.shape == (2, 64, 48)
    np.testing.assert_allclose(batch[0], yx, atol=1e-6)
    np.testing.assert_allclose(batch[1], model.predict(x[::-1].copy(), axes="yx"), atol=1e-6)
    assert model.predict(x).shape == (64, 48), "axes guessed from the model when omitted"


def test_odd_sizes_are_padded_and_cropped_back(models):
    model = models("unet2d")
    for shape in [(41, 43), (97, 40), (13, 17)]:  # 13x17 is below the minimum of 40: padded up
        out = model.predict(_image(*shape), axes="yx")
        assert out.shape == shape
        assert np.isfinite(out).all()


@pytest.mark.parametrize("tile", [{"y": 56, "x": 56}, {"y": 88, "x": 48}, {"y": 40 + 8 * 5, "x": 40 + 8 * 9}])
def test_tiled_2d_equals_whole_image(models, tile):
    model = models("unet2d")
    x = _image(203, 237)
    whole = model.predict(x, axes="yx")
    tiled = model.predict(x, axes="yx", tile=tile)
    np.testing.assert_allclose(tiled, whole, atol=1e-5, rtol=0)


def test_tile_budget_splits_large_images_and_stays_exact(models):
    model = models("unet2d")
    x = _image(300, 310)
    calls = []
    whole = model.predict(x, axes="yx")
    tiled = model.predict(x, axes="yx", tile_budget=128 * 128, progress=lambda done, total: calls.append(total))
    assert calls and calls[-1] > 4, "a small budget must produce several tiles"
    np.testing.assert_allclose(tiled, whole, atol=1e-5, rtol=0)


def test_tiles_have_one_shape(models):
    model = models("unet2d")
    shapes = set()
    session_run = model.session.run
    model.session.run = lambda feeds: shapes.add(feeds["raw"].shape) or session_run(feeds)
    try:
        model.predict(_image(150, 221), axes="yx", tile={"y": 64, "x": 64})
    finally:
        model.session.run = session_run
    assert len(shapes) == 1, shapes


def test_tiled_3d_equals_whole_volume(models):
    model = models("unet3d")
    x = _image(23, 50, 47)
    whole = model.predict(x, axes="zyx")
    assert whole.shape == x.shape
    tiled = model.predict(x, axes="zyx", tile={"z": 16, "y": 24, "x": 28})
    np.testing.assert_allclose(tiled, whole, atol=1e-5, rtol=0)


def test_fixed_size_model_is_tiled_at_its_size(models):
    model = models("fixed")
    x = _image(150, 130)
    out = model.predict(x, axes="yx")
    assert out.shape == x.shape
    corner = model.predict(x[:64, :64].copy(), axes="yx")
    np.testing.assert_allclose(out[:50, :50], corner[:50, :50], atol=1e-5)
    small = model.predict(x[:30, :20].copy(), axes="yx")
    assert small.shape == (30, 20)


def test_several_inputs_are_matched_by_id_not_position(models):
    model = models("multi_io")
    a, b = _image(48, 52), _image(48, 52) / 200
    out1 = model.predict({"a": a, "b": b}, axes="yx")
    out2 = model.predict({"b": b, "a": a}, axes="yx")
    assert set(out1) == {"sum", "prod"}
    for k in out1:
        np.testing.assert_array_equal(out1[k], out2[k])
    swapped = model.predict({"a": b, "b": a}, axes="yx")
    assert not np.allclose(swapped["sum"], out1["sum"])


def test_scaled_outputs_follow_scale_and_offset(models):
    out = models("scaled").predict(_image(100, 90), axes="yx")
    assert out["down"].shape == (50, 45)  # input scale 0.5, output scale 1.0
    assert out["inner"].shape == (92, 82)  # size offset -8


def test_dataset_statistics_span_the_batch_and_can_be_given(models):
    model = models("dataset_stats")
    dim, bright = _image(48, 48), _image(48, 48) * 10
    together = model.predict(np.stack([dim, bright]), axes="byx")
    alone = model.predict(dim, axes="yx")
    assert not np.allclose(together[0], alone, atol=1e-3), "dataset statistics must differ from one sample's"
    given = model.dataset_statistics([np.stack([dim, bright])], axes="byx")
    np.testing.assert_allclose(model.predict(dim, axes="yx", dataset_stats=given), together[0], atol=1e-5)
    pooled = model.dataset_statistics([dim, bright], axes="yx").as_dict()  # streamed sample by sample
    both = np.stack([dim, bright]).astype(np.float64)
    np.testing.assert_allclose(pooled["raw.mean"], [both.mean()], rtol=1e-9)
    np.testing.assert_allclose(pooled["raw.std"], [both.std()], rtol=1e-9)


def test_no_batch_axis_model(models):
    model = models("nobatch")
    x = _image(33, 45)
    assert model.predict(x, axes="yx").shape == (33, 45)
    with pytest.raises(InputError, match="axis 'b' of size 2"):
        model.predict(np.stack([x, x]), axes="byx")


def test_multichannel_output_gets_a_channel_axis(models):
    out = models("softmax3").predict(_image(2, 30, 31), axes="cyx")
    assert out.shape == (3, 30, 31)
    np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-5)
    _, axes = models("softmax3").predict_with_axes(_image(30, 31, 2), axes="yxc")["probs"]
    assert axes == "yxc"


@pytest.mark.parametrize(
    ("kind", "data", "axes", "message"),
    [
        ("unet2d", np.ones((4, 4, 40, 40), np.float32), "zyx", "has 4 dimensions but axes 'zyx' name 3"),
        ("unet2d", np.ones((2, 2, 3, 40, 40), np.float32), None, "cannot tell the axes"),
        ("unet2d", np.ones((40, 40), np.float32), "yq", "unknown letters"),
        ("softmax3", np.ones((3, 40, 40), np.float32), "cyx", "needs exactly 2"),
        ("softmax3", np.ones((40, 40), np.float32), "yx", "lacks axis 'c'"),
        ("unet2d", np.full((40, 40), np.nan, np.float32), "yx", "1600 NaN/Inf"),
        ("unet2d", np.array([[1.0, np.inf]] * 40, np.float32), "yx", "NaN/Inf"),
        ("unet2d", np.ones((0, 40), np.float32), "yx", "is empty"),
        ("unet2d", np.array([["a"]]), "yx", "dtype <U1"),
        ("unet3d", np.ones((40, 40), np.float32), "yx", "lacks axis 'z'"),
        ("fixed", np.ones((3, 64, 64), np.float32), "byx", "batch size 1"),
    ],
)
def test_bad_arrays_get_clear_errors(models, kind, data, axes, message):
    with pytest.raises(InputError, match=message):
        models(kind).predict(data, axes=axes)


def test_unknown_and_missing_tensor_ids(models):
    model = models("multi_io")
    with pytest.raises(InputError, match=r"unknown input tensor id\(s\) \['c'\]"):
        model.predict({"a": _image(40, 40), "b": _image(40, 40), "c": _image(40, 40)}, axes="yx")
    with pytest.raises(InputError, match=r"missing input\(s\) \['b'\]"):
        model.predict({"a": _image(40, 40)}, axes="yx")
    with pytest.raises(InputError, match="pass a dict by tensor id"):
        model.predict(_image(40, 40), axes="yx")


def test_runtime_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, biozoo.runtime; biozoo.runtime.load; import biozoo.runtime.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", ["out.tif", "out.npy", "out.ome.zarr"])
def test_outputs_get_the_permissions_of_any_new_file(rdf, tmp_path, name):
    """Written through tempfile (0600/0700) until complete, then given what open()/mkdir() would give."""
    import stat

    from biozoo.runtime.commands.predict_files import predict_files

    np.save(tmp_path / "in.npy", np.random.default_rng(0).random((64, 64)).astype(np.float32))
    previous = os.umask(0o022)
    try:
        predict_files(str(rdf("unet2d")), [str(tmp_path / "in.npy")], tmp_path / name, device="cpu", quiet=True)
    finally:
        os.umask(previous)
    target = tmp_path / name
    paths = [target, *target.rglob("*")] if target.is_dir() else [target]
    modes = {stat.S_IMODE(p.stat().st_mode) for p in paths}
    assert modes <= {0o644, 0o755} and stat.S_IMODE(target.stat().st_mode) == (0o755 if target.is_dir() else 0o644)
