"""OME-Zarr outputs written in place (runtime/commands/omezarr_output.py): the pyramid levels are the same bytes
whether tiles arrive aligned (levels written at once), unaligned (levels rewritten at close) or whole; they equal an
independent block mean (images) or stride (labels) of the full image; a copy in another process refuses writes
whose levels it could not finish; ome-zarr-py reads the result with the right scales."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

pytest.importorskip("ome_zarr")
zarr = pytest.importorskip("zarr")

from ome_zarr.io import parse_url  # noqa: E402
from ome_zarr.reader import Reader  # noqa: E402

from biozoo.runtime.commands.omezarr_output import OmeZarrOutput, level_count  # noqa: E402


def _levels(path, group=""):
    node = zarr.open_group(path, mode="r")
    node = node[group] if group else node
    meta = dict(node.attrs)["ome"]["multiscales"][0]
    return [np.asarray(node[d["path"]]) for d in meta["datasets"]], meta


def _write(path, data, tiles, **kw):
    out = OmeZarrOutput(path, data.shape, data.dtype, "cyx", {"y": 0.25, "x": 0.25}, chunks={"y": 256, "x": 256},
                        **kw)
    for y0, y1, x0, x1 in tiles:
        out[:, y0:y1, x0:x1] = data[:, y0:y1, x0:x1]
    out.close()
    return path


def test_levels_are_the_same_bytes_however_the_tiles_arrive(tmp_path):
    rng = np.random.default_rng(3)
    data = rng.random((2, 1030, 1100), dtype=np.float32) * 100  # odd ends: the last chunks are partial
    aligned = [(y, min(y + 256, 1030), x, min(x + 512, 1100)) for y in range(0, 1030, 256) for x in range(0, 1100, 512)]
    unaligned = [(y, min(y + 300, 1030), x, min(x + 333, 1100))
                 for y in range(0, 1030, 300) for x in range(0, 1100, 333)]
    results = [_levels(_write(tmp_path / f"{name}.ome.zarr", data, tiles))
               for name, tiles in (("aligned", aligned), ("unaligned", unaligned), ("whole", [(0, 1030, 0, 1100)]))]
    (first, meta), *rest = results
    assert len(first) == 5 and [a.shape for a in first] == [(2, -(-1030 // 2 ** k), -(-1100 // 2 ** k))
                                                            for k in range(5)]
    for levels, _ in rest:
        for a, b in zip(first, levels):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(first[0], data)
    for k in range(1, 5):  # away from the odd ends, level k is the mean of each 2^k x 2^k block
        f, h, w = 2 ** k, 1024 // 2 ** k, 1088 // 2 ** k
        expected = data[:, :h * f, :w * f].reshape(2, h, f, w, f).mean(axis=(2, 4))
        np.testing.assert_allclose(first[k][:, :h, :w], expected, rtol=1e-5)
    scales = [d["coordinateTransformations"][0]["scale"] for d in meta["datasets"]]
    assert scales[0] == [1.0, 0.25, 0.25] and scales[1][1] == pytest.approx(0.5, rel=1e-3)
    assert [a["name"] for a in meta["axes"]] == ["c", "y", "x"] and meta["axes"][1]["unit"] == "micrometer"
    nodes = list(Reader(parse_url(str(tmp_path / "aligned.ome.zarr")))())
    assert len(nodes[0].data) == 5


def test_labels_levels_take_every_second_pixel_and_form_an_ngff_labels_group(tmp_path):
    labels = np.random.default_rng(5).integers(0, 50, (1, 600, 520)).astype(np.uint16)
    path = _write(tmp_path / "cells.ome.zarr", labels, [(0, 300, 0, 520), (300, 600, 0, 260), (300, 600, 260, 520)],
                  labels=True)
    levels, _ = _levels(path, "labels/cells")
    assert len(levels) == 4  # 520 // 8 = 65 >= 64
    for k, level in enumerate(levels):
        np.testing.assert_array_equal(level, labels[:, ::2 ** k, ::2 ** k])
    assert dict(zarr.open_group(path, mode="r")["labels"].attrs)["ome"]["labels"] == ["cells"]
    assert "image-label" in dict(zarr.open_group(path, mode="r")["labels/cells"].attrs)["ome"]


def test_integer_images_are_rounded_means(tmp_path):
    data = np.array([[[0, 1], [0, 0]]], np.uint8).repeat(64, axis=1).repeat(64, axis=2)  # 128x128, 2x2 blocks of 1
    data[0, 0, 1] = 255
    out = OmeZarrOutput(tmp_path / "u8.ome.zarr", data.shape, data.dtype, "cyx")
    out[...] = data
    out.close()
    levels, _ = _levels(tmp_path / "u8.ome.zarr")
    assert levels[1].dtype == np.uint8 and levels[1][0, 0, 0] == round((0 + 255 + 0 + 0) / 4)


def test_a_copy_in_another_process_refuses_writes_it_cannot_finish(tmp_path):
    data = np.ones((1, 512, 512), np.float32)
    out = OmeZarrOutput(tmp_path / "o.ome.zarr", data.shape, data.dtype, "cyx", chunks={"y": 256, "x": 256},
                        at=tmp_path / "journal")
    worker = pickle.loads(pickle.dumps(out))  # what a Dask worker gets
    worker[:, 0:256, 256:512] = data[:, :256, :256]  # whole chunks: its levels are written here
    with pytest.raises(RuntimeError, match="not aligned"):
        worker[:, 0:100, 0:100] = data[:, :100, :100]
    out.close()
    levels, _ = _levels(tmp_path / "o.ome.zarr")
    assert levels[1][0, :128, 128:].min() == 1 and levels[1][0, 128:, :].max() == 0


def test_level_count_stops_at_small_sides_and_at_chunks_that_do_not_halve():
    assert level_count("yx", (8192, 8192), (992, 992)) == 4  # 992 = 31 * 32
    assert level_count("yx", (8192, 8192), (1000, 1000)) == 3  # 1000 = 125 * 8
    assert level_count("yx", (200, 4000), (200, 512)) == 1  # the short side: 200 -> 100 -> 50 < 64
    assert level_count("cyx", (3, 100, 100), (1, 100, 100)) == 0
    assert level_count("zyx", (9, 1000, 1000), (9, 1000, 1000)) == 3  # one chunk per axis halves freely
    assert level_count("c", (5,), (1,)) == 0
