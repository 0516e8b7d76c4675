"""`biozoo validate`: bioimageio.spec's validation (offline, when installed) plus biozoo's own checks, among them
batch independence (a sample's output must not depend on the rest of its batch)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import BiozooError, InputError
from ..format.export_record import export_record_checks
from ..format.onnx_compat import portability_note
from ..format.onnx_scan import onnx_versions


def _check(name: str, fn: Callable[[], str]) -> dict[str, Any]:
    try:
        return {"name": name, "passed": True, "detail": fn()}
    except BiozooError as e:
        return {"name": name, "passed": False, "detail": str(e)}


def _file_references(model) -> str:
    rdf, pkg = model.package.rdf, model.package
    refs = [("weights.onnx", model.description.onnx)]
    if model.description.onnx.get("external_data"):
        refs.append(("weights.onnx.external_data", model.description.onnx["external_data"]))
    for kind in ("inputs", "outputs"):
        for i, t in enumerate(rdf[kind]):
            for key in ("test_tensor", "sample_tensor"):
                if t.get(key):
                    refs.append((f"{kind}[{i}].{key}", t[key]))
    if rdf.get("documentation"):
        refs.append(("documentation", rdf["documentation"]))
    refs += [(f"covers[{i}]", c) for i, c in enumerate(rdf.get("covers") or [])]
    refs += [(f"attachments[{i}]", a) for i, a in enumerate(rdf.get("attachments") or [])]
    for where, entry in refs:
        pkg.file(entry, where)
    return f"{len(refs)} referenced files present" + (", sha256 verified" if refs else "") + _other_weights(model)


def _other_weights(model) -> str:
    """The other weight formats' files (and a format 0.5 architecture file): biozoo never runs or imports them, but
    one that is in the package must be intact (a sha256 mismatch fails); a missing one is only noted, as real zoo
    packages name files they do not ship (`--consumers` says who is affected)."""
    missing, checked = [], 0
    for fmt, entry in (model.package.rdf.get("weights") or {}).items():
        if fmt == "onnx" or not isinstance(entry, dict):
            continue
        arch = entry.get("architecture")
        for where, ref in ((f"weights.{fmt}", entry), (f"weights.{fmt}.architecture", arch)):
            if not isinstance(ref, dict) or not isinstance(ref.get("source"), str) or "://" in ref["source"]:
                continue
            try:
                model.package.file(ref, where)
                checked += 1
            except BiozooError as e:
                if "sha256 mismatch" in str(e):
                    raise
                missing.append(f"{where} ({ref['source']})")
    note = f"; other weight formats: {checked} file(s) intact" if checked else ""
    return note + (f"; not in the package (biozoo does not need them): {', '.join(missing)}" if missing else "")


def _onnx_compat(model) -> str:
    """Which onnxruntime releases load the weights (information: the installed one has loaded them, or `load`
    would have failed); fails only when the rdf's opset_version contradicts the file."""
    import onnxruntime

    path = model.package.file(model.description.onnx, "weights.onnx")
    ir, opsets = onnx_versions(path)
    opset = opsets.get("", opsets.get("ai.onnx", 0))
    declared = model.description.onnx.get("opset_version")
    if declared is not None and int(declared) != opset:
        raise BiozooError(f"rdf.yaml says opset_version {declared}, the ONNX file has opset {opset}; fix rdf.yaml")
    return f"{portability_note(ir, opset)}; the installed onnxruntime {onnxruntime.__version__} loads it"


def spec_validation(source: Path) -> dict[str, Any]:
    """bioimageio.spec's validation, never online and never outside the package; 'skipped' when it is absent.

    bioimageio.spec runs with perform_io_checks=False (no downloads, no GitHub user look-ups, no URL checks) on the
    copy biozoo opened (zips unpacked under biozoo's limits); the hashes it compares come from biozoo, which hashed
    every referenced file inside the package itself (`known_files`). A description with an http(s) source, an
    absolute path or a '..' is never handed to it: the step is then not run and fails with the reason."""
    name = "bioimageio.spec"
    try:
        from bioimageio.spec import load_description
    except ImportError:
        return {"name": name, "passed": True, "skipped": True,
                "detail": "bioimageio.spec is not installed (pip install 'biozoo[train]'); spec validation skipped"}
    import re
    from pathlib import PurePosixPath

    from ..format.package import open_package, sha256_of
    from ..format.safe_yaml import load_yaml_file

    try:
        package = open_package(source)
        raw = load_yaml_file(package.rdf_path, "package description")  # as written: bioimageio.spec converts 0.4
    except BiozooError as e:
        return {"name": name, "passed": False, "skipped": True,
                "detail": f"not run: biozoo cannot open the package safely ({e}); bioimageio.spec is only given "
                          "packages biozoo opened"}
    outside, known = [], {}
    for where, text in _rdf_file_sources(raw):
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text):
            outside.append(f"{where}: {text}")
            continue
        relative = re.sub(r"^(conda|pip):", "", text)
        if where.endswith("architecture") and re.search(r"\.py:[^/]*$", relative):  # format 0.4: file.py:Class
            relative = relative.rsplit(":", 1)[0]
        pure = PurePosixPath(relative.replace("\\", "/"))
        if pure.is_absolute() or ".." in pure.parts or (pure.parts and ":" in pure.parts[0]):
            outside.append(f"{where}: {text}")
            continue
        try:
            path = package.inside(relative, where)
        except BiozooError:  # a link out of the package
            outside.append(f"{where}: {text}")
            continue
        if path.is_file():
            digest = sha256_of(path)
            known.update({text: digest, relative: digest, pure.as_posix(): digest})
    if outside:
        listed = "; ".join(outside[:3]) + (f" (and {len(outside) - 3} more)" if len(outside) > 3 else "")
        return {"name": name, "passed": False, "skipped": True,
                "detail": f"not run: the description references files outside the package ({listed}); "
                          "bioimageio.spec would download or read them, and biozoo never connects to a network or "
                          "reads outside a package. Put every file into the package and name it by a relative path"}
    try:
        descr = load_description(str(package.rdf_path), perform_io_checks=False, known_files=known)
    except Exception as e:  # bioimageio.spec raises parser/IO errors of many libraries
        return {"name": name, "passed": False, "detail": f"cannot be read: {type(e).__name__}: {e}"}
    summary = descr.validation_summary
    errors = [f"{'.'.join(map(str, e.loc))}: {e.msg}" for d in summary.details for e in d.errors]
    return {"name": name, "passed": summary.status in ("passed", "valid-format"),
            "detail": f"{summary.status} (bioimageio.spec {_spec_version()}, offline; file hashes from biozoo)",
            "errors": errors[:20]}


# keys whose values name files, in formats 0.4 and 0.5 (config is the package's own business and never read)
_FILE_KEYS = frozenset({"source", "documentation", "covers", "attachments", "files", "test_tensor", "sample_tensor",
                        "test_inputs", "test_outputs", "sample_inputs", "sample_outputs", "architecture",
                        "dependencies", "environment", "external_data", "icon"})


def _rdf_file_sources(rdf: Any) -> list[tuple[str, str]]:
    """(where, text) of every file reference in a raw description (for spec_validation)."""
    found: list[tuple[str, str]] = []

    def names(value: Any, where: str) -> None:
        if isinstance(value, str):
            found.append((where, value))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                names(v, f"{where}[{i}]")
        elif isinstance(value, dict):
            for k in ("source", "files"):
                if k in value:
                    names(value[k], f"{where}.{k}")

    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k == "config":
                    continue
                w = f"{where}.{k}" if where else str(k)
                (names if k in _FILE_KEYS else walk)(v, w)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]")

    walk(rdf, "")
    return found


def _spec_version() -> str:
    from importlib.metadata import version

    return version("bioimageio.spec")


def _batch_independence(model) -> dict[str, Any]:
    from ..checks.batch_independence import check_batch_independence

    result = check_batch_independence(model.engine)
    return {**result.as_dict(), "passed": result.status != "error", "detail": result.message}


def validate_package(source: Path, device: str = "cpu", skip_checks: Iterable[str] = (), consumers: bool = False,
                     require_consumers: Iterable[str] = ()) -> dict[str, Any]:
    """The checks (status failed when one fails) and, with `consumers`, the report of which bioimage.io consumers
    can run the package (format/consumers.py). The report is information: it changes the status only for the
    consumers named in `require_consumers` (a check "consumers" that fails when one of them cannot run it)."""
    from ..checks.report import parse_no_check
    from ..model import load

    skip = parse_no_check(skip_checks)
    checks: list[dict[str, Any]] = []
    try:
        model = load(source, device=device)
        checks.append({"name": "load", "passed": True, "detail": f"opened, description parsed, ops built, session on {model.provider}"})
        checks.append(_check("files", lambda: _file_references(model)))
        checks.append({"name": "io-binding", "passed": True,
                       "detail": model.session.binding_note or "ONNX inputs and outputs bound by name"})
        checks.append(_check("onnx-compatibility", lambda: _onnx_compat(model)))
        checks.extend(export_record_checks(model))
        if "batch-independence" not in skip:
            checks.append(_batch_independence(model))
    except BiozooError as e:
        checks.append({"name": "load", "passed": False, "detail": str(e)})
    if not source.exists():  # bioimageio.spec would take a missing path for a bioimage.io id and go online
        raise InputError(f"package '{source}' does not exist; expected a .zip, a folder, or an rdf.yaml path")
    checks.append(spec_validation(source))
    required, report = tuple(require_consumers), None
    if consumers or required:
        from ..format.consumers import consumer_report

        report = consumer_report(source)
        if required:
            unable = [c for c in required if not report[c]["ok"]]
            checks.append({"name": "consumers", "passed": not unable,
                           "detail": f"{', '.join(unable)} cannot run the package (see consumers)" if unable else
                           f"{', '.join(required)} can run the package"})
    result = {"source": str(source), "status": "passed" if all(c["passed"] for c in checks) else "failed",
              "checks": checks}
    return result if report is None else {**result, "consumers": report}
