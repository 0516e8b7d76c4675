"""Which bioimage.io consumers can run a package: the rules of consumer_rules.RULES evaluated on its description.

The package is opened like every other (zip, folder or rdf.yaml; format 0.4 converted at the edge) and only read:
no network, nothing executed, no weights loaded. Files the rules depend on (weights, the architecture source of a
state dict) must be inside the package, and their sha256 must match when the description gives one. Each check
kind is one function of (rule, facts) returning the reasons it fails; a consumer is ok when no rule fails.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Callable, Mapping, Optional, Sequence

from ..errors import BiozooError, InputError, PackageError
from . import rdf_fields as F
from .consumer_rules import CONSUMERS, RULES, Rule
from .description import DataDependentSize, ParameterizedSize, SizeReference, _parse_tensor

_FLOAT_CASTS = ("float32", "float64", "float16")


@dataclass(frozen=True)
class TensorFacts:
    id: str
    letters: str  # b, c, i, t and the space axis ids, in order
    dtype: str
    space_sizes: tuple[str, ...]  # per space axis: fixed | parameterized | reference | data-dependent | unset
    processing: tuple[tuple[str, Mapping[str, Any]], ...]  # as written: preprocessing (inputs), postprocessing


@dataclass(frozen=True)
class ArchitectureFacts:
    kind: str  # file | library | missing
    name: str  # the source file or the import_from module
    callable: str
    kwargs: Optional[Mapping[str, Any]]  # None when the description writes none
    defects: tuple[str, ...]


@dataclass(frozen=True)
class WeightsFacts:
    format: str
    defects: tuple[str, ...]  # the weights file itself: missing, outside the package, sha256 mismatch
    opset: Optional[int] = None
    architecture: Optional[ArchitectureFacts] = None


@dataclass(frozen=True)
class Facts:
    format_version: str  # as written (0.4.x before the edge conversion)
    tags: tuple[str, ...]
    inputs: tuple[TensorFacts, ...]
    outputs: tuple[TensorFacts, ...]
    weights: Mapping[str, WeightsFacts]


# --------------------------------------------------------------------------------------------- reading facts
def read_facts(source: Any) -> Facts:
    """The facts of the package at `source`; a PackageError when it cannot be opened or its fields are malformed."""
    from .package import open_package

    package = open_package(source)
    rdf = package.rdf
    raw_weights = _raw_v04_weights(package) if package.converted_from else None
    weights = F.mapping(rdf.get("weights"), "weights", default={})
    return Facts(
        format_version=package.converted_from or F.text(rdf.get("format_version"), "format_version"),
        tags=tuple(t for t in F.listing(rdf.get("tags"), "tags", default=[]) if isinstance(t, str)),
        inputs=tuple(_tensor(t, "inputs", i, "preprocessing") for i, t in enumerate(_listed(rdf, "inputs"))),
        outputs=tuple(_tensor(t, "outputs", i, "postprocessing") for i, t in enumerate(_listed(rdf, "outputs"))),
        weights={str(fmt): _weights(package, str(fmt), F.mapping(entry, f"weights.{fmt}"), raw_weights)
                 for fmt, entry in weights.items()},
    )


def _listed(rdf: Mapping[str, Any], key: str) -> list:
    value = rdf.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, Mapping) for v in value):
        raise PackageError(f"rdf.yaml field '{key}' must be a non-empty list of tensor descriptions; got "
                           f"{F.shown(value)}")
    return value


def _tensor(raw: Mapping[str, Any], kind: str, index: int, proc_key: str) -> TensorFacts:
    parsed = _parse_tensor(raw, kind, index, proc_key)  # typed: a malformed field is a PackageError naming it
    steps = []
    for j, entry in enumerate(F.listing(raw.get(proc_key), f"{kind}[{index}].{proc_key}", default=[])):
        step = F.mapping(entry, f"{kind}[{index}].{proc_key}[{j}]")
        steps.append((F.text(step.get("id"), f"{kind}[{index}].{proc_key}[{j}].id"),
                      F.mapping(step.get("kwargs"), f"{kind}[{index}].{proc_key}[{j}].kwargs", default={})))
    return TensorFacts(id=parsed.id, letters=parsed.letters, dtype=parsed.dtype,
                       space_sizes=tuple(_size_kind(a.size) for a in parsed.axes if a.type == "space"),
                       processing=tuple(steps))


def _size_kind(size: Any) -> str:
    if isinstance(size, int):
        return "fixed"
    if isinstance(size, ParameterizedSize):
        return "parameterized"
    if isinstance(size, SizeReference):
        return "reference"
    if isinstance(size, DataDependentSize):
        return "data-dependent"
    return "unset"


def _raw_v04_weights(package) -> Mapping[str, Any]:
    """The weights of a format-0.4 description as written (the conversion fills in kwargs that BiaPy reads)."""
    from .safe_yaml import load_yaml_file

    raw = load_yaml_file(package.rdf_path, "package description")
    return raw.get("weights") if isinstance(raw, Mapping) and isinstance(raw.get("weights"), Mapping) else {}


def _file_defects(package, entry: Mapping[str, Any], where: str) -> tuple[str, ...]:
    """Why `entry` ({source, sha256}) is not a verified file of the package; () when it is."""
    source = entry.get("source")
    if isinstance(source, str) and source.startswith(("http://", "https://")):
        return (f"{where} is a URL ({source}), not a file in the package",)
    try:
        package.file(entry, where)
    except PackageError as e:
        return (str(e),)
    return ()


def _weights(package, fmt: str, entry: Mapping[str, Any], raw_v04: Optional[Mapping[str, Any]]) -> WeightsFacts:
    defects = _file_defects(package, entry, f"weights.{fmt}")
    opset = entry.get("opset_version") if fmt == "onnx" else None
    opset = F.integer(opset, "weights.onnx.opset_version", minimum=1) if opset is not None else None
    arch = None
    if fmt == "pytorch_state_dict":
        raw_entry = raw_v04.get(fmt) if isinstance(raw_v04, Mapping) else None
        arch = _architecture(package, entry.get("architecture"), raw_entry)
    return WeightsFacts(fmt, defects, opset, arch)


def _architecture(package, raw: Any, raw_v04: Optional[Mapping[str, Any]]) -> ArchitectureFacts:
    where = "weights.pytorch_state_dict.architecture"
    if raw is None:
        return ArchitectureFacts("missing", "", "", None, (f"{where} is missing",))
    arch = F.mapping(raw, where)
    kwargs: Any = arch.get("kwargs")
    if raw_v04 is not None:  # 0.4 writes kwargs beside the architecture string
        kwargs = raw_v04.get("kwargs")
    kwargs = None if kwargs is None else F.mapping(kwargs, f"{where}.kwargs")
    callable_ = F.text(arch.get("callable"), f"{where}.callable", default="")
    if arch.get("import_from") is not None:
        return ArchitectureFacts("library", F.text(arch["import_from"], f"{where}.import_from"), callable_, kwargs, ())
    source = F.text(arch.get("source"), f"{where}.source", default="")
    if not source:
        return ArchitectureFacts("missing", "", callable_, kwargs, (f"{where} has neither source nor import_from",))
    return ArchitectureFacts("file", source, callable_, kwargs, _file_defects(package, arch, where))


# ------------------------------------------------------------------------------------------------ the checks
def _weights_check(rule: Rule, facts: Facts) -> list[str]:
    usable, dropped = usable_weights(rule, facts)
    if usable:
        return []
    if dropped:
        return [f"no usable {' or '.join(rule.allowed)} weights: {'; '.join(dropped)}"]
    return [f"needs {' or '.join(rule.allowed)} weights; the package has {', '.join(sorted(facts.weights)) or 'none'}"]


def usable_weights(rule: Rule, facts: Facts) -> tuple[list[str], list[str]]:
    """(formats of the package the weights rule's consumer can run, why each other allowed one cannot be run)."""
    usable, dropped = [], []
    for fmt in rule.allowed:
        w = facts.weights.get(fmt)
        if w is None:
            continue
        problems = list(w.defects)
        limit = rule.params.get("onnx_max_opset")
        if fmt == "onnx" and limit is not None and w.opset is not None and w.opset > limit:
            problems.append(f"ONNX opset {w.opset} is above the newest it runs ({limit})")
        if fmt == "pytorch_state_dict" and w.architecture is not None:
            problems += _architecture_problems(rule, w.architecture)
        if problems:
            dropped.append(f"{fmt}: {'; '.join(problems)}")
        else:
            usable.append(fmt)
    return usable, dropped


def _architecture_problems(rule: Rule, arch: ArchitectureFacts) -> list[str]:
    mode = rule.params.get("architecture", "file_or_library")
    if arch.kind == "library":
        allowed = tuple(rule.params.get("import_from", ()))
        if mode == "file_or_library" or arch.name.split(".")[0] in allowed:
            return []
        shipped = f" (it ships {', '.join(allowed)})" if allowed else ""
        return [f"the architecture is imported from the library '{arch.name}', which {rule.consumer} does not "
                f"ship{shipped}; put the architecture's source file into the package (architecture.source + sha256)"]
    if arch.kind == "file" and PurePosixPath(arch.name).suffix != ".py":
        return [f"the architecture source '{arch.name}' is not a Python file"]
    return list(arch.defects)


def _format_version(rule: Rule, facts: Facts) -> list[str]:
    if facts.format_version.startswith(tuple(rule.allowed)):
        return []
    return [f"format_version is {facts.format_version}; it reads {' and '.join(a + 'x' for a in rule.allowed)}"]


def _count(kind: str) -> Callable[[Rule, Facts], list[str]]:
    def check(rule: Rule, facts: Facts) -> list[str]:
        tensors = getattr(facts, kind)
        if len(tensors) in rule.allowed:
            return []
        return [f"the package has {len(tensors)} {kind} ({', '.join(t.id for t in tensors)}); it takes "
                f"{' or '.join(map(str, rule.allowed))}"]
    return check


def _input_axes(rule: Rule, facts: Facts) -> list[str]:
    return [f"input '{t.id}' has axes '{t.letters}'; it takes {' or '.join(rule.allowed)}"
            for t in facts.inputs if t.letters not in rule.allowed]


def _data_types(rule: Rule, facts: Facts) -> list[str]:
    return [f"tensor '{t.id}' is {t.dtype}; it handles {', '.join(rule.allowed)}"
            for t in (*facts.inputs, *facts.outputs) if t.dtype not in rule.allowed]


def _processing(rule: Rule, facts: Facts) -> list[str]:
    stage = rule.params.get("stage", "both")
    tensors = [*(facts.inputs if stage != "post" else ()), *(facts.outputs if stage != "pre" else ())]
    reasons = []
    for t in tensors:
        steps = [(i, k) for i, k in t.processing
                 if not (rule.params.get("ignore_float_casts") and i == "ensure_dtype"
                         and str(k.get("dtype")) in _FLOAT_CASTS)]
        unknown = sorted({i for i, _ in steps if rule.allowed and i not in rule.allowed})
        if unknown:
            reasons.append(f"tensor '{t.id}' uses {', '.join(unknown)}; it implements {', '.join(rule.allowed)}")
        limit = rule.params.get("max_steps")
        if limit is not None and len(steps) > limit:
            reasons.append(f"input '{t.id}' has {len(steps)} preprocessing steps ({', '.join(i for i, _ in steps)})"
                           f"; it takes at most {limit}")
        for op, keys in dict(rule.params.get("required_kwargs", {})).items():
            for i, kwargs in steps:
                missing = [k for k in keys if i == op and k not in kwargs]
                if missing:
                    reasons.append(f"tensor '{t.id}': {op} does not write {', '.join(missing)}")
    return reasons


def _tags_any(rule: Rule, facts: Facts) -> list[str]:
    if set(facts.tags) & set(rule.allowed):
        return []
    return [f"no workflow tag among the package's tags {list(facts.tags)}; it needs one of {', '.join(rule.allowed)}"]


def _state_dict_architecture(facts: Facts) -> Optional[ArchitectureFacts]:
    w = facts.weights.get("pytorch_state_dict")
    return w.architecture if w is not None else None  # no state dict: the weights rule says so


def _architecture_kwargs(rule: Rule, facts: Facts) -> list[str]:
    arch = _state_dict_architecture(facts)
    if arch is None or arch.kind == "missing":
        return []
    if arch.kwargs is None:
        return ["the state dict's architecture writes no kwargs"]
    return [f"the architecture kwargs hold '{k}'" for k in rule.params.get("forbidden", ()) if k in arch.kwargs]


def _architecture_classes(rule: Rule, facts: Facts) -> list[str]:
    arch = _state_dict_architecture(facts)
    if arch is None or arch.kind == "missing":
        return []
    kwargs = arch.kwargs or {}
    for key in rule.allowed:
        if key in kwargs:
            value = kwargs[key]
            value = value[-1] if isinstance(value, list) and value else value
            if isinstance(value, int) and not isinstance(value, bool):
                return []
            return [f"the architecture kwarg '{key}' is {F.shown(value)}, not a number of classes"]
    known = rule.params.get("known_architectures", ())
    names = (arch.callable.lower(), PurePosixPath(arch.name).stem.lower())
    if any(n in known for n in names):
        return []
    return [f"the architecture kwargs name no number of classes ({', '.join(rule.allowed)})"]


def _output_space_sizes(rule: Rule, facts: Facts) -> list[str]:
    reasons = []
    for t in facts.outputs:
        if not t.space_sizes:
            reasons.append(f"output '{t.id}' has no space axis (a list, not an image); it needs image outputs")
        elif any(k not in rule.allowed for k in t.space_sizes):
            reasons.append(f"output '{t.id}' has space sizes {list(t.space_sizes)}; it needs "
                           f"{' or '.join(rule.allowed)} sizes")
    return reasons


CHECKS: dict[str, Callable[[Rule, Facts], list[str]]] = {
    "weights": _weights_check, "format_version": _format_version, "inputs_count": _count("inputs"),
    "outputs_count": _count("outputs"), "input_axes": _input_axes, "data_types": _data_types,
    "processing": _processing, "tags_any": _tags_any, "architecture_kwargs": _architecture_kwargs,
    "architecture_classes": _architecture_classes, "output_space_sizes": _output_space_sizes,
}


def _applies(rule: Rule, facts: Facts) -> bool:
    """No `when`: always; else when one alternative holds (all of its tags_any absent or one present, none of its
    tags_none present)."""
    tags = set(facts.tags)

    def holds(condition: Mapping[str, Sequence[str]]) -> bool:
        wanted = condition.get("tags_any")
        return (wanted is None or bool(tags & set(wanted))) and not tags & set(condition.get("tags_none", ()))

    return not rule.when or any(holds(c) for c in rule.when)


# ------------------------------------------------------------------------------------------------ the report
def evaluate(facts: Facts, rules: Sequence[Rule] = RULES) -> dict[str, dict[str, Any]]:
    """{consumer: {ok, reasons, sources, rules_checked, weights}}: `weights` lists the formats it would run."""
    report: dict[str, dict[str, Any]] = {c: {"ok": True, "reasons": [], "sources": [], "rules_checked": 0,
                                             "weights": []} for c in CONSUMERS}
    for rule in rules:
        entry = report[rule.consumer]
        if rule.check == "weights":
            entry["weights"] = usable_weights(rule, facts)[0]
        if not _applies(rule, facts):
            continue
        entry["rules_checked"] += 1
        for reason in CHECKS[rule.check](rule, facts):
            entry["reasons"].append(f"{reason} ({'inferred: ' if rule.inferred else ''}{rule.why})")
            entry["sources"].append(rule.source)
    for entry in report.values():
        entry["ok"] = not entry["reasons"]
    return report


def consumer_report(source: Any) -> dict[str, dict[str, Any]]:
    """evaluate(read_facts(source)); a package that cannot be read is one no consumer can run, with the reason."""
    try:
        facts = read_facts(source)
    except BiozooError as e:
        return {c: {"ok": False, "reasons": [f"the package cannot be read: {e}"], "sources": [], "rules_checked": 0,
                    "weights": []} for c in CONSUMERS}
    return evaluate(facts)


def parse_consumers(text: str) -> tuple[str, ...]:
    """'biapy,ilastik' -> the consumers' canonical names; InputError naming the valid ones otherwise."""
    names = {c.lower(): c for c in CONSUMERS}
    asked = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in asked if n.lower() not in names]
    if unknown or not asked:
        raise InputError(f"--require-consumers {text!r}: unknown consumer(s) {unknown or '(none given)'}; expected a "
                         f"comma-separated list of {', '.join(CONSUMERS)}")
    return tuple(dict.fromkeys(names[n.lower()] for n in asked))
