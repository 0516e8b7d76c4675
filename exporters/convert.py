"""`biozoo convert`: give a bioimage.io package that ships only torchscript / pytorch_state_dict weights the ONNX
weights biozoo runs, once, and prove them before anything is written.

The route is the honest one: the new package is staged in a temporary folder with every original file, the ONNX
entry added (`parent` names the weights it came from), and then checked as a user would check it: biozoo's runtime
must reproduce the package's own test outputs within the package's tolerance (`Model.test()`, the same as
`biozoo test`), and bioimageio.spec must accept the description (offline). Only then is the zip written,
deterministically and atomically. A format-0.4 package is read through the runtime's edge conversion and written as
format 0.5 (same files).
"""
from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import yaml

from biozoo.runtime import BiozooError, ExportError, InputError
from biozoo.runtime.format import Package, open_package, parse_description, sha256_of

from .zipper import write_deterministic_zip

_PENDING = "weights.onnx"  # a placeholder so the runtime's parser reads the tensors of a package without ONNX yet


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where `1e-05` (no dot) is a string; rdf.yaml files are YAML 1.2, where it is a float
    (bioimageio.spec writes `absolute_tolerance: 1e-05`). Read with the 1.2 rule, so rewriting the description
    keeps a number a number instead of quoting it into a string."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+$"), list("-+.0123456789"))


def load_yaml12(text: str) -> Any:
    """yaml.safe_load with YAML 1.2's floats (`1e-05` is a number)."""
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 (a SafeLoader subclass)


def read_rdf(path: Path) -> dict[str, Any]:
    """The description at `path` as a dict, numbers read by the YAML 1.2 rules; format 0.4 converted to 0.5 by the
    runtime's edge conversion (same file references)."""
    rdf = load_yaml12(Path(path).read_text(encoding="utf-8"))
    if not isinstance(rdf, dict):
        raise InputError(f"{Path(path).name} must hold a mapping; got {type(rdf).__name__}")
    if str(rdf.get("format_version", "")).startswith("0.4."):
        from biozoo.runtime.format import convert_v04

        rdf = convert_v04(rdf)
    return rdf


class ConversionCheckError(ExportError):
    """The converted package failed a check (reproduction of the test outputs, spec validation): exit code 1."""


@dataclass(frozen=True)
class ConvertReport:
    package: Path
    sha256: str
    source: str
    source_format: str
    onnx: str
    exporter: str
    format_read: str
    test: dict[str, Any] = field(default_factory=dict)
    spec: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "package": str(self.package)}


def convert_package(source: str | Path, out: str | Path, *, trust_code: bool = False,
                    overwrite: bool = False) -> ConvertReport:
    """Write `out` (.zip): the package at `source` plus ONNX weights converted from its torchscript (preferred) or,
    with `trust_code`, its pytorch_state_dict weights. Raises InputError for what the caller can fix and
    ConversionCheckError when the converted weights do not reproduce the test outputs; nothing is written then."""
    from .convert_torch import example_inputs, export_converted, load_torch_model, pick_source_format

    source, out = Path(source).expanduser(), Path(out).expanduser()
    _check_destination(source, out, overwrite)
    package = open_package(source)
    rdf = read_rdf(package.rdf_path)  # format 0.5 (a 0.4 package converted), numbers as numbers
    weights = rdf.get("weights")
    if not isinstance(weights, Mapping) or not weights:
        raise InputError(f"'{source}' has no 'weights' entry in {package.rdf_path.name}; nothing to convert")
    if "onnx" in weights:
        raise InputError(f"'{source}' already has ONNX weights (weights.onnx: {_source_of(weights['onnx'])}); "
                         f"nothing to convert: run it as it is (biozoo test {source})")
    fmt = pick_source_format(weights, trust_code, str(source))
    description = parse_description({**rdf, "weights": {**weights, "onnx": {"source": _PENDING}}})
    for i, t in enumerate(description.outputs):  # a corrupted file is the input's fault: say so before any work
        if t.test_tensor is not None:
            package.file(t.test_tensor, f"outputs[{i}].test_tensor")
    model = load_torch_model(package, fmt)
    examples = example_inputs(package, description)
    staging = Path(tempfile.mkdtemp(prefix="biozoo-convert-"))
    try:
        _copy_package(package, staging, skip=(out, source))
        onnx_name = _free_name(staging, "weights.onnx")
        files = export_converted(model, examples, description, staging / onnx_name)
        rdf["weights"] = {**weights, "onnx": _onnx_entry(files, fmt)}
        rdf_path = staging / package.rdf_path.name
        rdf_path.write_text(yaml.safe_dump(rdf, sort_keys=False, allow_unicode=True), encoding="utf-8")
        test = _self_test(rdf_path, fmt)
        spec = _spec_validation(rdf_path, rdf)
        _check_destination(source, out, overwrite)  # again: the path may have appeared while converting
        write_deterministic_zip(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ConvertReport(out, sha256_of(out), str(source), fmt, onnx_name, files.exporter,
                         package.converted_from or str(rdf.get("format_version")), test, spec)


def _check_destination(source: Path, out: Path, overwrite: bool) -> None:
    if out.suffix.lower() != ".zip":
        raise InputError(f"-o is '{out}'; expected a path ending in .zip (the converted package is written as a zip)")
    if out.exists() and source.exists() and out.resolve() == source.resolve():
        raise InputError(f"-o '{out}' is the input package; write the converted package to a new path")
    if out.is_dir():
        raise InputError(f"-o '{out}' is a folder; expected the path of the .zip to write")
    if out.exists() and not overwrite:
        raise InputError(f"'{out}' exists; pass --overwrite to replace it, or choose another path")


def _source_of(entry: Any) -> Any:
    return entry.get("source") if isinstance(entry, Mapping) else entry


def _package_files(package: Package, skip: tuple[Path, ...]) -> Iterator[Path]:
    """Every file of the package except biozoo's own markers (hidden names), caches and the description itself
    (rewritten), without following links out of the package."""
    root = package.root.resolve()
    skipped = {p.resolve() for p in skip if p.exists()} | {package.rdf_path.resolve()}
    for path in sorted(package.root.rglob("*")):
        rel = path.relative_to(package.root)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts) or not path.is_file():
            continue
        resolved = path.resolve()
        if resolved in skipped or not resolved.is_relative_to(root):
            continue
        yield path


def _copy_package(package: Package, staging: Path, skip: tuple[Path, ...]) -> None:
    for path in _package_files(package, skip):
        dest = staging / path.relative_to(package.root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)


def _free_name(folder: Path, name: str) -> str:
    """`name`, or a variant when the package carries a stale, unreferenced file of that name."""
    stem, suffix = name.rsplit(".", 1)
    candidates = [name, f"{stem}_converted.{suffix}", *(f"{stem}_converted_{i}.{suffix}" for i in range(2, 100))]
    for candidate in candidates:
        if not (folder / candidate).exists() and not (folder / f"{candidate}.data").exists():
            return candidate
    raise ExportError(f"no free file name for the ONNX weights in the package (tried {name} and 98 variants)")


def _onnx_entry(files, parent: str) -> dict[str, Any]:
    from importlib.metadata import version

    import torch

    entry: dict[str, Any] = {
        "source": files.graph.name,
        "sha256": sha256_of(files.graph),
        "opset_version": files.opset,
        "parent": parent,
        "comment": f"Converted from {parent} by biozoo {version('biozoo')} convert (torch {torch.__version__}, "
                   f"{files.exporter}, IR {files.ir_version}).",
    }
    if files.external_data is not None:
        entry["external_data"] = {"source": files.external_data.name, "sha256": sha256_of(files.external_data)}
    return entry


def _self_test(rdf_path: Path, parent: str) -> dict[str, Any]:
    """biozoo's own test of the staged package; refuse (ConversionCheckError) with the numbers when it fails."""
    from biozoo.runtime import load

    try:
        report = load(rdf_path, device="cpu").test()
    except BiozooError as e:
        raise ExportError(f"biozoo's runtime cannot open the converted package: {e}; "
                          "this is a biozoo bug when the input package is valid: please report it") from None
    outputs = {tid: {k: r.get(k) for k in ("passed", "max_abs_error", "max_rel_error", "mismatched_per_million",
                                           "tolerance", "reason") if r.get(k) is not None}
               for tid, r in report["outputs"].items()}
    summary = {"status": report["status"], "outputs": outputs}
    if report["status"] == "passed":
        return summary
    problems = [_describe_output(tid, r) for tid, r in report["outputs"].items() if not r.get("passed")]
    problems += [f"sizes {c['input_shapes']}: {c.get('reason', 'failed')}" for c in report["size_checks"]
                 if not c.get("passed")]
    problems += [f"{c['name']}: {c['message']}" for c in report.get("checks", [])
                 if c.get("name") == "batch-independence" and c.get("status") == "error"]
    if report.get("error"):
        problems.append(str(report["error"]))
    raise ConversionCheckError(
        f"the ONNX weights converted from {parent} do not reproduce the package's test outputs, so nothing was "
        f"written: {'; '.join(problems)}. If the {parent} weights themselves reproduce them (bioimageio.core: "
        f"`bioimageio test PACKAGE --weight-format {parent}`), the conversion is at fault: report it to biozoo; "
        "otherwise the package's test tensors do not match its weights"
    )


def _describe_output(tid: str, r: Mapping[str, Any]) -> str:
    if r.get("reason"):
        return f"output '{tid}': {r['reason']}"
    tol = r["tolerance"]
    return (f"output '{tid}': max abs difference {r['max_abs_error']:.3g}, "
            f"max rel difference {r['max_rel_error']:.3g}, "
            f"{r['mismatched_per_million']:.1f} mismatched elements per million (tolerance: |actual - expected| <= "
            f"{tol['absolute']:g} + {tol['relative']:g} * |expected|, at most {tol['mismatched_per_million']:g} "
            "mismatched per million)")


def _spec_validation(rdf_path: Path, rdf: Mapping[str, Any]) -> str:
    """bioimageio.spec with IO checks on the package's (local) files, offline: every URL of the description is
    passed as already known, so the spec's existence check (an HTTP HEAD per URL) never runs."""
    try:
        from bioimageio.spec import load_description
    except ImportError:
        raise InputError("biozoo convert validates what it writes with bioimageio.spec, which is not installed: "
                         "pip install 'biozoo[train]'") from None
    known: dict[str, Optional[str]] = {url: None for url in _urls(rdf)}
    try:
        descr = load_description(str(rdf_path), perform_io_checks=True, known_files=known)
    except Exception as e:  # bioimageio.spec raises parser/IO errors of many libraries
        raise ConversionCheckError(f"bioimageio.spec cannot read the converted description: {type(e).__name__}: "
                                   f"{e}; nothing was written") from None
    summary = descr.validation_summary
    if summary.status in ("passed", "valid-format"):
        return str(summary.status)
    errors = [f"{'.'.join(map(str, e.loc))}: {e.msg}" for d in summary.details for e in d.errors]
    raise ConversionCheckError(
        f"bioimageio.spec finds the converted description invalid ({summary.status}), so nothing was written: "
        f"{'; '.join(errors[:10]) or 'no details'}. Run `biozoo validate` on the original package: the same errors "
        "there are the package's own and must be fixed in its rdf.yaml first"
    )


def _urls(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        if value.startswith(("http://", "https://")):
            yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _urls(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _urls(v)
