"""The steps the export pipeline and the tasks' graph steps share (held-out test input, parity and batch
independence, curves, the config.biozoo block, the self-test, the report): below both export.py and the tasks."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from biozoo.runtime import ExportError

from .parity import Forward, check_batch_independence, check_parity
from .run_dir import RunDir, object_sizes, read_image, test_image

INPUT_ID = "raw"
TOLERANCE = {"absolute_tolerance": 1e-3, "relative_tolerance": 1e-3, "mismatched_elements_per_million": 0}
PERCENTILE_EPS = 1e-6  # the scale_range op's default eps, also used by training's percentile_normalize


@dataclass(frozen=True)
class ExportReport:
    package: Path
    sha256: str
    parity: dict
    batch_independence: dict
    test: dict
    weight_formats: dict  # per format: its reproduction of the test tensors (config.biozoo.parity.weight_formats)

    def as_dict(self) -> dict:
        return {"package": str(self.package), "sha256": self.sha256, "parity": self.parity,
                "batch_independence": self.batch_independence, "test": self.test,
                "weight_formats": self.weight_formats}


def normalize(raw: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """What the package's scale_range preprocessing does to one sample (linear percentiles over all its pixels)."""
    lo, hi = (np.percentile(raw, q) for q in percentiles)
    return ((raw - lo) / (hi - lo + PERCENTILE_EPS)).astype(np.float32)


def model_input(run: RunDir, contract) -> tuple[np.ndarray, np.ndarray]:
    """The held-out test image (raw, valid size) and what the package's preprocessing makes of it, (1, 1, ...)."""
    raw = test_image(run, contract)
    return raw, normalize(raw, tuple(run.recipe.data.percentiles))[None, None]


def postprocessing(run: RunDir, trainer: str) -> dict[str, Any]:
    """The thresholds an instance trainer chose on val (test_metrics.json ``postprocessing``)."""
    post = run.test_metrics.get("postprocessing")
    if not post:
        raise ExportError(f"{run.path('test_metrics.json')} has no 'postprocessing' entry (thresholds); it was not "
                          f"written by the {trainer} trainer: re-run `biozoo train`")
    return post


def check_graph(reference: Forward, candidate: Forward, x: np.ndarray, contract) -> tuple[dict, dict]:
    """Parity on the test input and other valid sizes, then batch independence in torch and in the ONNX graph."""
    parity = check_parity(reference, candidate, [x, *valid_random_inputs(contract, x.shape[1])]).as_dict()
    diffs = [check_batch_independence(f, x[0], where) for f, where in
             ((reference, "torch model"), (candidate, "exported ONNX graph"))]
    return parity, {"max_abs_difference": max(diffs), "passed": True}


def attach_curves(run: RunDir, folder: Path) -> list[str]:
    """Copy the run's training curves into the package; the attachment list (empty when there are none)."""
    if not run.path("curves.png").is_file():
        return []
    shutil.copyfile(run.path("curves.png"), folder / "curves.png")
    return ["curves.png"]


def valid_random_inputs(contract, channels: int, seed: int = 0) -> list[np.ndarray]:
    """Two random inputs at other valid sizes (one at the minimum, one non-square), batch 2: parity beyond the test
    tile's shape catches sizes traced as constants."""
    rng = np.random.default_rng(seed)
    lo = contract.min_tile
    sizes = [(lo,) * contract.spatial_dims, tuple(lo + contract.size_step * (k + 1) for k in range(contract.spatial_dims))]
    return [rng.standard_normal((2, channels, *s)).astype(np.float32) for s in sizes]


def package_timestamp(run: RunDir) -> str:
    """SOURCE_DATE_EPOCH (the reproducible-builds convention) or the time the best checkpoint was written."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    seconds = int(epoch) if epoch else int(run.path("best.pt").stat().st_mtime)
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).replace(tzinfo=None).isoformat()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def self_test(folder: Path) -> dict:
    """The package as written must pass biozoo's own test; anything else is an exporter bug, not a user error."""
    from biozoo.runtime import load

    report = load(folder / "rdf.yaml", device="cpu").test()
    if report.get("status") != "passed":
        raise ExportError(f"the written package fails `biozoo test`: {json.dumps(report)[:2000]}")
    return {"status": report["status"], "outputs": report.get("outputs") or {}}


def biozoo_config(run: RunDir, contract, parity: dict, independence: dict, object_size: bool) -> dict[str, Any]:
    """config.biozoo's common part: what the runtime checks inputs against (``object_size``: record the training
    objects' sizes, for tasks whose outputs are objects)."""
    from importlib.metadata import version

    r = run.recipe
    pixel = r.data.pixel_size
    return {
        "format": 1, "task": r.task, "recipe": r.name, "exported_by": f"biozoo {version('biozoo')}",
        "training": {
            "dataset": r.data.dataset,
            "pixel_size": dict(zip(contract.space_axes, map(float, pixel))) if pixel else None,
            "pixel_size_unit": "micrometer" if pixel else None,
            "normalization": {"op": "scale_range", "percentiles": list(r.data.percentiles), "per": "sample"},
            "intensity_percentiles": run.stats.get("normalized_intensity_percentiles"),
            "receptive_field": contract.receptive_field, "halo": contract.halo,
            "object_size": object_sizes(run) if object_size else None,
            "split_manifest_hash": run.split.get("manifest_hash"),
        },
        "test_metrics": run.test_metrics, "parity": parity, "batch_independence": independence,
    }


def training_rows(run: RunDir, contract) -> list[tuple[str, Any]]:
    r, m = run.recipe, run.test_metrics
    return [
        ("recipe", f"`{r.name}` ({r.task}, {r.model.name}, depth {r.model.depth}, {r.model.base_channels} channels)"),
        ("data", f"`{r.data.dataset}`, split train/val/test = {m.get('split')}"),
        ("split manifest", f"`{run.split.get('manifest_hash', '?')}`"),
        ("epochs", f"{m.get('epochs_run')} run, best {m.get('best_epoch')}, stopped early: {m.get('stopped_early')}"),
        ("normalization", f"per image, percentiles {tuple(r.data.percentiles)} -> 0..1"),
        ("pixel size", f"{tuple(r.data.pixel_size)} micrometer" if r.data.pixel_size else "unknown"),
        ("receptive field", f"{contract.receptive_field} px (halo {contract.halo} px used for tiling)"),
    ]


def flip_reference(folder: Path, run: RunDir) -> Optional[dict[str, Any]]:
    """The out-of-distribution check's reference (config.biozoo.training.out_of_distribution): its measure taken by
    the runtime on the written package, over the held-out test images, as `biozoo predict` will take it; None when
    the check does not apply (box lists) or no test image is readable."""
    from biozoo.runtime import load
    from biozoo.runtime.checks import reliability

    engine = load(folder / "rdf.yaml", device="cpu").engine
    if reliability.why_not(engine):
        return None
    found: dict[str, list[tuple[float, int, str]]] = {}
    for name in run.split.get("test", []):
        path = run.data_dir / "images" / name
        if not path.is_file():
            continue
        image = read_image(path).astype(np.float32)
        arrays, _ = engine.prepare_inputs(image, "zyx"[-image.ndim:])
        processed = engine.preprocess(arrays)
        outputs = engine.run_processed(processed, arrays)
        for tid, m in reliability.measure(engine, processed, arrays, outputs).items():
            found.setdefault(tid, []).append((m["agreement"], m["pixels"], m["kind"]))
    if not found:
        return None
    agreements = {tid: {"kind": rows[0][2], "images": len(rows),
                        "agreement": round(float(np.average([r[0] for r in rows], weights=[r[1] for r in rows])), 4)}
                  for tid, rows in found.items()}
    images = max(v["images"] for v in agreements.values())
    return {"flip_agreement": agreements, "measured_on": f"{images} held-out test image{'s' if images > 1 else ''}"}
