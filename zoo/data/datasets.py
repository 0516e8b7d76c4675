"""Patch datasets for segmentation, CARE and Noise2Void from folders of TIFFs (2D YX or 3D ZYX, one channel).

Why a fixed grid of candidate patches (stride = patch / 2, random jitter of +-stride / 2 when drawn): it lets us
count class pixels per candidate once, turn per-class pixel frequencies into per-patch sampling weights (rare classes
seen more often; torch.utils.data.WeightedRandomSampler takes them as they are), and down-weight empty patches
(foreground-aware sampling) without rejection loops. A patch is a pure function of (candidate index, seed): via
`sample_batch(generator)` every random number comes from the training loop's torch Generator (exact resume); via
`__getitem__` it comes from (dataset seed, epoch, index), so DataLoader workers cannot change the result.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, Optional, Sequence, Union

import numpy as np
import torch

from biozoo.runtime import TrainingError

from .augment import Augment
from .normalize import percentile_normalize

Task = Literal["segmentation", "care", "n2v"]
CLASSES = ("background", "foreground", "boundary")
log = logging.getLogger("biozoo")


def labels_to_classes(labels: np.ndarray, boundary_width: int = 1) -> np.ndarray:
    """Instance labels -> uint8 classes 0 background, 1 foreground (interior), 2 boundary.

    A boundary pixel belongs to an object and has, within `boundary_width` steps along any axis, a pixel of another
    label (background or a touching object): this is what separates touching nuclei after thresholding.
    """
    lab = np.asarray(labels)
    if lab.dtype.kind not in "iub":
        if not np.array_equal(lab, np.round(lab)):
            raise TrainingError(f"mask has dtype {lab.dtype} with fractional values; expected integer instance labels")
        lab = lab.astype(np.int64)
    interior = lab > 0
    for _ in range(max(0, boundary_width)):
        padded = np.pad(np.where(interior, lab, -1), 1, mode="edge")
        keep = interior.copy()
        center = tuple(slice(1, -1) for _ in range(lab.ndim))
        for ax in range(lab.ndim):
            for d in (-1, 1):
                sl = list(center)
                sl[ax] = slice(1 + d, padded.shape[ax] - 1 + d)
                keep &= padded[tuple(sl)] == lab
        interior = keep
    classes = np.zeros(lab.shape, np.uint8)
    classes[lab > 0] = 2
    classes[interior] = 1
    return classes


def _read(path: Path, ndim: int):
    import tifffile

    a = np.squeeze(np.asarray(tifffile.imread(path)))
    if a.ndim != ndim:
        raise TrainingError(f"{path} has shape {a.shape} ({a.ndim}D after dropping singleton axes); the patch size "
                            f"is {ndim}D: expected one grayscale {'(Y, X)' if ndim == 2 else '(Z, Y, X)'} image")
    return a


def _starts(size: int, patch: int, stride: int) -> list[int]:
    s = list(range(0, size - patch + 1, stride))
    return s + [size - patch] if s[-1] != size - patch else s


class PatchDataset(torch.utils.data.Dataset):
    """Random patches of normalized images with their targets.

    Items: segmentation -> (x float32 [1, *patch], y int64 [*patch] classes); care -> (x, y float32 [1, *patch]);
    n2v -> (x, x.clone()) (the blind-spot masking happens in training). `weighted=None` turns weighted sampling on
    when the class imbalance exceeds `auto_threshold` (10:1); `report` holds the class frequencies and what was chosen.
    """

    def __init__(self, images: Sequence[np.ndarray], targets: Optional[Sequence[np.ndarray]], task: Task,
                 patch_size: Sequence[int], augment: Optional[Augment] = Augment(), foreground_aware: bool = False,
                 weighted: Optional[bool] = None, seed: int = 0, names: Optional[Sequence[str]] = None,
                 auto_threshold: float = 10.0, empty_weight: float = 0.1, fg_threshold: float = 0.4) -> None:
        if task not in ("segmentation", "care", "n2v"):
            raise TrainingError(f"unknown task '{task}'; expected segmentation, care or n2v")
        if task != "n2v" and (targets is None or len(targets) != len(images)):
            raise TrainingError(f"task '{task}' needs one target per image; got {len(images)} images and "
                                f"{0 if targets is None else len(targets)} targets")
        self.task, self.patch, self.augment, self.seed, self.epoch = task, tuple(int(p) for p in patch_size), augment, seed, 0
        self.images = [np.asarray(a, np.float32) for a in images]
        self.targets = [np.asarray(t) for t in targets] if targets is not None and task != "n2v" else None
        self.names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
        self._check_shapes()
        fg_maps = [(t > 0) if task == "segmentation" else (t >= fg_threshold) for t in
                   (self.targets if self.targets is not None else self.images)]
        self.candidates: list[tuple[int, tuple[int, ...]]] = []
        counts, fg = [], []
        for i, img in enumerate(self.images):
            grids = np.meshgrid(*[_starts(s, p, max(1, p // 2)) for s, p in zip(img.shape, self.patch)], indexing="ij")
            for start in zip(*(g.ravel() for g in grids)):
                sl = tuple(slice(s, s + p) for s, p in zip(start, self.patch))
                self.candidates.append((i, tuple(int(s) for s in start)))
                fg.append(float(fg_maps[i][sl].mean()))
                if task == "segmentation":
                    counts.append(np.bincount(self.targets[i][sl].ravel(), minlength=len(CLASSES))[:len(CLASSES)])
        weights = np.ones(len(self.candidates))
        report: dict = {"task": task, "images": len(self.images), "candidates": len(self.candidates),
                        "patch_size": list(self.patch), "foreground_aware": foreground_aware}
        if task == "segmentation":
            totals = sum(np.bincount(t.ravel(), minlength=len(CLASSES))[:len(CLASSES)] for t in self.targets)
            freq = totals / totals.sum()
            present = freq[freq > 0]
            imbalance = float(present.max() / present.min())
            use = imbalance > auto_threshold if weighted is None else bool(weighted)
            if use:
                inv = np.where(freq > 0, 1.0 / np.maximum(freq, 1e-12), 0.0)
                weights = (np.stack(counts) * inv).sum(1) / np.prod(self.patch)
            report.update(class_frequencies={c: float(f) for c, f in zip(CLASSES, freq)}, imbalance=imbalance,
                          weighted=use, weighted_reason="requested" if weighted is not None else
                          f"auto: imbalance {imbalance:.1f}:1 {'>' if use else '<='} {auto_threshold:g}:1")
        elif weighted:
            raise TrainingError(f"weighted sampling needs class labels; task '{task}' has none: turn it off")
        else:
            report["weighted"] = False
        if foreground_aware:
            empty = np.array(fg) < 0.01
            if not empty.all():
                weights = np.where(empty, weights * empty_weight, weights)
            report["empty_candidates"] = int(empty.sum())
        self.weights = torch.as_tensor(weights / weights.sum(), dtype=torch.float64)
        report["expected_class_frequencies_in_patches"] = self._expected(counts) if counts else None
        self.report = report
        log.info("data: %s", {k: v for k, v in report.items() if k != "expected_class_frequencies_in_patches"})

    def _check_shapes(self) -> None:
        for i, img in enumerate(self.images):
            if img.ndim != len(self.patch):
                raise TrainingError(f"{self.names[i]} has shape {img.shape} but the patch size {self.patch} is "
                                    f"{len(self.patch)}D; use a {img.ndim}D patch size")
            if any(p > s for p, s in zip(self.patch, img.shape)):
                raise TrainingError(f"{self.names[i]} is {'x'.join(map(str, img.shape))}, smaller than the patch size "
                                    f"{'x'.join(map(str, self.patch))}; lower data.patch_size or use larger tiles")
            if self.targets is not None and self.targets[i].shape != img.shape:
                raise TrainingError(f"{self.names[i]}: target shape {self.targets[i].shape} != image shape {img.shape}")

    def _expected(self, counts: list[np.ndarray]) -> dict[str, float]:
        """Class frequencies a sampler with `self.weights` shows the network (before jitter): the effect of weighting."""
        c = (np.stack(counts) * self.weights.numpy()[:, None]).sum(0)
        return {name: float(v) for name, v in zip(CLASSES, c / c.sum())}

    def __len__(self) -> int:
        return len(self.candidates)

    def set_epoch(self, epoch: int) -> None:
        """Vary the jitter/augmentation of `__getitem__` per epoch (same as DistributedSampler.set_epoch)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.patch_at(index, np.random.default_rng([self.seed, self.epoch, int(index)]))

    def patch_at(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        i, start = self.candidates[index]
        img = self.images[i]
        pos = []
        for s, p, size in zip(start, self.patch, img.shape):
            half = max(1, p // 2) // 2
            pos.append(int(np.clip(s + rng.integers(-half, half + 1), 0, size - p)))
        sl = tuple(slice(s, s + p) for s, p in zip(pos, self.patch))
        x = img[sl]
        y = self.targets[i][sl] if self.targets is not None else None
        if self.augment is not None:
            x, y = self.augment(rng, x, y, jitter_target=self.task == "care")
        xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))[None]
        if self.task == "segmentation":
            return xt, torch.from_numpy(np.ascontiguousarray(y)).long()
        if self.task == "care":
            return xt, torch.from_numpy(np.ascontiguousarray(y, np.float32))[None]
        return xt, xt.clone()

    def sampler(self, num_samples: int, generator: Optional[torch.Generator] = None
                ) -> torch.utils.data.WeightedRandomSampler:
        return torch.utils.data.WeightedRandomSampler(self.weights, num_samples, replacement=True, generator=generator)

    def sample_batch(self, generator: torch.Generator, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch [B, 1, *patch] drawn with `self.weights`, every random number from `generator`."""
        idx = torch.multinomial(self.weights, batch_size, replacement=True, generator=generator)
        seeds = torch.randint(0, 2**62, (batch_size,), generator=generator)
        items = [self.patch_at(int(i), np.random.default_rng(int(s))) for i, s in zip(idx, seeds)]
        return torch.stack([a for a, _ in items]), torch.stack([b for _, b in items])


def load_folder(data_dir: Union[str, Path], names: Sequence[str], task: Task, ndim: int = 2,
                percentiles: tuple[float, float] = (1.0, 99.8), boundary_width: int = 1
                ) -> tuple[list[np.ndarray], Optional[list[np.ndarray]], list[tuple[float, float]]]:
    """Read `images/<name>` (+ `masks/` or `targets/`), normalize each image; return (images, targets, percentiles).

    Segmentation masks become classes (labels_to_classes); CARE targets get the same affine transform as their
    input image, so that PSNRs of the input, of the prediction and of a baseline are all measured on one scale.
    """
    root = Path(data_dir)
    sub = {"segmentation": "masks", "care": "targets", "n2v": None}[task]
    if sub and not (root / sub).is_dir():
        raise TrainingError(f"task '{task}' needs {root / sub}/ with one file per image (same names as images/)")
    images, targets, used = [], [] if sub else None, []
    for n in names:
        x, p = percentile_normalize(_read(root / "images" / n, ndim), *percentiles)
        images.append(x)
        used.append(p)
        if sub == "masks":
            targets.append(labels_to_classes(_read(root / sub / n, ndim), boundary_width))
        elif sub == "targets":  # the input's transform: prediction, input and target share one intensity scale
            lo, hi = p
            targets.append(((_read(root / sub / n, ndim).astype(np.float32) - lo) / (hi - lo + 1e-6)).astype(np.float32))
    return images, targets, used


def folder_dataset(data_dir: Union[str, Path], names: Sequence[str], task: Task, patch_size: Sequence[int],
                   percentiles: tuple[float, float] = (1.0, 99.8), **kwargs) -> PatchDataset:
    """`PatchDataset` over the files `names` (usually one part of a Split) of a data folder."""
    images, targets, used = load_folder(data_dir, names, task, len(patch_size), percentiles)
    ds = PatchDataset(images, targets, task, patch_size, names=list(names), **kwargs)
    ds.report["percentiles"] = {n: list(p) for n, p in zip(names, used)}
    return ds
