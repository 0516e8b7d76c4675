"""The `biozoo` command line (contract in shared/DESIGN.md section 3).

Exit codes: 0 success, 1 a check failed (test/validate), 2 bad usage or bad input (message on stderr, no
traceback). `--json` prints exactly one JSON object on stdout. Commands of other layers (train, export, data) are
plugged in through the `biozoo.commands` entry-point group, so this module never imports torch.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from .checks.report import CHECKS, help_text
from .errors import BiozooError

log = logging.getLogger("biozoo")


# Text from a package (name, description, authors, ids) is written by strangers: control characters (C0, DEL, C1,
# ESC sequences), bidi overrides, line separators and lone surrogates are shown escaped (\x1b), never sent to the
# terminal. --json output is safe as is: json.dumps escapes all of them.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f"  # C0 but newline and tab, DEL, C1
                     "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"  # bidi marks and overrides
                     "\u2028\u2029\ud800-\udfff]")  # line/paragraph separators, lone surrogates
_UNSAFE_OR_NEWLINE = re.compile(_UNSAFE.pattern[:-1] + "\n\t]")


def printable(text: str, keep_newlines: bool = True) -> str:
    """`text` with every character that could drive the terminal escaped; newlines and tabs (our own format) stay
    unless keep_newlines is False."""
    pattern = _UNSAFE if keep_newlines else _UNSAFE_OR_NEWLINE
    return pattern.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def _printable_values(value: Any) -> Any:
    """A copy of a report with every string made printable on one line (for text output built from it)."""
    if isinstance(value, str):
        return printable(value, keep_newlines=False)
    if isinstance(value, dict):
        return {_printable_values(k): _printable_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_printable_values(v) for v in value)
    return value


class _PrintableFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


def _emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    if args.json:
        sys.stdout.write(json.dumps(payload, indent=None, default=str) + "\n")
    else:
        print(printable(text))



def cmd_info(args) -> int:
    from .commands.info import format_info, model_info
    from .model import load

    info = model_info(load(args.package, device=args.device))
    _emit(args, info, format_info(_printable_values(info)))  # a package's newlines must not forge our lines
    return 0


def _log_checks(checks: list[dict[str, Any]]) -> None:
    """Warnings and errors of the input checks on stderr (stdout stays one JSON object with --json)."""
    for c in checks:
        if c["status"] in ("warning", "error"):
            where = f"{c['input']}: " if c.get("input") else ""
            log.warning("%s [%s] %s%s", c["status"], c["name"], where, c["message"])


def cmd_test(args) -> int:
    from .checks.report import parse_no_check
    from .model import load

    skip = parse_no_check(args.no_check)
    report = load(args.package, device=args.device).test(skip_checks=skip)
    lines = [f"{report['name']}: {report['status'].upper()} on {report['provider']}"]
    if report.get("error"):  # the package could not run its own test input: say why
        lines.append(f"  error: {report['error']}")
    for tid, r in report["outputs"].items():
        detail = r.get("reason") or (
            f"max abs {r['max_abs_error']:.3g}, max rel {r['max_rel_error']:.3g}, "
            f"{r['mismatched_per_million']:.1f} mismatched/million (allowed {r['tolerance']['mismatched_per_million']:g})"
        )
        lines.append(f"  output {tid}: {'ok' if r['passed'] else 'FAILED'} ({detail})")
    for c in report["size_checks"]:
        lines.append(f"  sizes {c['input_shapes']}: {'ok' if c['passed'] else 'FAILED ' + c.get('reason', '')}")
    for c in report.get("checks", []):
        lines.append(f"  check {c['name']}: {c['status']} ({c['message']})")
    _emit(args, report, "\n".join(lines))
    return 0 if report["status"] == "passed" else 1


def cmd_validate(args) -> int:
    from .commands.validate import validate_package
    from .format.consumers import parse_consumers

    required = parse_consumers(args.require_consumers) if args.require_consumers else ()
    report = validate_package(Path(args.package), skip_checks=args.no_check, consumers=args.consumers,
                              require_consumers=required)
    lines = [f"{args.package}: {report['status'].upper()}"]
    for c in report["checks"]:
        lines.append(f"  {'ok' if c['passed'] else 'FAILED'} {c['name']}: {c['detail']}")
        lines += [f"      {e}" for e in c.get("errors", [])]
    if "consumers" in report:
        lines.append("  consumers (what each one's documented requirements allow; --json has the sources):")
        for name, r in _printable_values(report["consumers"]).items():
            runs = f" with {', '.join(r['weights'])}" if r["weights"] else ""
            lines.append(f"    {'ok' if r['ok'] else 'no'} {name}: " + (
                f"can run it{runs} ({r['rules_checked']} rules)" if r["ok"] else "; ".join(r["reasons"])))
    _emit(args, report, "\n".join(lines))
    return 0 if report["status"] == "passed" else 1


def cmd_predict(args) -> int:
    from .errors import InputError
    from .checks.input_checks import MEMORY_ENV
    from .commands.predict_files import predict_files

    try:
        summary = predict_files(
            args.package, args.inputs, Path(args.output), axes=args.axes, tile=args.tile, device=args.device,
            suffix=args.format, quiet=args.quiet, pixel_size=args.pixel_size, rescale=args.rescale, mask=args.mask,
            ignore_value=args.ignore_value, no_check=args.no_check, overwrite=args.overwrite, memory=args.memory,
            workers=args.workers, scheduler=args.scheduler, resume=args.resume, threads=args.threads,
        )
    except MemoryError as e:  # the up-front estimate is a lower bound: say so in one line, nothing half-written
        raise InputError(f"out of memory during the prediction ({e or 'MemoryError'}); no output of the failing "
                         f"input was written. Predict a smaller or downsampled image, or lower ${MEMORY_ENV} so "
                         "that biozoo refuses such inputs up front") from None
    _log_checks(summary["checks"])
    from .commands.predict_distributed import format_summary

    text = "\n".join(f"{item['input']} -> {', '.join(item['written'].values())}"
                     + (f"\n{format_summary(item['distributed'])}" if "distributed" in item else "")
                     for item in summary["items"])
    _emit(args, summary, text)
    return 0


def cmd_bench(args) -> int:
    from .commands.bench import format_bench, run_bench
    from .model import load

    result = run_bench(load(args.package, device=args.device), args.size, runs=args.runs, vs_core=args.vs_core)
    _emit(args, result, format_bench(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="biozoo", description="Run, test and validate bioimage.io model packages.")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars or info messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def command(name: str, fn, help_text: str, device: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("package", metavar="PACKAGE", help="model package: .zip, folder, or rdf.yaml")
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        p.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS)
        if device:
            p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
        p.set_defaults(func=fn)
        return p

    def no_check(p: argparse.ArgumentParser) -> None:
        p.add_argument("--no-check", action="append", default=[], metavar="NAME",
                       help=f"turn one check off (repeatable): {', '.join(CHECKS)}")

    command("info", cmd_info, "show a package's tensors, axes, sizes, ops, weights, license and citation")
    p = command("validate", cmd_validate, "bioimageio.spec validation plus biozoo's own checks (incl. batch "
                                          "independence)", device=False)
    no_check(p)
    p.add_argument("--consumers", action="store_true", help="also report, per consumer (biozoo, bioimageio.core, "
                   "ilastik, deepImageJ, BiaPy), whether the package meets its documented requirements, and why not; "
                   "a report: the exit status does not depend on it")
    p.add_argument("--require-consumers", metavar="NAMES", help="comma-separated consumers that must be able to run "
                   "the package (implies --consumers); exit 1 when one cannot, e.g. --require-consumers biapy,ilastik")
    no_check(command("test", cmd_test, "reproduce the package's test tensors within its tolerance; probe other sizes; "
                                       "check batch independence; report the input checks on the test tensors"))
    p = command("predict", cmd_predict, "run a model on TIFF/NPY/PNG files; write TIFF or NPY. Every input is checked "
                                        "against the model's training conditions (see --no-check)")
    p.add_argument("inputs", metavar="INPUT", nargs="+", help="image files; for multi-input models ID=FILE")
    p.add_argument("-o", "--output", required=True, help="output file (one input) or folder")
    p.add_argument("--axes", help="axes of the input files, e.g. yx, cyx, zyx (default: from the file or the model)")
    p.add_argument("--tile", help="tile size per space axis, e.g. 512,512 (default: whole image within a budget)")
    p.add_argument("--format", choices=("tif", "npy", "ome.zarr"), default="tif", help="output format for folder outputs")
    p.add_argument("--pixel-size", metavar="Y,X", help="input pixel size in micrometers, one value or one per space "
                   "axis (e.g. 0.65,0.65; units like 325nm allowed); overrides the TIFF/OME/ImageJ metadata")
    p.add_argument("--rescale", action="store_true", help="when the input pixel size differs from the training one by "
                   "more than 10%%: resample to the training resolution (linear), predict, resample back (nearest "
                   "neighbour for labels); without it such an input is refused")
    p.add_argument("--mask", metavar="FILE", help="image of the input's size: non-zero = pixels to use; the others are "
                   "left out of the normalization statistics and get 0 (labels, probabilities) or NaN (other float "
                   "outputs) in the outputs")
    p.add_argument("--ignore-value", type=float, metavar="V", help="treat pixels equal to V as masked (as --mask). "
                   "Without --mask/--ignore-value, solid regions of 0 or of the image maximum covering > 20%% of the "
                   "image are masked automatically (check masked-normalization)")
    p.add_argument("--overwrite", action="store_true", help="replace output files that exist (never an input, the "
                   "mask or the package: those are refused always)")
    p.add_argument("--memory", metavar="BYTES", help="memory budget of the whole process, e.g. 2GB, 512MB "
                   "(default: the memory available, or $BIOZOO_MEMORY_LIMIT). Tiles are sized from it, counting the "
                   "network's measured activation memory (see biozoo info); images larger than it are read "
                   "lazily and written tile by tile. An explicit --tile wins. With --scheduler: per worker")
    p.add_argument("--workers", type=int, metavar="N", help="predict block by block on a local Dask cluster of N "
                   "worker processes (pip install 'biozoo[distributed]'); .npy/TIFF/Zarr/OME-Zarr in and out")
    p.add_argument("--scheduler", metavar="ADDRESS", help="predict block by block on an existing dask.distributed "
                   "cluster, e.g. tcp://10.0.0.5:8786 (its workers need biozoo and see the same files)")
    p.add_argument("--threads", type=int, metavar="T", help="onnxruntime threads (default: onnxruntime's choice; with "
                   "--workers, the cores divided by N per worker)")
    p.add_argument("--resume", action="store_true", help="with --workers/--scheduler: continue a run that did not "
                   "finish (crash, kill), skipping the blocks it wrote; refused when anything about the run changed")
    no_check(p)
    p.epilog = ("checks (all on by default): " + help_text() + ". Memory: the prediction's need is estimated from "
                "the file headers before any pixel is read; tiles are sized from the budget (--memory, default the "
                "memory available or BIOZOO_MEMORY_LIMIT) counting the network's measured activation memory; an "
                "image whose whole-image arrays do not fit is streamed (read lazily, written tile by tile: .npy, "
                "TIFF, Zarr/OME-Zarr; --mask/--ignore-value apply tile by tile; --rescale resamples band by band "
                "into a temporary folder beside the output), else refused up front")
    p = command("bench", cmd_bench, "biozoo predict vs raw onnxruntime (and bioimageio.core) in one run")
    p.add_argument("--size", type=int, default=2048, help="length of every space axis of the random input")
    p.add_argument("--runs", type=int, default=5, help="timed runs per contender (median reported)")
    p.add_argument("--vs-bioimageio-core", dest="vs_core", action="store_true", help="also time bioimageio.core")
    _add_plugins(sub)
    return parser


def _add_plugins(sub) -> None:
    """Commands of other layers register here via the `biozoo.commands` entry points (each has register(sub))."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="biozoo.commands"):
        ep.load()(sub)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PrintableFormatter("biozoo: %(message)s"))
    logging.basicConfig(level=logging.WARNING if args.quiet or getattr(args, "json", False) else logging.INFO,
                        handlers=[handler])
    try:
        return args.func(args)
    except BiozooError as e:
        print(printable(f"biozoo: error: {e}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("biozoo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
