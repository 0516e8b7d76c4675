"""The torch half of `biozoo convert`: load a package's torchscript or pytorch_state_dict weights and export them to
one ONNX graph whose input/output names are the tensor ids and whose dynamic axes follow the description.

Safety: torchscript is read with torch.jit.load (TorchScript is interpreted by torch, no package Python runs); a
state dict with torch.load(weights_only=True) (no pickled objects); only a pytorch_state_dict's architecture source
is Python code from the package, and it runs only when the caller passed trust_code.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import sys
import tempfile
import types
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import onnx
import torch

from biozoo.runtime import ExportError, InputError
from biozoo.runtime.format import ModelDescription, Package, ParameterizedSize, SizeReference, Tensor, load_npy

from .onnx_export import DEFAULT_IR_VERSION, DEFAULT_OPSET, SINGLE_FILE_LIMIT

SOURCE_FORMATS = ("torchscript", "pytorch_state_dict")  # in order of preference: torchscript runs no package code


@dataclass(frozen=True)
class OnnxFiles:
    """What was written: the graph file and, only above 2 GiB, its external data file."""

    graph: Path
    external_data: Path | None
    opset: int
    ir_version: int
    exporter: str


def pick_source_format(weights: Mapping[str, Any], trust_code: bool, source: str) -> str:
    """torchscript when present (no package code runs), else pytorch_state_dict with trust_code; refuse otherwise."""
    if "torchscript" in weights:
        return "torchscript"
    if "pytorch_state_dict" in weights:
        if not trust_code:
            others = sorted(set(weights) - {"pytorch_state_dict"})
            raise InputError(
                f"'{source}' has no torchscript weights, only pytorch_state_dict"
                + (f" (and {', '.join(others)}, which biozoo cannot convert)" if others else "")
                + ": loading them runs the package's architecture source file, i.e. Python code from the package, "
                "with your permissions. Read that file; if you trust it, run again with --trust-code. Nothing was "
                "written"
            )
        return "pytorch_state_dict"
    raise InputError(
        f"'{source}' has weights {sorted(weights)}; biozoo convert reads torchscript or pytorch_state_dict weights "
        "(other formats, e.g. TensorFlow/Keras, need their own converter, e.g. tf2onnx). Nothing was written"
    )


def load_torch_model(package: Package, fmt: str) -> torch.nn.Module:
    """The package's network in eval mode on the CPU (a ScriptModule for torchscript)."""
    entry = package.rdf["weights"][fmt]
    path = package.file(entry, f"weights.{fmt}")  # sha256 verified before torch reads a byte
    if fmt == "torchscript":
        try:
            model = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # torch raises RuntimeError and friends for archives it cannot read
            raise InputError(f"weights.torchscript '{path.name}' is not a TorchScript archive torch "
                             f"{torch.__version__} can load: {type(e).__name__}: {_short(e)}") from None
        return model.eval()
    model = _build_architecture(package, entry)
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # an UnpicklingError means the file pickles more than tensors
        raise InputError(
            f"weights.pytorch_state_dict '{path.name}' cannot be read with torch.load(weights_only=True): "
            f"{type(e).__name__}: {_short(e)}. biozoo loads only plain state dicts (tensors), never pickled "
            "objects; save the weights with torch.save(model.state_dict(), path)") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]  # a checkpoint dict around the state dict, a common way to save
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise InputError(f"weights.pytorch_state_dict '{path.name}' does not fit the architecture "
                         f"{type(model).__name__}: {_short(e)}; the kwargs in rdf.yaml must build the network "
                         "the weights were saved from") from None
    return model.eval()


def _build_architecture(package: Package, entry: Mapping[str, Any]) -> torch.nn.Module:
    arch = entry.get("architecture")
    where = "weights.pytorch_state_dict.architecture"
    if not isinstance(arch, Mapping) or not arch.get("callable"):
        raise InputError(f"{where} is {arch!r}; expected {{source: file.py, sha256, callable: Name, kwargs}} or "
                         "{import_from: module, callable: Name, kwargs}")
    name, kwargs = str(arch["callable"]), dict(arch.get("kwargs") or {})
    if arch.get("source"):
        path = package.file(arch, where)
        module = _exec_source(path)
        label = path.name
    else:
        label = str(arch.get("import_from"))
        try:
            module = importlib.import_module(label)
        except ImportError as e:
            raise InputError(f"{where}.import_from is '{label}', which cannot be imported ({e}); install the "
                             "library the package was built with, then run again") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise InputError(f"{where}.callable is '{name}', but {label} defines no such callable")
    try:
        model = factory(**kwargs)
    except Exception as e:  # any error of the package's own code: say which call failed
        raise InputError(f"{label}:{name}(**{kwargs}) failed: {type(e).__name__}: {_short(e)}") from None
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"{label}:{name}(...) returned a {type(model).__name__}; expected a torch.nn.Module")
    return model


def _exec_source(path: Path) -> types.ModuleType:
    """Run the architecture file as a fresh module; compiled in memory, so no __pycache__ lands in the package."""
    name = f"_biozoo_architecture_{uuid.uuid4().hex}"
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module  # dataclasses and typing resolve names through sys.modules during exec
    try:
        exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), module.__dict__)
    except Exception as e:
        raise InputError(f"running the architecture file '{path.name}' failed: {type(e).__name__}: "
                         f"{_short(e)}") from None
    finally:
        sys.modules.pop(name, None)
    return module


def example_inputs(package: Package, description: ModelDescription) -> tuple[torch.Tensor, ...]:
    """The test inputs, in the dtype the network receives, to trace the graph with (their values do not matter for
    the graph; their sizes only fix the trace, dynamic axes free them)."""
    examples = []
    for i, t in enumerate(description.inputs):
        if t.test_tensor is None:
            raise InputError(f"inputs[{i}] ('{t.id}') has no test_tensor; biozoo convert traces the network with the "
                             "test inputs and checks the result against the test outputs")
        array = load_npy(package.file(t.test_tensor, f"inputs[{i}].test_tensor"), f"inputs[{i}].test_tensor")
        examples.append(torch.from_numpy(np.ascontiguousarray(array, dtype=_network_dtype(t))))
    return tuple(examples)


def _network_dtype(t: Tensor) -> str:
    last = t.processing[-1] if t.processing else None
    if last is not None and last.id == "ensure_dtype" and last.kwargs.get("dtype"):
        return str(last.kwargs["dtype"])
    return "float32" if t.processing else t.dtype


def dynamic_axes(description: ModelDescription) -> dict[str, dict[int, str]]:
    """Dynamic: an unfixed batch axis, parameterized (step > 0), referenced and data-dependent sizes. Fixed sizes
    stay fixed. An output axis that equals the input axis it references shares that axis's name."""
    names: dict[tuple[str, str], str] = {}
    result: dict[str, dict[int, str]] = {}
    for t in (*description.inputs, *description.outputs):
        dims: dict[int, str] = {}
        for i, a in enumerate(t.axes):
            size, name = a.size, f"{t.id}_{a.id}"
            if a.type == "batch":
                if size is not None:
                    continue  # a fixed batch (1): the graph keeps it
                name = "batch"
            elif isinstance(size, int) or (isinstance(size, ParameterizedSize) and size.step == 0):
                continue
            elif isinstance(size, SizeReference) and not size.offset:
                ref = description.tensor(size.tensor_id).axis(size.axis_id)
                if ref.scale == a.scale and (size.tensor_id, size.axis_id) in names:
                    name = names[(size.tensor_id, size.axis_id)]
            names[(t.id, a.id)] = dims[i] = name
        if dims:
            result[t.id] = dims
    return result


class _Flat(torch.nn.Module):
    """Outputs as a flat tuple in description order: networks return lists (a ScriptModule's Tensor[] would become
    one ONNX sequence) or dicts by output id."""

    def __init__(self, inner: torch.nn.Module, output_ids: Sequence[str]):
        super().__init__()
        self.inner = inner
        self.output_ids = tuple(output_ids)

    def forward(self, *inputs):
        out = self.inner(*inputs)
        if isinstance(out, Mapping):
            return tuple(out[k] for k in self.output_ids)
        return tuple(out) if isinstance(out, (list, tuple)) else out


def export_converted(model: torch.nn.Module, examples: tuple[torch.Tensor, ...], description: ModelDescription,
                     dest: Path) -> OnnxFiles:
    """Export to `dest` (one file; above 2 GiB a `<dest>.data` file beside it), IR and opset set explicitly."""
    input_ids = [t.id for t in description.inputs]
    output_ids = [t.id for t in description.outputs]
    flat = _Flat(model, output_ids).eval()
    with torch.no_grad():
        try:
            outputs = flat(*examples)
        except Exception as e:  # the network's own error on its own test input
            raise InputError(f"the {type(model).__name__} network fails on the package's test inputs "
                             f"{[tuple(x.shape) for x in examples]}: {type(e).__name__}: {_short(e)}") from None
    got = len(outputs) if isinstance(outputs, tuple) else 1
    if got != len(output_ids):
        raise InputError(f"the network returns {got} tensor(s), the description lists {len(output_ids)} outputs "
                         f"{output_ids}; the package's weights and rdf.yaml disagree")
    axes = dynamic_axes(description)
    with tempfile.TemporaryDirectory(prefix="biozoo-onnx-") as tmp:
        raw = Path(tmp) / "raw.onnx"
        try:
            with _quiet():
                _export_torchscript_based(flat, examples, raw, input_ids, output_ids, axes)
            exporter = "TorchScript-based exporter"
        except Exception as e:  # the exporter raises many types
            first = f"{type(e).__name__}: {_short(e, 400)}"
            if isinstance(model, torch.jit.ScriptModule):
                raise ExportError(f"torch.onnx.export (opset {DEFAULT_OPSET}, dynamo=False) failed for the "
                                  f"torchscript weights: {first}") from None
            # The TorchScript-based exporter loses static sizes through size-dependent slicing (e.g. a U-Net's
            # crop before a concat), and then cannot export ops that need them (instance_norm); torch.export keeps
            # them. Slower (~15 s for a small U-Net), so only the fallback.
            try:
                with _quiet():
                    _export_dynamo(flat, examples, raw, input_ids, output_ids, axes, description)
            except Exception as e2:
                raise ExportError(
                    f"torch.onnx.export (opset {DEFAULT_OPSET}) failed for {type(model).__name__}: with the "
                    f"TorchScript-based exporter: {first}; with torch.export (dynamo=True): {type(e2).__name__}: "
                    f"{_short(e2, 400)}") from None
            exporter = "torch.export-based exporter (the TorchScript-based one failed)"
        proto = onnx.load(str(raw))  # pulls in external data the exporter may have written for a large graph
    return _write(proto, Path(dest), input_ids, output_ids, exporter)


def _export_torchscript_based(flat: torch.nn.Module, examples: tuple[torch.Tensor, ...], raw: Path,
                              input_ids: list[str], output_ids: list[str], axes: dict[str, dict[int, str]]) -> None:
    with torch.no_grad():
        # a loaded ScriptModule cannot be called inside the exporter's own trace; torch.jit.trace records the call
        # as one CallMethod (keeping the script's control flow) around the flattening
        traced = torch.jit.trace(flat, examples, check_trace=False, strict=False)
        torch.onnx.export(traced, examples, str(raw), dynamo=False, opset_version=DEFAULT_OPSET,
                          input_names=input_ids, output_names=output_ids, dynamic_axes=axes,
                          do_constant_folding=True)


def _export_dynamo(flat: torch.nn.Module, examples: tuple[torch.Tensor, ...], raw: Path, input_ids: list[str],
                   output_ids: list[str], axes: dict[str, dict[int, str]], description: ModelDescription) -> None:
    from torch.export import Dim

    # forward(*inputs): torch.export wants one spec for the varargs, a tuple with one entry per input
    shapes = (tuple({i: Dim.AUTO for i in axes.get(t.id, {})} for t in description.inputs),)
    with torch.no_grad():
        torch.onnx.export(flat, examples, str(raw), dynamo=True, opset_version=DEFAULT_OPSET,
                          input_names=input_ids, output_names=output_ids, dynamic_shapes=shapes,
                          external_data=True, verbose=False)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters: they print graphs (the TorchScript exporter dumps its whole IR on failure, from C++),
    log warnings and emit Python warnings; what matters comes back in the exception, and stdout must stay clean for
    --json. Both the Python streams and file descriptors 1 and 2 are redirected."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is not None:
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    torch_log = logging.getLogger("torch")
    level = torch_log.level
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch_log.setLevel(logging.ERROR)
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)
            torch_log.setLevel(level)


def _write(proto: onnx.ModelProto, dest: Path, input_ids: list[str], output_ids: list[str],
           exporter: str) -> OnnxFiles:
    proto.ir_version = DEFAULT_IR_VERSION  # onnx 1.23 stamps IR 14; onnxruntime <= 1.31 refuses it
    opset = {o.domain: o.version for o in proto.opset_import}.get("", 0)
    if opset != DEFAULT_OPSET:  # torch.export converts down from its own opset and keeps it when that fails
        raise ExportError(f"the {exporter} wrote opset {opset}, not {DEFAULT_OPSET}; biozoo packages stay at opset "
                          f"{DEFAULT_OPSET} (loadable by onnxruntime >= 1.16)")
    names = ([i.name for i in proto.graph.input], [o.name for o in proto.graph.output])
    if names != (input_ids, output_ids):
        raise ExportError(f"the exported graph has inputs {names[0]} and outputs {names[1]}; expected the tensor ids "
                          f"{input_ids} and {output_ids} (an input unused by the network is dropped by the exporter)")
    if proto.ByteSize() <= SINGLE_FILE_LIMIT:
        onnx.checker.check_model(proto)
        dest.write_bytes(proto.SerializeToString())
        return OnnxFiles(dest, None, DEFAULT_OPSET, DEFAULT_IR_VERSION, exporter)
    data = dest.with_name(dest.name + ".data")
    onnx.save(proto, str(dest), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)
    onnx.checker.check_model(str(dest))  # by path: the proto in memory is above protobuf's limit
    return OnnxFiles(dest, data, DEFAULT_OPSET, DEFAULT_IR_VERSION, exporter)


def _short(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + " ..."
