"""`biozoo export RUN_DIR -o PACKAGE.zip`, plugged into the CLI via the biozoo.commands entry points.

Imports torch only when the command runs, so `biozoo info` and friends stay torch-free.
"""
from __future__ import annotations

import json
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
    p.add_argument("--json", action="store_true", help="print the export report as one JSON object")
    p.set_defaults(func=_export)


def _export(args) -> int:
    from .export import export_run

    report = export_run(Path(args.run_dir), Path(args.out), authors=tuple(args.authors or ("biozoo",)),
                        license=args.license, opset=args.opset, name=args.name)
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        p = report.parity
        print(f"package: {report.package}\nsha256: {report.sha256}\n"
              f"parity torch vs onnxruntime: max abs {p['max_abs_error']:.3g}, max rel {p['max_rel_error']:.3g}\n"
              f"batch independence: max difference {report.batch_independence['max_abs_difference']:.3g}\n"
              f"biozoo test: {report.test['status']}")
    return 0
