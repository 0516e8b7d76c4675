"""`biozoo export RUN_DIR -o PACKAGE.zip` and `biozoo convert PACKAGE -o NEW.zip`, plugged into the CLI via the
biozoo.commands entry points.

Imports torch only when the command runs, so `biozoo info` and friends stay torch-free.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="package a training run as a bioimage.io model (.zip)",
                              description="Export a `biozoo train` run folder as a validated bioimage.io package: "
                                          "ONNX weights, rdf.yaml, test tensors, cover, README.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished `biozoo train` run folder")
    p.add_argument("-o", "--out", required=True, metavar="PACKAGE.zip", help="the package to write (atomically)")
    p.add_argument("--author", action="append", dest="authors", metavar="NAME",
                   help="author named in rdf.yaml (repeatable; default: biozoo)")
    p.add_argument("--license", default="CC-BY-4.0", help="SPDX license id of the package (default CC-BY-4.0)")
    p.add_argument("--name", help="model name (default: the recipe's name)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17; <= 19 stays loadable by onnxruntime 1.16)")
    p.add_argument("--weights", metavar="FORMATS", default=None,
                   help="comma-separated weight formats to write: onnx (always; biozoo runs it), torchscript, "
                        "pytorch_state_dict (default: every format the task exports; all three except for the "
                        "detector, whose NMS lives in the ONNX graph)")
    p.add_argument("--overwrite", action="store_true", help="replace PACKAGE.zip if it exists")
    p.add_argument("--json", action="store_true", help="print the export report as one JSON object")
    p.set_defaults(func=_export)


def _check_export_arguments(run_dir: Path, out: Path, overwrite: bool) -> None:
    """Refuse bad -o paths and unsafe checkpoints before any export work (exit 2, one line each)."""
    from biozoo.runtime import ExportError

    if out.is_dir():
        raise ExportError(f"-o '{out}' is a folder; give the package's file name, e.g. -o {out / 'model.zip'}")
    if out.suffix.lower() != ".zip":
        raise ExportError(f"-o '{out}' must end in .zip (a bioimage.io package is a zip file)")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ExportError(f"-o '{out}' lies under the file '{parent}'; choose a path in a folder")
    if out.exists() and not overwrite:
        raise ExportError(f"-o '{out}' already exists; pass --overwrite to replace it, or choose another -o")
    if run_dir.is_dir() and out.exists() and any(out.resolve() == f.resolve() for f in run_dir.iterdir()):
        raise ExportError(f"-o '{out}' is a file of the run folder '{run_dir}'; write the package elsewhere")
    best = run_dir / "best.pt"
    if best.is_file():  # read with weights_only=True: a pickled payload is refused here, never executed
        from biozoo.zoo.training import load_checkpoint

        state = load_checkpoint(best, "best.pt")
        if not isinstance(state, dict):
            raise ExportError(f"'{best}' is not a state dict (got {type(state).__name__}); train the run again")


def _export(args) -> int:
    from .export import export_run

    _check_export_arguments(Path(args.run_dir), Path(args.out), args.overwrite)
    report = export_run(Path(args.run_dir), Path(args.out), authors=tuple(args.authors or ("biozoo",)),
                        license=args.license, opset=args.opset, name=args.name, weights=args.weights)
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        p = report.parity
        print(f"package: {report.package}\nsha256: {report.sha256}\n"
              f"parity torch vs onnxruntime: max abs {p['max_abs_error']:.3g}, max rel {p['max_rel_error']:.3g}\n"
              f"batch independence: max difference {report.batch_independence['max_abs_difference']:.3g}\n"
              f"biozoo test: {report.test['status']}")
        for fmt, r in report.weight_formats.items():
            print(f"{fmt}: test tensors reproduced, max abs error {r['max_abs_error']:.3g}, "
                  f"{r['mismatched_per_million']:.3g} mismatched per million")
    return 0


def register_convert(subparsers) -> None:
    p = subparsers.add_parser(
        "convert", help="add ONNX weights to a package that has only torchscript / pytorch_state_dict weights",
        description="Convert a bioimage.io package's torchscript weights (preferred: no package code runs) or, with "
                    "--trust-code, its pytorch_state_dict weights to ONNX (opset 17), check that the result "
                    "reproduces the package's test outputs within its tolerance and is valid (bioimageio.spec, "
                    "offline), and write a new package with every original file plus the ONNX weights. Exit codes: "
                    "0 written, 1 a check failed (nothing written), 2 bad input. Needs pip install 'biozoo[train]'.")
    p.add_argument("package", metavar="PACKAGE", help="the package to convert: .zip, folder, or rdf.yaml")
    p.add_argument("-o", "--out", required=True, metavar="NEW.zip", help="the package to write (atomically)")
    p.add_argument("--trust-code", action="store_true",
                   help="allow running the package's architecture source file (Python code from the package), "
                        "needed for pytorch_state_dict weights")
    p.add_argument("--overwrite", action="store_true", help="replace NEW.zip if it exists (never the input)")
    p.add_argument("--json", action="store_true", help="print the conversion report as one JSON object")
    p.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS)
    p.set_defaults(func=_convert)


def _convert(args) -> int:
    from biozoo.runtime import InputError

    try:
        import bioimageio.spec  # noqa: F401
        import onnx  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        raise InputError(f"biozoo convert needs PyTorch, onnx and bioimageio.spec ({e.name or e} is missing): "
                         "pip install 'biozoo[train]'") from None
    from .convert import ConversionCheckError, convert_package

    try:
        report = convert_package(Path(args.package), Path(args.out), trust_code=args.trust_code,
                                 overwrite=args.overwrite)
    except ConversionCheckError as e:  # a check failed, not bad usage: exit 1 as `biozoo test` does
        print(f"biozoo: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.as_dict(), default=str))
        return 0
    lines = [f"package: {report.package}", f"sha256: {report.sha256}",
             f"converted: {report.source_format} -> {report.onnx} (opset 17, IR 8, {report.exporter})"
             + (f"; description format {report.format_read} written as 0.5" if report.format_read.startswith("0.4")
                else ""),
             f"biozoo test: {report.test['status']}"]
    for tid, r in report.test["outputs"].items():
        tol = r["tolerance"]
        lines.append(f"  output {tid}: max abs {r['max_abs_error']:.3g}, max rel {r['max_rel_error']:.3g} "
                     f"(tolerance abs {tol['absolute']:g} + rel {tol['relative']:g})")
    lines.append(f"bioimageio.spec: {report.spec}")
    print("\n".join(lines))
    return 0
