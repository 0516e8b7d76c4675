"""biozoo.zoo.data: splits (reuse, leakage detection), tiles, normalization, patch datasets, weighting, noise.

Data folders are real TIFF files written with tifffile into tmp_path; pixel content is synthetic."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from biozoo.runtime import InputError, TrainingError
from biozoo.zoo.data import (Augment, PatchDataset, add_poisson_gaussian, folder_dataset, labels_to_classes,
                             make_noisy_pairs, make_or_load_split, percentile_normalize, tile_dataset)


def _blobs(shape, n, rng, radius=6):
    """Instance labels: n discs (2D) or balls (3D) at random places."""
    lab = np.zeros(shape, np.uint16)
    grid = np.indices(shape)
    for k in range(1, n + 1):
        c = [rng.integers(radius, s - radius) for s in shape]
        lab[sum((g - ci) ** 2 for g, ci in zip(grid, c)) <= radius**2] = k
    return lab


def _folder(root: Path, n=10, shape=(64, 64), seed=0, blobs=8) -> Path:
    rng = np.random.default_rng(seed)
    for f in ("images", "masks"):
        (root / f).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        lab = _blobs(shape, blobs, rng)
        img = (100 + 400 * (lab > 0) + rng.normal(0, 20, shape)).astype(np.uint16)
        tifffile.imwrite(root / "images" / f"im{i:02d}.tif", img)
        tifffile.imwrite(root / "masks" / f"im{i:02d}.tif", lab)
    return root


def _rewrite_manifest(path: Path, edit) -> None:
    """Edit split.json AND fix its checksum, like a careful tamperer: the assignment check must still catch it."""
    import hashlib

    from biozoo.zoo.data.split import _canonical

    rec = json.loads(path.read_text())
    edit(rec)
    body = {k: v for k, v in rec.items() if k != "checksum"}
    rec["checksum"] = hashlib.sha256(_canonical(body)).hexdigest()
    path.write_text(json.dumps(rec))


# ---------------------------------------------------------------- split
def test_split_made_once_and_reused(tmp_path):
    d = _folder(tmp_path / "d", n=20)
    s1 = make_or_load_split(d)
    text = (d / "split.json").read_text()
    assert (len(s1.train), len(s1.val), len(s1.test)) == (14, 3, 3)
    assert not set(s1.train) & set(s1.test) and not set(s1.val) & set(s1.test)
    s2 = make_or_load_split(d)
    assert s2 == s1 and (d / "split.json").read_text() == text and len(s1.manifest_hash) == 64
    assert s1.paths("test", "masks")[0].parent == d / "masks"


def test_split_is_deterministic_and_seeded(tmp_path):
    a, b = _folder(tmp_path / "a"), _folder(tmp_path / "b")
    assert make_or_load_split(a).test == make_or_load_split(b).test
    c = _folder(tmp_path / "c")
    assert make_or_load_split(c, seed=5).manifest_hash != make_or_load_split(a).manifest_hash


def test_split_never_remade_silently(tmp_path):
    d = _folder(tmp_path / "d")
    make_or_load_split(d)
    with pytest.raises(TrainingError, match="fractions .* delete .*split.json"):
        make_or_load_split(d, fractions=(0.8, 0.1, 0.1))
    with pytest.raises(TrainingError, match="seed 0, you asked for 3"):
        make_or_load_split(d, seed=3)


def test_file_moved_from_test_to_train_is_detected(tmp_path):
    d = _folder(tmp_path / "d")
    name = make_or_load_split(d).test[0]

    def move(rec):
        rec["parts"]["train"][name] = rec["parts"]["test"].pop(name)

    _rewrite_manifest(d / "split.json", move)
    with pytest.raises(TrainingError, match=f"'{name}' is in 'train'.*moved between parts"):
        make_or_load_split(d)


def test_hand_edit_and_file_in_two_parts_are_detected(tmp_path):
    d = _folder(tmp_path / "d")
    name = make_or_load_split(d).test[0]
    good = (d / "split.json").read_text()
    rec = json.loads(good)
    rec["parts"]["train"][name] = rec["parts"]["test"][name]
    (d / "split.json").write_text(json.dumps(rec))
    with pytest.raises(TrainingError, match="edited after it was written"):
        make_or_load_split(d)
    _rewrite_manifest(d / "split.json", lambda r: r["parts"]["train"].update({name: r["parts"]["test"][name]}))
    with pytest.raises(TrainingError, match=f"'{name}' is listed in both"):
        make_or_load_split(d)


def test_edited_file_is_detected(tmp_path):
    d = _folder(tmp_path / "d")
    name = make_or_load_split(d).test[0]
    img = tifffile.imread(d / "masks" / name)
    img[0, 0] += 1
    tifffile.imwrite(d / "masks" / name, img)
    with pytest.raises(TrainingError, match=f"{name} \\(test part\\) changed since the split"):
        make_or_load_split(d)


def test_new_renamed_and_missing_files_are_detected(tmp_path):
    d = _folder(tmp_path / "d")
    name = make_or_load_split(d).test[0]
    for f in ("images", "masks"):
        shutil.copy(d / f / name, d / f / "zz_copy.tif")
    with pytest.raises(TrainingError, match=f"'zz_copy.tif' .* not in .*same content as '{name}' in the test part"):
        make_or_load_split(d)
    for f in ("images", "masks"):
        (d / f / "zz_copy.tif").unlink()
        (d / f / name).unlink()
    with pytest.raises(TrainingError, match=f"'{name}' \\(test part .* is missing"):
        make_or_load_split(d)


def test_identical_images_share_a_part(tmp_path):
    d = _folder(tmp_path / "d", n=12)
    for f in ("images", "masks"):
        for i in range(4):
            shutil.copy(d / f / "im00.tif", d / f / f"dup{i}.tif")
    s = make_or_load_split(d)
    part = [p for p in ("train", "val", "test") if "im00.tif" in s.part(p)][0]
    assert all(f"dup{i}.tif" in s.part(part) for i in range(4))


def test_too_few_files_and_missing_partner(tmp_path):
    d = _folder(tmp_path / "d", n=2)
    with pytest.raises(TrainingError, match="only 2 file.*tile"):
        make_or_load_split(d)
    (d / "masks" / "im00.tif").unlink()
    with pytest.raises(TrainingError, match="missing \\['im00.tif'\\]"):
        make_or_load_split(d)


# ---------------------------------------------------------------- tiles
def test_tiles_are_disjoint_and_cover_the_image(tmp_path):
    src = _folder(tmp_path / "src", n=1, shape=(100, 130))
    dst = tile_dataset(src, tmp_path / "tiles", tile=32)
    names = sorted(p.name for p in (dst / "images").iterdir())
    assert len(names) == 3 * 4 and sorted(p.name for p in (dst / "masks").iterdir()) == names
    img = tifffile.imread(src / "images" / "im00.tif")
    mosaic = np.zeros((96, 128), img.dtype)
    seen = np.zeros((96, 128), int)
    for n in names:
        iy, ix = int(n[-10:-8]), int(n[-6:-4])
        mosaic[iy * 32:(iy + 1) * 32, ix * 32:(ix + 1) * 32] = tifffile.imread(dst / "images" / n)
        seen[iy * 32:(iy + 1) * 32, ix * 32:(ix + 1) * 32] += 1
    assert (seen == 1).all() and np.array_equal(mosaic, img[:96, :128])  # every pixel in exactly one tile
    info = json.loads((dst / "tiles.json").read_text())
    assert info["dropped_remainder_yx"]["im00.tif"] == [4, 2]
    assert tile_dataset(src, dst, tile=32) == dst  # idempotent
    with pytest.raises(TrainingError, match="other source files or another tile size"):
        tile_dataset(src, dst, tile=16)
    s = make_or_load_split(dst)  # tiles can be split: test pixels never seen in training
    assert len(s.train) + len(s.val) + len(s.test) == 12


def test_tiles_3d(tmp_path):
    d = tmp_path / "v"
    for f in ("images", "masks"):
        (d / f).mkdir(parents=True)
        tifffile.imwrite(d / f / "vol.tif", np.arange(4 * 64 * 64, dtype=np.uint16).reshape(4, 64, 64))
    dst = tile_dataset(d, tmp_path / "t", tile=32)
    assert tifffile.imread(dst / "images" / "vol_y01_x00.tif").shape == (4, 32, 32)


# ---------------------------------------------------------------- normalization, classes
def test_percentile_normalize():
    x = np.linspace(0, 1000, 10000).reshape(100, 100)
    y, (lo, hi) = percentile_normalize(x)
    assert y.dtype == np.float32 and lo == pytest.approx(10) and hi == pytest.approx(998)
    assert np.percentile(y, 1) == pytest.approx(0, abs=1e-5) and np.percentile(y, 99.8) == pytest.approx(1, abs=1e-5)
    flat, _ = percentile_normalize(np.full((8, 8), 7.0))
    assert np.isfinite(flat).all()
    assert percentile_normalize(x, clip=True)[0].max() == 1
    with pytest.raises(InputError, match="low < high"):
        percentile_normalize(x, 99, 1)
    with pytest.raises(InputError, match="NaN"):
        percentile_normalize(np.array([1.0, np.nan]))


def test_labels_to_classes_separates_touching_objects():
    lab = np.zeros((8, 12), np.uint16)
    lab[1:7, 1:6], lab[1:7, 6:11] = 1, 2
    c = labels_to_classes(lab)
    assert c[0].max() == 0 and c[3, 5] == 2 and c[3, 6] == 2 and c[3, 3] == 1 and c[1, 3] == 2
    assert set(np.unique(labels_to_classes(np.pad(lab, 1)[None].repeat(5, 0)))) == {0, 1, 2}  # 3D too


# ---------------------------------------------------------------- datasets
def test_patch_shapes_2d_3d_and_tasks(tmp_path):
    d = _folder(tmp_path / "d", n=3)
    names = sorted(p.name for p in (d / "images").iterdir())
    ds = folder_dataset(d, names, "segmentation", (32, 32), augment=Augment())
    x, y = ds[0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and y.shape == (32, 32) and y.dtype == torch.int64
    xb, yb = ds.sample_batch(torch.Generator().manual_seed(0), 4)
    assert xb.shape == (4, 1, 32, 32) and yb.shape == (4, 32, 32)
    assert set(ds.report["percentiles"]) == set(names)
    n2v = folder_dataset(d, names, "n2v", (32, 32))
    x, y = n2v[1]
    assert torch.equal(x, y)
    rng = np.random.default_rng(1)
    vol = rng.random((12, 40, 40)).astype(np.float32)
    ds3 = PatchDataset([vol], [vol * 2], "care", (8, 16, 16))
    x, y = ds3[0]
    assert x.shape == y.shape == (1, 8, 16, 16)
    with pytest.raises(TrainingError, match="smaller than the patch size"):
        PatchDataset([vol], [vol], "care", (16, 16, 16))
    with pytest.raises(TrainingError, match="3D patch size"):
        PatchDataset([vol], [vol], "care", (16, 16))


def test_patches_reproducible_and_epoch_dependent():
    rng = np.random.default_rng(0)
    img = rng.random((64, 64)).astype(np.float32)
    ds = PatchDataset([img], [labels_to_classes(_blobs((64, 64), 5, rng))], "segmentation", (32, 32))
    a, b = ds[3], ds[3]
    assert torch.equal(a[0], b[0])
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(ds.sample_batch(g1, 3)[0], ds.sample_batch(g2, 3)[0])
    ds.set_epoch(1)
    assert not torch.equal(ds[3][0], a[0])


def test_augmentation_keeps_image_and_mask_aligned():
    """The image is a function of the mask (x = 10 * class + k); after any augmentation that relation must hold."""
    rng = np.random.default_rng(0)
    cls = labels_to_classes(_blobs((48, 48), 6, rng))
    ds = PatchDataset([cls.astype(np.float32) * 10], [cls], "segmentation", (32, 32),
                      augment=Augment(intensity=0.0), weighted=False)
    geometric = 0
    for i in range(len(ds)):
        for epoch in range(4):
            ds.set_epoch(epoch)
            x, y = ds[i]
            assert torch.equal(x[0], y.float() * 10)
            geometric += int(not torch.equal(x, ds.patch_at(i, np.random.default_rng(0))[0]))
    assert geometric > 0
    x, y = PatchDataset([cls.astype(np.float32) * 10], [cls], "segmentation", (32, 32),
                        augment=Augment(intensity=0.5), weighted=False)[0]
    assert not torch.equal(x[0], y.float() * 10)  # intensity jitter touches the image only...
    assert set(torch.unique(y).tolist()) <= {0, 1, 2}  # ...never the classes


def test_care_jitter_applies_to_both():
    img = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    x, y = PatchDataset([img], [img.copy()], "care", (16, 16), augment=Augment(intensity=0.5))[2]
    assert torch.allclose(x, y)


def test_weighted_sampling_raises_rare_class_frequency():
    rng = np.random.default_rng(0)
    lab = np.zeros((256, 256), np.uint16)
    lab[20:28, 20:28], lab[200:210, 150:160] = 1, 2  # ~0.25% foreground: > 10:1 imbalance
    cls = labels_to_classes(lab)
    img = rng.random(cls.shape).astype(np.float32)
    auto = PatchDataset([img], [cls], "segmentation", (32, 32), augment=None, seed=0)
    off = PatchDataset([img], [cls], "segmentation", (32, 32), augment=None, weighted=False)
    assert auto.report["weighted"] and auto.report["imbalance"] > 10 and "auto" in auto.report["weighted_reason"]
    assert sum(auto.report["class_frequencies"].values()) == pytest.approx(1)

    def drawn_fg(ds):
        _, y = ds.sample_batch(torch.Generator().manual_seed(0), 400)
        return float((y > 0).float().mean())

    assert drawn_fg(auto) > 5 * drawn_fg(off)
    assert auto.report["expected_class_frequencies_in_patches"]["boundary"] > \
        5 * off.report["expected_class_frequencies_in_patches"]["boundary"]
    sampler = auto.sampler(10, torch.Generator().manual_seed(0))
    assert isinstance(sampler, torch.utils.data.WeightedRandomSampler) and len(list(sampler)) == 10
    balanced = np.zeros((64, 64), np.uint8)
    balanced[:, 32:] = 1
    assert not PatchDataset([img[:64, :64]], [balanced], "segmentation", (32, 32)).report["weighted"]


def test_foreground_aware_downweights_empty_patches():
    img = np.zeros((128, 128), np.float32)
    img[:32, :32] = 1.0
    plain = PatchDataset([img], [img], "care", (32, 32))
    aware = PatchDataset([img], [img], "care", (32, 32), foreground_aware=True)
    fg = lambda ds: float((ds.sample_batch(torch.Generator().manual_seed(1), 200)[1] > 0.5).float().mean())  # noqa
    assert aware.report["empty_candidates"] > 0 and fg(aware) > 2 * fg(plain)
    with pytest.raises(TrainingError, match="needs class labels"):
        PatchDataset([img], [img], "care", (32, 32), weighted=True)


# ---------------------------------------------------------------- noise
def test_noise_reproducible_and_right_variance():
    clean = np.full((200, 200), 0.5)
    a = add_poisson_gaussian(clean, gain=0.01, sigma=0.05, seed=3, key="a.tif")
    assert np.array_equal(a, add_poisson_gaussian(clean, gain=0.01, sigma=0.05, seed=3, key="a.tif"))
    assert not np.array_equal(a, add_poisson_gaussian(clean, gain=0.01, sigma=0.05, seed=4, key="a.tif"))
    assert not np.array_equal(a, add_poisson_gaussian(clean, gain=0.01, sigma=0.05, seed=3, key="b.tif"))
    assert a.dtype == np.float32 and a.mean() == pytest.approx(0.5, abs=0.005)
    assert a.var() == pytest.approx(0.01 * 0.5 + 0.05**2, rel=0.05)  # gain * x + sigma^2
    with pytest.raises(InputError):
        add_poisson_gaussian(clean, gain=-1)


def test_noisy_pairs_folder(tmp_path):
    src = _folder(tmp_path / "src", n=4)
    dst = make_noisy_pairs(src, tmp_path / "pairs", gain=0.05, sigma=0.02, seed=0)
    clean = tifffile.imread(dst / "targets" / "im00.tif")
    noisy = tifffile.imread(dst / "images" / "im00.tif")
    assert clean.min() >= 0 and clean.max() <= 1 and not np.array_equal(clean, noisy)
    assert json.loads((dst / "noise.json").read_text())["kind"] == "semi-synthetic"
    again = make_noisy_pairs(src, tmp_path / "pairs2", gain=0.05, sigma=0.02, seed=0)
    assert np.array_equal(tifffile.imread(again / "images" / "im00.tif"), noisy)
    assert make_noisy_pairs(src, dst, gain=0.05, sigma=0.02, seed=0) == dst
    with pytest.raises(InputError, match="other settings"):
        make_noisy_pairs(src, dst, gain=0.1, sigma=0.02, seed=0)
    s = make_or_load_split(dst)  # pairs are a normal data folder (images/ + targets/)
    assert s.folders == ("images", "targets")
    ds = folder_dataset(dst, s.train, "care", (32, 32))
    assert ds[0][1].shape == (1, 32, 32)
