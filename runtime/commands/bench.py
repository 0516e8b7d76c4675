"""`biozoo bench`: biozoo's predict vs a raw InferenceSession.run on the same preprocessed array, one run.

Both are timed warm (after one untimed call), in alternation, median of `runs`; the ratio is what the command prints.
biozoo's time is split, from the same calls, into the network (inside onnxruntime), preprocessing (axes, statistics,
normalization), postprocessing and tiling (the rest of the engine's run), the input checks (every default check on)
and the remainder (call overhead, moving axes back); each part is the median over the runs. With
`vs_core`, bioimageio.core's predict runs on the same package and input too (when it is installed), both as a user
calls it (`bioimageio.core.predict`, which builds its pipeline per call) and with a reused pipeline.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import numpy as np

from ..checks.report import CheckReport
from ..engine.tiling import pad_to, plan_tiles
from ..format.description import ParameterizedSize
from ..model import Model


def _median_seconds(fn: Callable[[], Any], runs: int) -> float:
    return _interleaved([fn], runs)[0]


def _interleaved(fns: list[Callable[[], Any]], runs: int) -> list[float]:
    """Median seconds per function, timed in alternation so that drifts of the machine hit all alike."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for fn, bucket in zip(fns, times):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


class _SplitTimer:
    """Times the parts of each predict call: the network by wrapping the session's `run` for the bench (restored
    after every call), the rest from the phases the check report records (CheckReport.seconds)."""

    def __init__(self, model: Model):
        self.model = model
        self.calls: list[dict[str, float]] = []
        self.last_report: CheckReport | None = None

    def wrap(self, predict: Callable[[], Any]) -> Callable[[], Any]:
        def timed() -> Any:
            session = self.model.session
            network = [0.0]
            run = session.run

            def counted(feeds):
                start = time.perf_counter()
                try:
                    return run(feeds)
                finally:
                    network[0] += time.perf_counter() - start

            session.run = counted  # an instance attribute, shadowing the method for this call only
            start = time.perf_counter()
            try:
                prediction = predict()
            finally:
                total = time.perf_counter() - start
                del session.run
            seconds = prediction.report.seconds
            engine_run = seconds.get("network and postprocessing", 0.0)
            parts = {"network": network[0], "preprocessing": seconds.get("preprocessing", 0.0),
                     "postprocessing_and_tiling": max(0.0, engine_run - network[0]),
                     "checks": seconds.get("checks", 0.0), "resampling": seconds.get("resampling", 0.0)}
            parts["other"] = max(0.0, total - sum(parts.values()))
            parts["total"] = total
            self.calls.append(parts)
            self.last_report = prediction.report
            return prediction

        return timed

    def timed_calls(self) -> list[dict[str, float]]:
        return self.calls[1:] if len(self.calls) > 1 else self.calls  # the first is the untimed warm-up

    def medians(self) -> dict[str, float]:
        calls = self.timed_calls()
        return {k: statistics.median(c[k] for c in calls) for k in calls[0]} if calls else {}

    def checks_fraction(self) -> float:
        calls = self.timed_calls()
        return statistics.median(c["checks"] / c["total"] for c in calls) if calls else 0.0


def bench_input(model: Model, size: int, seed: int = 0) -> np.ndarray:
    """A random input in the primary tensor's layout with every space axis `size` long (batch 1)."""
    t = model.description.inputs[0]
    shape = []
    for a in t.axes:
        if a.type == "space":
            shape.append(size)
        elif isinstance(a.size, int):
            shape.append(a.size)
        elif isinstance(a.size, ParameterizedSize):
            shape.append(a.size.min)
        else:
            shape.append(1)
    return np.random.default_rng(seed).random(shape, dtype=np.float32) * 1000


def run_bench(model: Model, size: int, runs: int = 5, vs_core: bool = False) -> dict[str, Any]:
    desc = model.description
    if len(desc.inputs) != 1:
        raise ValueError("bench supports single-input models")
    t = desc.inputs[0]
    x = bench_input(model, size)
    axes = t.letters

    # the array biozoo hands to onnxruntime: preprocessed, padded to a valid shape
    pre = model.preprocess(model.prepare_inputs(x, axes)[0])[t.id]
    plan = plan_tiles(desc, {t.id: pre.shape})
    padded = pad_to(pre, plan.input_shapes[t.id], model.pad_mode)
    feed = {model.session.graph_input(t.id): np.ascontiguousarray(padded, dtype=np.float32)}
    session = model.session.session
    split = _SplitTimer(model)
    predict = split.wrap(lambda: model.predict_with_report(x, axes=axes))
    biozoo_s, raw_s = _interleaved([predict, lambda: session.run(None, feed)], runs)
    parts = split.medians()
    result: dict[str, Any] = {
        "model": desc.name, "provider": model.provider, "input_shape": list(x.shape), "tiles": plan.n_tiles,
        "runs": runs, "biozoo_s": biozoo_s, "raw_onnxruntime_s": raw_s, "ratio_biozoo_over_raw": biozoo_s / raw_s,
        "split_s": parts, "checks_fraction": split.checks_fraction(),
        "checks": [r["name"] + ": " + r["status"] for r in split.last_report.as_list()] if split.last_report else [],
    }
    if vs_core:
        result.update(_bench_core(model, x, runs, biozoo_s))
    return result


def _bench_core(model: Model, x: np.ndarray, runs: int, biozoo_s: float) -> dict[str, Any]:
    try:
        from bioimageio.core import create_prediction_pipeline, load_model_description, predict
        from bioimageio.core import Sample, Tensor
    except ImportError:
        return {"bioimageio_core": "not installed (pip install bioimageio.core)"}
    descr = load_model_description(str(model.package.rdf_path), perform_io_checks=False)
    t = model.description.inputs[0]

    def sample():
        return Sample(members={t.id: Tensor(x, dims=tuple(a.id for a in t.axes))}, stat={}, id="bench")

    core_s = _median_seconds(lambda: predict(model=descr, inputs=sample()), max(2, runs // 2))
    pipeline = create_prediction_pipeline(descr, weight_format="onnx", devices=[model.provider])
    reused_s = _median_seconds(lambda: pipeline.predict_sample_without_blocking(sample()), runs)
    return {
        "bioimageio_core_predict_s": core_s, "bioimageio_core_pipeline_s": reused_s,
        "ratio_core_predict_over_biozoo": core_s / biozoo_s, "ratio_core_pipeline_over_biozoo": reused_s / biozoo_s,
    }


def format_bench(r: dict[str, Any]) -> str:
    lines = [
        f"{r['model']} on {r['provider']}, input {r['input_shape']}, {r['tiles']} tile(s), median of {r['runs']}",
        f"  biozoo predict        {r['biozoo_s'] * 1e3:9.1f} ms",
        f"  raw onnxruntime run   {r['raw_onnxruntime_s'] * 1e3:9.1f} ms",
        f"  ratio biozoo / raw    {r['ratio_biozoo_over_raw']:9.3f}",
    ]
    split = r.get("split_s") or {}
    if split:
        total = split.get("total") or 1.0
        lines.append("  biozoo predict split (median per part):")
        for part in ("network", "preprocessing", "postprocessing_and_tiling", "checks", "resampling", "other"):
            if part in split and (part != "resampling" or split[part]):
                lines.append(f"    {part.replace('_', ' '):26s}{split[part] * 1e3:9.1f} ms  "
                             f"{split[part] / total:6.1%}")
        lines.append(f"    checks / predict (median of runs) {r['checks_fraction']:.1%}; "
                     + ", ".join(r.get("checks", [])))
    if "bioimageio_core_predict_s" in r:
        lines += [
            f"  bioimageio.core predict           {r['bioimageio_core_predict_s'] * 1e3:9.1f} ms "
            f"({r['ratio_core_predict_over_biozoo']:.2f}x biozoo)",
            f"  bioimageio.core reused pipeline   {r['bioimageio_core_pipeline_s'] * 1e3:9.1f} ms "
            f"({r['ratio_core_pipeline_over_biozoo']:.2f}x biozoo)",
        ]
    elif "bioimageio_core" in r:
        lines.append(f"  bioimageio.core: {r['bioimageio_core']}")
    return "\n".join(lines)
