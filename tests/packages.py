"""Small but real bioimage.io model packages (format 0.5.12, ONNX weights) used as test fixtures.

    build_package(kind, dest, zip=False) -> path of dest/<kind>/rdf.yaml or of dest/<kind>.zip
    python -m tests.packages OUTDIR [KIND ...]

The expected test outputs are computed independently of biozoo: pre-/postprocessing in plain numpy
following the spec (and bioimageio.core's implementation), inference with onnxruntime on CPU.
Every package validates with bioimageio.spec and passes bioimageio.core's ``test_model``
(see tests/test_fixture_packages.py).
"""

from __future__ import annotations

import hashlib
import pathlib
import shutil
import sys
import zipfile
from typing import Any

import numpy as np
import onnxruntime as ort
import yaml
from PIL import Image

from tests import _onnx_graphs as graphs

FORMAT_VERSION = "0.5.12"  # bioimageio.spec.model.v0_5.ModelDescr.implemented_format_version
KINDS: tuple[str, ...] = ("unet2d", "fixed", "multi_io", "softmax3", "dataset_stats", "nobatch",
                          "unet3d", "scaled", "tf_and_onnx", "output_stats")
# weight formats bioimageio.core's test_model can run for each kind (others hold dummy files)
TESTABLE_WEIGHT_FORMAT: dict[str, str | None] = {k: None for k in KINDS} | {"tf_and_onnx": "onnx"}
# kinds that are valid bioimage.io packages but that bioimageio.core 0.11's test_model cannot run
CORE_CANNOT_TEST: dict[str, str] = {
    "output_stats": "core 0.11 computes all statistics before preprocessing, so postprocessing that needs "
                    "statistics of an output tensor itself fails with KeyError '<output id>'",
}

CITE = [{"text": "Ronneberger, Fischer, Brox: U-Net (MICCAI 2015)", "doi": "10.1007/978-3-319-24574-4_28"}]

# ---------------------------------------------------------------- axes helpers
BATCH: dict[str, Any] = {"type": "batch"}


def chan(*names: str) -> dict:
    return {"type": "channel", "channel_names": list(names)}


def space(axis_id: str, size: Any, **extra: Any) -> dict:
    return {"type": "space", "id": axis_id, "size": size, **extra}


def param(min_: int, step: int) -> dict:
    return {"min": min_, "step": step}


def ref(tensor_id: str, axis_id: str, offset: int = 0) -> dict:
    return {"tensor_id": tensor_id, "axis_id": axis_id} | ({"offset": offset} if offset else {})


def axis_ids(axes: list[dict]) -> list[str]:
    return [a.get("id", a["type"]) for a in axes]


# ---------------------------------------------------------------- numpy reference processing
def _red(ids: list[str], axes: list[str] | None) -> tuple[int, ...]:
    return tuple(range(len(ids))) if axes is None else tuple(ids.index(a) for a in axes)


def _along(ids: list[str], axis: str, values: Any) -> np.ndarray:
    shape = [1] * len(ids)
    shape[ids.index(axis)] = -1
    return np.asarray(values, dtype=np.float64).reshape(shape)


def _quantile(x: np.ndarray, q: float, ax: tuple[int, ...], method: str) -> np.ndarray:
    return np.quantile(x.astype(np.float64), q, axis=ax, method=method, keepdims=True)


def apply_ops(x: np.ndarray, ids: list[str], ops: list[dict], raw: dict[str, np.ndarray]) -> np.ndarray:
    """Apply bioimage.io 0.5 processing steps `ops` to `x` (axes `ids`); `raw`: unprocessed inputs."""
    for op in ops:
        kw = op.get("kwargs", {})
        name, eps = op["id"], kw.get("eps", 1e-6)
        y = x.astype(np.float64) if x.dtype != bool else x
        if name == "ensure_dtype":
            x = x.astype(kw["dtype"])
            continue
        if name == "scale_linear":
            gain, off = kw.get("gain", 1.0), kw.get("offset", 0.0)
            if "axis" in kw:
                gain, off = _along(ids, kw["axis"], gain), _along(ids, kw["axis"], off)
            y = y * gain + off
        elif name in ("zero_mean_unit_variance", "scale_mean_variance"):
            ax = _red(ids, kw.get("axes"))
            y = (y - y.mean(ax, keepdims=True)) / (y.std(ax, keepdims=True) + eps)
            if name == "scale_mean_variance":
                r = raw[kw["reference_tensor"]].astype(np.float64)
                y = y * (r.std(ax, keepdims=True) + eps) + r.mean(ax, keepdims=True)
        elif name == "fixed_zero_mean_unit_variance":
            mean, std = kw["mean"], kw["std"]
            if "axis" in kw:
                mean, std = _along(ids, kw["axis"], mean), _along(ids, kw["axis"], std)
            y = (y - mean) / (std + 1e-6)
        elif name == "scale_range":
            r = raw[kw["reference_tensor"]] if kw.get("reference_tensor") else x
            ax = _red(ids, kw.get("axes"))
            lo = _quantile(r, kw.get("min_percentile", 0.0) / 100, ax, "linear")
            hi = _quantile(r, kw.get("max_percentile", 100.0) / 100, ax, "linear")
            y = (y - lo) / (hi - lo + eps)
        elif name == "clip":
            axes = kw.get("axes")
            # core: per-sample percentiles use method "inverted_cdf", dataset percentiles "linear"
            method = "linear" if axes is None or "batch" in axes else "inverted_cdf"
            ax = _red(ids, axes)
            lo = _quantile(x, kw["min_percentile"] / 100, ax, method) if "min_percentile" in kw else kw.get("min")
            hi = _quantile(x, kw["max_percentile"] / 100, ax, method) if "max_percentile" in kw else kw.get("max")
            y = np.clip(y, lo, hi)
        elif name == "sigmoid":
            y = 1.0 / (1.0 + np.exp(-y))
        elif name == "softmax":
            e = np.exp(y - y.max(axis=ids.index(kw.get("axis", "channel")), keepdims=True))
            y = e / e.sum(axis=ids.index(kw.get("axis", "channel")), keepdims=True)
        elif name == "stardist_postprocessing":  # stardist's own NMS and rendering: the reference
            from stardist.geometry import polygons_to_label
            from stardist.nms import non_maximum_suppression

            assert ids == ["batch", "y", "x", "channel"]
            grid, out = tuple(kw["grid"]), []
            for m in x.astype(np.float32):  # the test tensors' sizes are multiples of the grid
                points, scores, dist = non_maximum_suppression(m[..., 1:], m[..., 0], grid=grid, b=kw["b"],
                                                               nms_thresh=kw["nms_threshold"],
                                                               prob_thresh=kw["prob_threshold"])
                out.append(polygons_to_label(dist, points, (m.shape[0] * grid[0], m.shape[1] * grid[1]),
                                             prob=scores))
            x = np.stack(out)[..., None].astype(np.int32)
            continue
        elif name == "binarize":
            thr = _along(ids, kw["axis"], kw["threshold"]) if "axis" in kw else kw["threshold"]
            x = y > thr
            continue
        else:
            raise NotImplementedError(name)
        x = y.astype(np.float32)
    return x


# ---------------------------------------------------------------- the kinds
def _img(rng: np.random.Generator, shape: tuple[int, ...], lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """Random test image: uniform noise plus a ramp along the last axis, scaled to [lo, hi]."""
    ramp = np.linspace(0.0, 0.5, shape[-1])
    x = rng.uniform(0.0, 0.5, shape) + ramp
    return (lo + (hi - lo) * x).astype(np.float32)


def _inp(tid: str, axes: list, data: np.ndarray, pre: list | None = None, **extra: Any) -> dict:
    return {"id": tid, "axes": axes, "array": data, "preprocessing": pre or [], **extra}


def _out(tid: str, axes: list, post: list | None = None, **extra: Any) -> dict:
    return {"id": tid, "axes": axes, "postprocessing": post or [], **extra}


def _kind(kind: str) -> dict[str, Any]:
    rng = np.random.default_rng(sum(map(ord, kind)))
    yx = lambda size, **e: [space("y", size, **e), space("x", size, **e)]  # noqa: E731
    yx_ref = lambda t, halo=0, **e: [space(a, ref(t, a), **({"halo": halo} if halo else {}), **e)  # noqa: E731
                                     for a in ("y", "x")]
    if kind in ("unet2d", "unet2d_wide"):  # unet2d_wide (32 channels): for benchmarks, not in KINDS
        return dict(
            name=f"biozoo test {kind}", onnx=graphs.unet2d(width=8 if kind == "unet2d" else 32),
            description="2D U-Net with skip connections, per-sample normalization, sigmoid, halo 16.",
            inputs=[_inp("raw", [BATCH, chan("raw"), *yx(param(40, 8))], _img(rng, (1, 1, 64, 64), 10, 200),
                         [{"id": "zero_mean_unit_variance", "kwargs": {"axes": ["channel", "y", "x"]}}])],
            # receptive-field radius of the net is 13 px (measured); halo 16 keeps the stride-4 grid aligned
            outputs=[_out("prob", [BATCH, chan("foreground"), *yx_ref("raw", 16)], [{"id": "sigmoid"}])])
    if kind in ("fixed", "tf_and_onnx"):
        return dict(
            name=f"biozoo test {kind}", onnx=graphs.single_conv(1, [1, 1, 64, 64]),
            description="Fixed 1x1x64x64 input, 3x3 conv, scale_linear pre, clip post"
            + (" (with dummy torchscript and tensorflow weights that must be ignored)." if kind != "fixed" else "."),
            inputs=[_inp("raw", [{"type": "batch", "size": 1}, chan("raw"), *yx(64)], _img(rng, (1, 1, 64, 64)),
                         [{"id": "scale_linear", "kwargs": {"gain": 2.0, "offset": -1.0}}])],
            outputs=[_out("out", [{"type": "batch", "size": 1}, chan("out"), *yx(64)],
                          [{"id": "clip", "kwargs": {"min": 0.0, "max": 5.0}}])])
    if kind == "multi_io":
        return dict(
            name="biozoo test multi io", onnx=graphs.multi_io(),
            description="Two inputs (b sized by a), two outputs: sum=conv(a)+b, prod=a*b (binarized).",
            inputs=[_inp("a", [BATCH, chan("a"), *yx(param(8, 4))], _img(rng, (1, 1, 48, 48), -2, 6),
                         [{"id": "scale_range", "kwargs": {"axes": ["channel", "y", "x"], "min_percentile": 1.0,
                                                           "max_percentile": 99.8}}]),
                    _inp("b", [BATCH, chan("b"), *yx_ref("a")], _img(rng, (1, 1, 48, 48)),
                         [{"id": "fixed_zero_mean_unit_variance",
                           "kwargs": {"axis": "channel", "mean": [0.5], "std": [0.2]}}])],
            outputs=[_out("sum", [BATCH, chan("sum"), *yx_ref("a")],
                          [{"id": "scale_range", "kwargs": {"reference_tensor": "a", "axes": ["channel", "y", "x"],
                                                            "max_percentile": 99.0}}]),
                     _out("prod", [BATCH, chan("prod"), *yx_ref("a")],
                          [{"id": "binarize", "kwargs": {"threshold": 0.5}}],
                          data={"type": "bool", "values": [False, True]})])
    if kind == "softmax3":
        return dict(
            name="biozoo test softmax3", onnx=graphs.single_conv(4, ["batch", 2, "y", "x"], out="probs", k=1,
                                                                 cin=2, cout=3),
            description="2 channels in, 1x1 conv to 3 classes, percentile clip + per-channel scale_linear, softmax.",
            inputs=[_inp("raw", [BATCH, chan("nuclei", "membrane"), *yx(param(8, 1))],
                         _img(rng, (1, 2, 40, 40), -5, 5),
                         [{"id": "clip", "kwargs": {"min_percentile": 1.0, "max_percentile": 99.0, "axes": ["y", "x"]}},
                          {"id": "scale_linear", "kwargs": {"axis": "channel", "gain": [1.0, 2.0], "offset": [0.0, 1.0]}},
                          {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}])],
            outputs=[_out("probs", [BATCH, chan("background", "foreground", "boundary"), *yx_ref("raw")],
                          [{"id": "softmax", "kwargs": {"axis": "channel"}},
                           {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}])])
    if kind == "dataset_stats":
        data = np.concatenate([_img(rng, (1, 1, 32, 32), 0, 2), _img(rng, (1, 1, 32, 32), 1, 6)])
        return dict(
            name="biozoo test dataset stats", onnx=graphs.single_conv(6, ["batch", 1, "y", "x"], hidden=4),
            description="Dataset statistics (axes incl. batch) for input normalization and output scale_range "
                        "(percentiles of the raw input); test tensor has batch 2.",
            inputs=[_inp("raw", [BATCH, chan("raw"), *yx(param(16, 8))], data,
                         [{"id": "zero_mean_unit_variance", "kwargs": {"axes": ["batch", "channel", "y", "x"]}}])],
            outputs=[_out("out", [BATCH, chan("out"), *yx_ref("raw")],
                          [{"id": "scale_range", "kwargs": {"axes": ["batch", "channel", "y", "x"],
                                                            "min_percentile": 5.0, "max_percentile": 95.0,
                                                            "reference_tensor": "raw"}}])])
    if kind == "nobatch":
        return dict(
            name="biozoo test nobatch", onnx=graphs.nobatch(),
            description="Input without batch axis (channel, y, x) and a rank-3 ONNX graph.",
            inputs=[_inp("raw", [chan("raw"), *yx(param(16, 4))], _img(rng, (1, 48, 48), 0, 100),
                         [{"id": "zero_mean_unit_variance"}])],
            outputs=[_out("out", [chan("out"), *yx_ref("raw")])])
    if kind == "unet3d":
        zyx = [space("z", param(14, 2)), *yx(param(16, 4))]
        return dict(
            name="biozoo test unet3d", onnx=graphs.unet3d(),
            description="3D U-Net-like net (conv3d, maxpool, resize, skip), halo 6 on z, y, x.",
            inputs=[_inp("raw", [BATCH, chan("raw"), *zyx], _img(rng, (1, 1, 16, 24, 24), 0, 4000),
                         [{"id": "scale_range", "kwargs": {"axes": ["channel", "z", "y", "x"],
                                                           "min_percentile": 0.5, "max_percentile": 99.5}}])],
            # receptive-field radius 5 px (measured) -> halo 6 (even, keeps the stride-2 grid aligned)
            outputs=[_out("prob", [BATCH, chan("prob"), space("z", ref("raw", "z"), halo=6), *yx_ref("raw", 6)],
                          [{"id": "sigmoid"}])])
    if kind == "scaled":
        um = {"unit": "micrometer"}
        return dict(
            name="biozoo test scaled", onnx=graphs.scaled(),
            description="Stride-2 output (scale 1.0 um vs input 0.5 um, halo 1) and a cropped output (offset -8).",
            inputs=[_inp("raw", [BATCH, chan("raw"), *yx(param(16, 2), scale=0.5, **um)], _img(rng, (1, 1, 48, 48)),
                         [{"id": "fixed_zero_mean_unit_variance", "kwargs": {"mean": 0.5, "std": 0.25}}])],
            outputs=[_out("down", [BATCH, chan("down"), *yx_ref("raw", 1, scale=1.0, **um)]),
                     _out("inner", [BATCH, chan("inner"), *[space(a, ref("raw", a, -8), scale=0.5, **um)
                                                            for a in ("y", "x")]])])
    if kind == "output_stats":
        data = np.concatenate([_img(rng, (1, 1, 32, 32), 0, 10), _img(rng, (1, 1, 32, 32), 100, 500)])
        return dict(
            name="biozoo test output stats", onnx=graphs.heads(9, ["smv", "rng", "zmuv"]),
            description="Postprocessing with statistics of the output tensors themselves (per sample and per "
                        "dataset); test tensor has batch 2. Not testable by bioimageio.core 0.11.",
            inputs=[_inp("raw", [BATCH, chan("raw"), *yx(param(16, 8))], data)],
            outputs=[_out("smv", [BATCH, chan("smv"), *yx_ref("raw")],
                          [{"id": "scale_mean_variance",
                            "kwargs": {"reference_tensor": "raw", "axes": ["channel", "y", "x"]}}]),
                     _out("rng", [BATCH, chan("rng"), *yx_ref("raw")],
                          [{"id": "scale_range", "kwargs": {"axes": ["batch", "channel", "y", "x"],
                                                            "min_percentile": 1.0, "max_percentile": 99.0}},
                           {"id": "clip", "kwargs": {"min": 0.0, "max": 1.0}}]),
                     _out("zmuv", [BATCH, chan("zmuv"), *yx_ref("raw")], [{"id": "zero_mean_unit_variance"}])])
    if kind in ("batch_mixing", "bn_train"):  # batch-dependent nets (not in KINDS: bn_train needs torch)
        onnx_bytes = graphs.batch_mixing() if kind == "batch_mixing" else graphs.batchnorm_training_mode()
        out_id = "out" if kind == "batch_mixing" else "prob"
        return dict(
            name=f"biozoo test {kind}", onnx=onnx_bytes,
            description="A net whose outputs depend on the other samples of the batch: "
                        + ("ReduceMean over batch and space inside the graph." if kind == "batch_mixing" else
                           "BatchNormalization exported from torch in training mode."),
            inputs=[_inp("raw", [BATCH, chan("raw"), *yx(param(16, 8))], _img(rng, (1, 1, 32, 32)),
                         [{"id": "zero_mean_unit_variance", "kwargs": {"axes": ["channel", "y", "x"]}}])],
            outputs=[_out(out_id, [BATCH, chan(out_id), *yx_ref("raw", 2)])])
    if kind in ("blobseg", "skewseg"):  # not in KINDS: for the input checks (tests/runtime/test_checks*.py)
        um = {"scale": 0.5, "unit": "micrometer"}
        return dict(
            name=f"biozoo test {kind}", onnx=graphs.blob_segmenter() if kind == "blobseg" else graphs.skewed_segmenter(),
            description="Deterministic blob segmenter: 7 box filters, foreground where the smoothed normalized input "
                        "exceeds 0.5; receptive field 15 px. Carries a config.biozoo block (training conditions).",
            inputs=[_inp("raw", [BATCH, chan("raw"), *yx(param(24, 8), **um)],
                         blob_image(rng, 64, 6, 5) if kind == "blobseg" else blob_image(rng, 128, 6, 12),
                         [{"id": "scale_range", "kwargs": {"axes": ["channel", "y", "x"], "min_percentile": 1.0,
                                                           "max_percentile": 99.8}}])],
            outputs=[_out("prob", [BATCH, chan("foreground"), *yx_ref("raw", 8, **um)], [{"id": "sigmoid"}])],
            config={"biozoo": {"format": 1, "task": "segmentation", "training": BLOBSEG_TRAINING}})
    if kind == "stardist_maps":  # not in KINDS: StarDist block by block (tests/runtime/test_distributed.py)
        return dict(
            name="biozoo test stardist maps", onnx=graphs.identity("maps", "labels", ["batch", "y", "x", 33]),
            description="StarDist post-processing only: the input holds an object probability and 32 ray distances "
                        "per pixel (channels last); the graph passes them through; stardist_postprocessing turns "
                        "them into labels.",
            inputs=[_inp("maps", [BATCH, *yx(param(16, 1)), chan("prob", *[f"ray{i}" for i in range(32)])],
                         star_maps(96, 96, count=14, seed=1)[None])],
            outputs=[_out("labels", [BATCH, *yx_ref("maps"), chan("instance_labels")],
                          [{"id": "stardist_postprocessing", "kwargs": {"prob_threshold": 0.5, "nms_threshold": 0.4,
                                                                        "n_rays": 32, "grid": [1, 1], "b": 2}}],
                          data={"type": "int32"})])
    if kind == "stardist_grid2_maps":  # not in KINDS: labels of odd-sized images on a grid-2 raster
        return dict(
            name="biozoo test stardist grid-2 maps",
            onnx=graphs.every_second_pixel("maps", "labels", ["batch", "y", "x", 33], ["batch", "y2", "x2", 33]),
            description="StarDist post-processing on a grid-2 raster: the input holds an object probability and 32 "
                        "ray distances per pixel (channels last); the graph keeps every second row and column; "
                        "stardist_postprocessing (grid 2) turns them into labels of the input's size.",
            inputs=[_inp("maps", [BATCH, *yx(param(16, 2)), chan("prob", *[f"ray{i}" for i in range(32)])],
                         star_maps(96, 96, count=14, seed=1)[None])],
            outputs=[_out("labels", [BATCH, *yx_ref("maps"), chan("instance_labels")],
                          [{"id": "stardist_postprocessing", "kwargs": {"prob_threshold": 0.5, "nms_threshold": 0.4,
                                                                        "n_rays": 32, "grid": [2, 2], "b": 2}}],
                          data={"type": "int32"})])
    raise ValueError(f"unknown kind {kind!r}, expected one of {KINDS}")


def star_maps(height: int, width: int, count: int, seed: int, radius: tuple = (3, 11)) -> np.ndarray:
    """(y, x, 33) float32: StarDist's object probability and 32 ray distances of random ellipses, with noise."""
    from biozoo.zoo.star_targets import object_probabilities, star_distances

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    lab = np.zeros((height, width), np.int32)
    for i in range(1, count + 1):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        a, b, t = rng.uniform(*radius), rng.uniform(*radius), rng.uniform(0, np.pi)
        u, v = (yy - cy) * np.cos(t) + (xx - cx) * np.sin(t), -(yy - cy) * np.sin(t) + (xx - cx) * np.cos(t)
        lab[(u / a) ** 2 + (v / b) ** 2 < 1] = i
    noisy = object_probabilities(lab, (1, 1)) + rng.normal(0, 0.05, lab.shape)
    prob = 1 / (1 + np.exp(-8 * (noisy - 0.5)))  # in (0, 1) without clipping: hardly two candidates tie
    dist = star_distances(lab, 32, (1, 1)) * rng.uniform(0.9, 1.1, (height, width, 32))
    return np.concatenate([prob[..., None], dist], axis=-1).astype(np.float32)


def blob_image(rng: np.random.Generator, size: int, count: int, radius: float, background: float = 10.0,
               foreground: float = 200.0, noise: float = 3.0) -> np.ndarray:
    """A synthetic fluorescence-like image (1, 1, size, size): `count` bright discs of `radius` on a dark, noisy
    background, float32."""
    yy, xx = np.mgrid[:size, :size]
    img = np.full((size, size), background, dtype=np.float64)
    margin = radius + 1
    for _ in range(count):
        cy, cx = rng.uniform(margin, size - margin, 2)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = foreground
    img += rng.normal(0.0, noise, img.shape)
    return img.astype(np.float32)[None, None]


# training conditions of the blobseg fixture: discs of radius 5 at 0.5 um; intensity percentiles measured on
# blob_image(...) after scale_range (see tests/runtime/test_checks.py, which recomputes and compares them)
BLOBSEG_TRAINING = {
    "pixel_size": {"y": 0.5, "x": 0.5}, "pixel_size_unit": "micrometer",
    "normalization": {"op": "scale_range", "percentiles": [1.0, 99.8], "per": "sample"},
    "intensity_percentiles": {"1": 0.0, "50": 0.03, "99": 0.98},
    "receptive_field": 15, "halo": 8,
    "object_size": {"median_diameter_px": 10.0, "p95_diameter_px": 11.0, "count": 6},
}


# ---------------------------------------------------------------- package writing
def _sha(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _file(path: pathlib.Path) -> dict:
    return {"source": path.name, "sha256": _sha(path)}


def _save_npy(path: pathlib.Path, arr: np.ndarray) -> dict:
    np.save(path, arr)
    return _file(path)


def _plane(a: np.ndarray) -> np.ndarray:
    """Middle 2D plane of `a` scaled to uint8."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, *np.shape(a)[-2:])
    a = a[a.shape[0] // 2]
    return ((a - a.min()) / (np.ptp(a) or 1.0) * 255).astype(np.uint8)


def _png(path: pathlib.Path, plane: np.ndarray) -> dict:
    Image.fromarray(plane).save(path, format="PNG")
    return _file(path)


def _cover(path: pathlib.Path, arrays: list[np.ndarray]) -> dict:
    img = Image.new("L", (128, 64))  # 2:1 as recommended: input | output
    for i, a in enumerate(arrays[:2]):
        img.paste(Image.fromarray(_plane(a)).resize((64, 64), Image.NEAREST), (64 * i, 0))
    img.save(path, format="PNG")
    return _file(path)


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # no YAML anchors/aliases in rdf.yaml
        return True


def compute_test_outputs(spec: dict[str, Any]) -> dict[str, np.ndarray]:
    """Reference outputs: numpy preprocessing -> onnxruntime (CPU) -> numpy postprocessing."""
    raw = {t["id"]: t["array"] for t in spec["inputs"]}
    feed = {t["id"]: apply_ops(t["array"], axis_ids(t["axes"]), t["preprocessing"], raw) for t in spec["inputs"]}
    sess = ort.InferenceSession(spec["onnx"], providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    results = dict(zip(names, sess.run(names, {i.name: feed[i.name] for i in sess.get_inputs()})))
    return {t["id"]: apply_ops(results[t["id"]], axis_ids(t["axes"]), t["postprocessing"], raw)
            for t in spec["outputs"]}


def build_package(kind: str, dest: pathlib.Path, *, zip: bool = False) -> pathlib.Path:
    """Write the package folder dest/<kind>/ and return its rdf.yaml (or dest/<kind>.zip if zip)."""
    spec = _kind(kind)
    folder = pathlib.Path(dest) / kind
    if folder.exists():
        shutil.rmtree(folder)  # no stale files from an earlier build
    folder.mkdir(parents=True)
    (folder / "weights.onnx").write_bytes(spec["onnx"])
    weights: dict[str, Any] = {"onnx": {**_file(folder / "weights.onnx"), "opset_version": graphs.OPSET}}
    if kind == "tf_and_onnx":  # dummy files: a runtime must ignore (and never download) these formats
        (folder / "weights.pt").write_bytes(b"dummy torchscript weights, not loadable\n")
        with zipfile.ZipFile(folder / "tf_saved_model.zip", "w") as zf:
            zf.writestr("saved_model.pb", b"dummy")
        weights = {"onnx": {**weights["onnx"], "parent": "torchscript"},
                   "torchscript": {**_file(folder / "weights.pt"), "pytorch_version": "2.4.0"},
                   "tensorflow_saved_model_bundle": {**_file(folder / "tf_saved_model.zip"),
                                                     "tensorflow_version": "2.15.0", "parent": "torchscript"}}
    outputs = compute_test_outputs(spec)
    tensors: dict[str, list[dict]] = {"inputs": [], "outputs": []}
    for io_, role in (("inputs", "input"), ("outputs", "output")):
        for t in spec[io_]:
            arr = t["array"] if io_ == "inputs" else outputs[t["id"]]
            d = {k: v for k, v in t.items() if k != "array"}
            d["test_tensor"] = _save_npy(folder / f"test_{role}_{t['id']}.npy", arr)
            if np.squeeze(arr).ndim == 2:  # sample tensors (PNG) for single-channel 2D tensors
                d["sample_tensor"] = _png(folder / f"sample_{t['id']}.png", _plane(arr))
            tensors[io_].append(d)
    covers = [_cover(folder / "cover.png", [spec["inputs"][0]["array"], outputs[spec["outputs"][0]["id"]]])]
    (folder / "README.md").write_text(
        f"# {spec['name']}\n\n{spec['description']}\n\nTest fixture of the biozoo test suite "
        "(random weights, no biological meaning).\n\n# Validation\n\n"
        "The test outputs were computed with numpy pre-/postprocessing and onnxruntime (CPU); "
        "`bioimageio test rdf.yaml` reproduces them.\n")
    rdf = {
        "type": "model", "format_version": FORMAT_VERSION, "name": spec["name"],
        "description": spec["description"], "authors": [{"name": "biozoo test suite"}], "cite": CITE,
        "license": "MIT", "tags": ["biozoo-test-fixture", kind], "version": "0.1.0",
        "timestamp": "2024-01-01T00:00:00Z", "documentation": _file(folder / "README.md"),
        "covers": covers, "inputs": tensors["inputs"], "outputs": tensors["outputs"],
        "weights": weights,
    }
    if spec.get("config"):
        rdf["config"] = spec["config"]
    (folder / "rdf.yaml").write_text(yaml.dump(rdf, Dumper=_Dumper, sort_keys=False))
    if not zip:
        return folder / "rdf.yaml"
    zpath = pathlib.Path(dest) / f"{kind}.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.iterdir()):  # fixed timestamps: byte-identical zips
            zf.writestr(zipfile.ZipInfo(f.name, date_time=(2024, 1, 1, 0, 0, 0)), f.read_bytes(),
                        compress_type=zipfile.ZIP_DEFLATED)
    return zpath


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(f"usage: python {sys.argv[0]} OUTDIR [KIND ...]   (kinds: {' '.join(KINDS)})")
    for k in sys.argv[2:] or KINDS:
        print(build_package(k, pathlib.Path(sys.argv[1])))
