"""Run every package of a folder (default: ../shared/thirdparty) through biozoo and bioimageio.core, one row each.

    python benchmarks/interop_report.py [FOLDER_OR_PACKAGE ...] [--json]

Per package: biozoo info / test / validate (status), predict on the test inputs (max abs error vs the test outputs),
the same input through bioimageio.core's predict (max abs difference to biozoo), and core's test_model status with
the ONNX weights. Numbers from one run; nothing is asserted (the tests do that).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
from typing import Any

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "thirdparty"


def _packages(args: list[str]) -> list[pathlib.Path]:
    found: list[pathlib.Path] = []
    for a in args or [str(CORPUS)]:
        p = pathlib.Path(a)
        found += sorted(p.glob("*.zip")) if p.is_dir() else [p]
    return found


def _core_predict(model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from bioimageio.core import Sample, Tensor, create_prediction_pipeline, load_model_description

    descr = load_model_description(str(model.package.rdf_path), perform_io_checks=False)
    dims = {t.id: tuple(a.id for a in t.axes) for t in model.description.inputs}
    sample = Sample(members={k: Tensor(v, dims=dims[k]) for k, v in inputs.items()}, stat={}, id="report")
    pipeline = create_prediction_pipeline(descr, weight_format="onnx", devices=["cpu"])  # the weights biozoo runs
    return {str(k): v.data.to_numpy() for k, v in pipeline.predict_sample_without_blocking(sample).members.items()}


def report(package: pathlib.Path) -> dict[str, Any]:
    from biozoo.runtime import load
    from biozoo.runtime.commands.info import model_info
    from biozoo.runtime.commands.validate import validate_package
    from biozoo.runtime.errors import BiozooError

    row: dict[str, Any] = {"package": package.name}
    try:
        model = load(package, device="cpu")
    except BiozooError as e:
        return {**row, "load": f"refused: {e}"}
    info = model_info(model)
    row.update(format=info["format_version"], binding=info["binding"], info="ok")
    row["test"] = model.test()["status"]
    row["validate"] = validate_package(package)["status"]
    d = model.description
    inputs = {t.id: np.load(model.package.file(t.test_tensor, t.id), allow_pickle=False) for t in d.inputs}
    expected = {t.id: np.load(model.package.file(t.test_tensor, t.id), allow_pickle=False) for t in d.outputs}
    got = {k: v for k, (v, _) in model.predict_with_axes(inputs, {t.id: t.letters for t in d.inputs}).items()}
    row["max_abs_error_vs_test_outputs"] = max(float(np.abs(got[k] - v).max()) for k, v in expected.items())
    try:
        core = _core_predict(model, inputs)
        row["max_abs_difference_vs_bioimageio_core"] = max(float(np.abs(got[k] - core[k]).max()) for k in core)
        from bioimageio.core import test_model

        row["bioimageio_core_test_model"] = test_model(str(package), weight_format="onnx", devices=["cpu"]).status
    except ImportError:
        row["bioimageio_core"] = "not installed"
    return row


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("packages", nargs="*")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    import os

    os.environ.setdefault("BIOZOO_CACHE_DIR", tempfile.mkdtemp(prefix="biozoo-interop-"))
    rows = [report(p) for p in _packages(args.packages)]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        print(f"{r['package']}: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in r.items() if k != "package"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
