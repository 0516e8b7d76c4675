"""Detector latency per 1024x1024 frame through the biozoo runtime (and raw onnxruntime beside it), one run.

    python benchmarks/bench_detector.py --package yolo.zip        # an exported detection package
    python benchmarks/bench_detector.py --run runs/yolo           # a `biozoo train` detection run (exported first)
    python benchmarks/bench_detector.py                           # untrained detector2d weights (see below)

The frame is a real HeLa nuclei frame (the hela-nuclei-2d dataset, fetched and cached on first use) mirrored out to
--size x --size, so a trained detector finds a realistic number of nuclei (~300) and NMS does real work. Without
--package/--run the weights are random: convolutions cost the same, but nothing passes the score threshold, so the
NMS part is idle; the printed line says which case was measured. `biozoo` = load once, then `model.predict` per
frame (input checks, normalization, padding, session, outputs); `onnxruntime` = the session alone on the
normalized frame.
Numbers are medians of --runs runs on this machine, once: compare, do not quote them as constants.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def frame(size: int) -> np.ndarray:
    import tifffile

    from biozoo.zoo.data import fetch_dataset

    image = tifffile.imread(fetch_dataset("hela-nuclei-2d") / "images" / "hela_t010.tif").astype(np.float32)
    reps = [(0, max(0, size - n)) for n in image.shape]
    return np.pad(image, reps, mode="symmetric")[:size, :size]


def untrained_package(folder: Path) -> Path:
    """detector2d with random weights, packaged as the exporter would lay out the graph (batch 1, NMS inside)."""
    import torch
    import yaml

    from biozoo.runtime.engine.outputs import CORNERS
    from biozoo.zoo import create_model
    from biozoo.zoo.detector import PADDING, DetectorWithNMS, export_detector_onnx

    torch.manual_seed(0)
    module = DetectorWithNMS(create_model("detector2d").eval(), 0.35)
    export_detector_onnx(module, torch.zeros(1, 1, 64, 64), folder / "weights.onnx")
    k = module.settings["max_detections"]  # fixed capacity, padded rows marked as the exporter marks them
    index = {"id": "detection", "type": "index", "size": k}
    rdf = {"type": "model", "format_version": "0.5.4", "name": "untrained detector2d",
           "weights": {"onnx": {"source": "weights.onnx", "opset_version": 17}},
           "inputs": [{"id": "raw", "axes": [{"type": "batch", "size": 1}, {"type": "channel", "channel_names": ["c"]},
                                             {"id": "y", "type": "space", "size": {"min": 32, "step": 16}},
                                             {"id": "x", "type": "space", "size": {"min": 32, "step": 16}}],
                       "preprocessing": [{"id": "scale_range", "kwargs": {
                           "axes": ["channel", "y", "x"], "min_percentile": 1.0, "max_percentile": 99.8}}]}],
           "outputs": [{"id": "boxes", "axes": [index, {"type": "channel", "channel_names": list(CORNERS)}]},
                       {"id": "scores", "axes": [index]}, {"id": "labels", "axes": [index], "data": {"type": "int64"}}],
           "config": {"biozoo": {"task": "detection", "pad_mode": "constant",
                                 "detection": {"max_detections": k, "padding": PADDING}}}}
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    return folder / "rdf.yaml"


def timed(fn, runs: int) -> tuple[float, object]:
    result = fn()  # warm-up: session initialization, allocations
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--package", help="an exported detection package (.zip, folder or rdf.yaml)")
    source.add_argument("--run", help="a detection training run folder (exported to a temporary package)")
    parser.add_argument("--size", type=int, default=1024, help="frame side length (default 1024)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from biozoo.runtime import load

    with tempfile.TemporaryDirectory() as tmp:
        weights = "trained"
        if args.package:
            package = Path(args.package)
        elif args.run:
            from biozoo.exporters import export_run

            package = export_run(Path(args.run), Path(tmp) / "detector.zip").package
        else:
            package, weights = untrained_package(Path(tmp)), "random (untrained: NMS idle)"
        model = load(package, device=args.device)
        image = frame(args.size)
        with warnings.catch_warnings():  # the input checks' notes (e.g. unknown pixel size): same every run
            warnings.simplefilter("ignore")
            seconds, out = timed(lambda: model.predict(image, axes="yx"), args.runs)
        x = model.preprocess({"raw": image[None, None]})["raw"]
        raw_seconds, _ = timed(lambda: model.session.run({"raw": x}), args.runs)
    result = {"package": str(args.package or args.run or "untrained detector2d"), "weights": weights,
              "provider": model.provider, "frame": [args.size, args.size], "runs": args.runs,
              "biozoo_ms_per_frame": round(seconds * 1000, 1), "onnxruntime_ms_per_frame": round(raw_seconds * 1000, 1),
              "boxes": int(len(out["scores"]))}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['package']} ({weights} weights) on {result['provider']}, {args.size}x{args.size} frame, "
              f"median of {args.runs}: biozoo {result['biozoo_ms_per_frame']} ms/frame, raw onnxruntime "
              f"{result['onnxruntime_ms_per_frame']} ms/frame, {result['boxes']} boxes")


if __name__ == "__main__":
    main()
