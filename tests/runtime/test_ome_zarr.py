"""Zarr / OME-Zarr in and out, and lazy reads: real files written by ome-zarr-py and zarr (no mocks), small images.

NGFF 0.4 (zarr v2) and 0.5 (zarr v3) inputs are read with their pixel sizes, the resolution level is chosen by the
training pixel size, `biozoo predict in.ome.zarr -o out.ome.zarr` equals the .npy path for dense and multi-channel
packages, integer outputs land in an NGFF labels group, and predict's protections hold for Zarr folders.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

pytest.importorskip("ome_zarr")
zarr = pytest.importorskip("zarr")

from ome_zarr.format import FormatV04, FormatV05  # noqa: E402
from ome_zarr.writer import write_image as ngff_write  # noqa: E402
from zarr.storage import LocalStore  # noqa: E402

from biozoo.runtime.cli import main  # noqa: E402
from biozoo.runtime.commands.imageio import create_output, image_info, open_image, read_image, write_image  # noqa: E402
from tests import packages  # noqa: E402

UM = {"y": "micrometer", "x": "micrometer"}


def ngff(path: Path, data: np.ndarray, axes: str, pixel: float, version: str = "0.5", levels=(2,), units=UM):
    fmt = FormatV05() if version == "0.5" else FormatV04()
    group = zarr.open_group(store=LocalStore(path.absolute()), mode="w", zarr_format=fmt.zarr_format)
    ngff_write(data, group, scale_factors=levels, fmt=fmt, axes=list(axes), axes_units=units,
               scale={a: pixel if a in "yx" else 1.0 for a in axes})
    return path


def translated(path: Path, translation: list[float]) -> Path:
    """The OME-Zarr at `path` with its first level's translation set (ome-zarr-py's writer takes none in every
    version; 0.18 writes zeros)."""
    group = zarr.open_group(store=LocalStore(path.absolute()), mode="r+")
    meta = dict(group.attrs)
    ome = meta.get("ome", meta)
    level = ome["multiscales"][0]["datasets"][0]
    level["coordinateTransformations"] = [t for t in level["coordinateTransformations"] if t["type"] == "scale"] + [
        {"type": "translation", "translation": translation}]
    group.attrs.update(meta)
    return path


def attrs(path: Path) -> dict:
    found = dict(zarr.open_group(store=LocalStore(path, read_only=True), mode="r").attrs)
    return found.get("ome", found)


def image(seed=0, size=64, scale=200.0) -> np.ndarray:
    return (np.random.default_rng(seed).random((size, size)) * scale).astype(np.float32)


def predict(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["predict", *map(str, args), "-q"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ngff_inputs_are_read_with_their_pixel_sizes(tmp_path, version):
    data = np.stack([image(1), image(2)])
    path = ngff(tmp_path / "in.ome.zarr", data, "cyx", 0.25, version)
    with open_image(path) as img:
        assert img.axes == "cyx" and img.pixel_size == {"y": 0.25, "x": 0.25}
        assert isinstance(img.data, zarr.Array) and img.data.shape == (2, 64, 64)
        np.testing.assert_array_equal(img.data[:, 10:20, 5:9], data[:, 10:20, 5:9])
        assert "level 's0' of 2" in img.note
    assert read_image(path)[1] == "cyx" and image_info(path) == ((2, 64, 64), np.dtype("float32"), "cyx")
    bare = ngff(tmp_path / "bare.ome.zarr", data, "cyx", 0.25, version, units=None)  # no unit: size unknown
    assert open_image(bare).pixel_size is None


def test_level_is_chosen_by_the_training_pixel_size(tmp_path):
    data = image(3, 128)
    path = ngff(tmp_path / "in.ome.zarr", data, "yx", 0.25, levels=(2, 4))
    for target, level, shape in (({"y": 0.5, "x": 0.5}, "s1", (64, 64)), ({"y": 1.1, "x": 1.1}, "s2", (32, 32)),
                                 ({"y": 0.2, "x": 0.2}, "s0", (128, 128)), (None, "s0", (128, 128))):
        with open_image(path, target) as img:
            assert img.data.shape == shape and f"level '{level}' of 3" in img.note
            assert img.pixel_size == {"y": 0.25 * 128 / shape[0], "x": 0.25 * 128 / shape[0]}
    plain = tmp_path / "plain.zarr"  # a bare zarr array: no axes, no pixel size
    zarr.create_array(store=LocalStore(plain), shape=(8, 8), dtype="uint8", chunks=(4, 4))[...] = 7
    with open_image(plain) as img:
        assert img.axes is None and img.pixel_size is None and int(img.data[...].sum()) == 7 * 64


@pytest.mark.parametrize("kind, data, axes", [("unet2d", image(4, 96), "yx"),
                                              ("softmax3", np.stack([image(5, 48, 5), image(6, 48, 5)]), "cyx")])
def test_predict_ome_zarr_equals_the_npy_path(rdf, tmp_path, capsys, kind, data, axes):
    src = ngff(tmp_path / "in.ome.zarr", data, axes, 0.5, levels=())
    np.save(tmp_path / "in.npy", data)
    assert predict(capsys, rdf(kind), src, "-o", tmp_path / "out.ome.zarr")[0] == 0
    assert predict(capsys, rdf(kind), tmp_path / "in.npy", "-o", tmp_path / "out.npy", "--axes", axes)[0] == 0
    meta = attrs(tmp_path / "out.ome.zarr")
    assert meta["version"] == "0.5"
    scale = meta["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale[-2:] == [0.5, 0.5]  # the input's pixel size carried over
    with open_image(tmp_path / "out.ome.zarr") as out:
        np.testing.assert_array_equal(out.data[...], np.load(tmp_path / "out.npy"))
        assert out.pixel_size == {"y": 0.5, "x": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy", "in.ome.zarr", "out.npy", "out.ome.zarr"]


def test_several_outputs_are_named_after_the_output(rdf, tmp_path, capsys):
    a = ngff(tmp_path / "a.ome.zarr", image(7, 48, 4), "yx", 0.5, levels=())
    b = ngff(tmp_path / "b.ome.zarr", image(8, 48, 1), "yx", 0.5, levels=())
    assert predict(capsys, rdf("multi_io"), f"a={a}", f"b={b}", "-o", tmp_path / "out.ome.zarr")[0] == 0
    assert (tmp_path / "out_sum.ome.zarr").is_dir() and (tmp_path / "out_prod.ome.zarr").is_dir()
    assert "labels" not in attrs(tmp_path / "out_prod.ome.zarr")  # a binary mask (bool) stays an image


def test_integer_outputs_land_in_a_labels_group(tmp_path, capsys):
    """An integer output (here the blob segmenter's mask cast to uint16) is written as NGFF labels, with the input
    level that was read at the root so that a viewer shows both."""
    pkg = Path(packages.build_package("blobseg", tmp_path / "pkgs"))
    data = yaml.safe_load(pkg.read_text())
    data["outputs"][0]["postprocessing"] += [{"id": "binarize", "kwargs": {"threshold": 0.5}},
                                             {"id": "ensure_dtype", "kwargs": {"dtype": "uint16"}}]
    data["outputs"][0]["data"] = {"type": "uint16"}
    pkg.write_text(yaml.safe_dump(data, sort_keys=False))
    blobs = np.kron(packages.blob_image(np.random.default_rng(0), 64, 6, 5.0)[0, 0], np.ones((2, 2)))
    src = ngff(tmp_path / "in.ome.zarr", blobs.astype(np.float32), "yx", 0.25)  # s1 is at the training 0.5 µm
    out = tmp_path / "cells.ome.zarr"
    assert predict(capsys, pkg, src, "-o", out)[0] == 0
    assert attrs(out / "labels") == {"labels": ["cells"]}
    label_meta = attrs(out / "labels" / "cells")
    assert "image-label" in label_meta and label_meta["multiscales"][0]["axes"][-1]["unit"] == "micrometer"
    with open_image(out / "labels" / "cells") as labels, open_image(out) as root, open_image(src, {"y": .5, "x": .5}) \
            as level:
        assert labels.data.dtype == np.uint16 and labels.data.shape == (64, 64)
        assert labels.pixel_size == root.pixel_size == {"y": 0.5, "x": 0.5}
        np.testing.assert_array_equal(root.data[...], level.data[...])
        assert set(np.unique(labels.data[...])) == {0, 1}


def test_protections_hold_for_zarr_folders(rdf, tmp_path, capsys):
    src = ngff(tmp_path / "in.ome.zarr", image(9), "yx", 0.5, levels=())
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    for out, words in ((src, "is an input"), (src / "x.ome.zarr", "inside it")):
        code, err = predict(capsys, rdf("unet2d"), src, "-o", out, "--overwrite")
        assert code == 2 and words in err and "never writes over its inputs" in err and "Traceback" not in err
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before
    out = tmp_path / "out.ome.zarr"
    assert predict(capsys, rdf("unet2d"), src, "-o", out)[0] == 0
    (out / "marker").write_text("old")
    code, err = predict(capsys, rdf("unet2d"), src, "-o", out)
    assert code == 2 and "already exists" in err and "--overwrite" in err and (out / "marker").exists()
    assert predict(capsys, rdf("unet2d"), src, "-o", out, "--overwrite")[0] == 0
    assert not (out / "marker").exists() and attrs(out)["multiscales"]
    folder = tmp_path / "notes.zarr"  # a folder that only looks like Zarr is never replaced
    folder.mkdir()
    (folder / "mine.txt").write_text("keep")
    code, err = predict(capsys, rdf("unet2d"), src, "-o", folder, "--overwrite")
    assert code == 2 and "not a Zarr image" in err and (folder / "mine.txt").exists()
    code, err = predict(capsys, rdf("unet2d"), tmp_path / "missing.ome.zarr", "-o", tmp_path / "o.ome.zarr")
    assert code == 2 and "does not exist" in err and "folder" in err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_lazy_reads_equal_eager_reads(tmp_path):
    data = np.random.default_rng(10).random((3, 40, 50)).astype(np.float32)
    np.save(tmp_path / "a.npy", data)
    tifffile.imwrite(tmp_path / "plain.tif", data, metadata={"axes": "ZYX"})
    tifffile.imwrite(tmp_path / "packed.tif", data, compression="zlib", tile=(16, 16), metadata={"axes": "ZYX"})
    for name, kind in (("a.npy", np.memmap), ("plain.tif", np.memmap), ("packed.tif", zarr.Array)):
        eager, axes = read_image(tmp_path / name)
        with open_image(tmp_path / name) as img:
            assert isinstance(img.data, kind) and img.axes == axes and img.data.shape == eager.shape
            np.testing.assert_array_equal(img.data[1, 5:30, 7:45], eager[1, 5:30, 7:45])
            np.testing.assert_array_equal(np.asarray(img.data[...]), eager)


@pytest.mark.parametrize("name", ["o.npy", "o.tif", "o.ome.zarr"])
def test_outputs_written_tile_by_tile_appear_only_when_closed(tmp_path, name):
    data = np.random.default_rng(11).random((1, 2, 70, 90)).astype(np.float32)
    target = create_output(tmp_path / name, data.shape, data.dtype, "bcyx", pixel_size={"y": 0.3, "x": 0.3})
    for y in range(0, 70, 32):
        target[:, :, y:y + 32] = data[:, :, y:y + 32]
    assert not (tmp_path / name).exists()
    target.close()
    with open_image(tmp_path / name) as out:
        np.testing.assert_array_equal(np.asarray(out.data[...]).reshape(data.shape), data)
    aborted = create_output(tmp_path / f"gone_{name}", data.shape, data.dtype, "bcyx")
    aborted[0, 0, 0:5] = 1.0
    aborted.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_write_image_refuses_a_batch_the_format_cannot_hold(tmp_path):
    from biozoo.runtime.errors import InputError

    with pytest.raises(InputError, match="batch axis has 2 samples"):
        write_image(tmp_path / "b.ome.zarr", np.zeros((2, 8, 8), np.float32), "byx")
    assert not list(tmp_path.iterdir())


def test_zarr_stays_out_of_import_and_nothing_connects(tmp_path):
    """`import biozoo.runtime` loads no zarr/ome-zarr/dask, and reading and writing OME-Zarr with every socket
    refused works (ome-zarr-py is only ever given local stores)."""
    src = ngff(tmp_path / "in.ome.zarr", image(12), "yx", 0.5)
    code = f"""
import sys
def guard(event, args):
    if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname"):
        raise RuntimeError("network use: " + event)
sys.addaudithook(guard)
import biozoo.runtime, biozoo.runtime.cli
loaded = sorted(m for m in ("zarr", "ome_zarr", "dask", "fsspec") if m in sys.modules)
from pathlib import Path
from biozoo.runtime.commands.imageio import open_image, write_image
img = open_image(Path({str(src)!r}), {{"y": 1.0, "x": 1.0}})
write_image(Path({str(tmp_path / 's3x.ome.zarr')!r}), img.data[...], img.axes, pixel_size=img.pixel_size)
print(loaded, img.note)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("[]") and "level 's1'" in proc.stdout
    assert json.loads(json.dumps(attrs(tmp_path / "s3x.ome.zarr")))["multiscales"]


def test_outputs_are_placed_on_the_input_grid_by_their_translation(rdf, tmp_path, capsys):
    """A cropped output (size offset -8: 4 px a side) and a stride-2 one (scale 2x) of an input placed at (3, 5) µm
    with 0.5 µm pixels: each output's first pixel centre, then every pyramid level's, is where its pixels lie."""
    data = image(8, 128)
    translated(ngff(tmp_path / "in.ome.zarr", data, "yx", 0.5, levels=()), [3.0, 5.0])
    with open_image(tmp_path / "in.ome.zarr") as img:
        assert img.origin == {"y": 3.0, "x": 5.0} and img.pixel_size == {"y": 0.5, "x": 0.5}
    assert predict(capsys, rdf("scaled"), tmp_path / "in.ome.zarr", "-o", tmp_path / "out.ome.zarr")[0] == 0
    assert predict(capsys, rdf("scaled"), tmp_path / "in.ome.zarr", "-o", tmp_path / "out.npy")[0] == 0

    def placement(name):
        meta = attrs(tmp_path / f"out_{name}.ome.zarr")["multiscales"][0]
        return [{t["type"]: t[t["type"]] for t in d["coordinateTransformations"]} for d in meta["datasets"]]

    inner, down = placement("inner"), placement("down")
    assert inner[0] == {"scale": [0.5, 0.5], "translation": [3.0 + 2.0, 5.0 + 2.0]}  # 4 px of 0.5 µm in
    assert down[0] == {"scale": [1.0, 1.0], "translation": [3.25, 5.25]}  # a 2x2-pixel area's centre
    full = np.load(tmp_path / "out_inner.npy")
    with open_image(tmp_path / "out_inner.ome.zarr") as out:
        np.testing.assert_array_equal(out.data[...], full)
        assert out.origin == {"y": 5.0, "x": 7.0}
    for k, level in enumerate(inner[1:], 1):  # level k averages 2^k x 2^k level-0 pixels: centred between them
        assert level["translation"] == pytest.approx([5.0 + (2 ** k - 1) / 2 * 0.5, 7.0 + (2 ** k - 1) / 2 * 0.5])
        assert level["scale"] == pytest.approx([0.5 * 2 ** k] * 2)


def test_labels_levels_keep_the_first_pixel_in_place(tmp_path):
    labels = np.random.default_rng(2).integers(0, 9, (256, 256)).astype(np.uint16)
    write_image(tmp_path / "cells.ome.zarr", labels, "yx", pixel_size={"y": 0.5, "x": 0.5}, origin={"y": 1.0})
    meta = dict(zarr.open_group(tmp_path / "cells.ome.zarr", mode="r")["labels/cells"].attrs)["ome"]["multiscales"][0]
    moves = [[t for t in d["coordinateTransformations"] if t["type"] == "translation"] for d in meta["datasets"]]
    assert len(moves) > 1 and all(m == [{"type": "translation", "translation": [1.0, 0.0]}] for m in moves)


def test_outputs_streamed_and_on_dask_carry_the_same_placement(rdf, models, no_baseline, tmp_path, capsys):
    """Tile by tile above the memory budget, and block by block on one Dask worker, outputs get the same scale and
    translation as in memory: the input's origin carried over, each level's half-pixel shift."""
    from tests.runtime.test_bounded_memory import _streamed_budget

    data = image(9, 256)
    translated(ngff(tmp_path / "in.ome.zarr", data, "yx", 0.5, levels=()), [-4.0, 6.5])
    budget = _streamed_budget(models("unet2d"), data)
    runs = (("memory", []), ("streamed", ["--memory", str(budget)]), ("dask", ["--workers", "1", "--tile", "128,128"]))
    for name, extra in runs:
        code, err = predict(capsys, rdf("unet2d"), tmp_path / "in.ome.zarr", "-o", tmp_path / f"{name}.ome.zarr",
                            *extra)
        assert code == 0, err
    placed = [[d["coordinateTransformations"] for d in attrs(tmp_path / f"{name}.ome.zarr")["multiscales"][0]
               ["datasets"]] for name, _ in runs]
    assert placed[0] == placed[1] == placed[2] and len(placed[0]) > 1
    assert placed[0][0] == [{"type": "scale", "scale": [0.5, 0.5]}, {"type": "translation", "translation": [-4.0, 6.5]}]
    assert placed[0][1][1]["translation"] == pytest.approx([-4.0 + 0.25, 6.5 + 0.25])
