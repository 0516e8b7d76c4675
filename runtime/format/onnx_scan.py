"""Find the external-data files an ONNX model references, without the onnx package (runtime stays light).

Reads just enough of the protobuf wire format to visit every TensorProto reachable anywhere in the model, since
onnxruntime opens the external data of any of them (older releases without checking where the path leads):
graph initializers and sparse initializers; node attributes t / tensors / sparse_tensor / sparse_tensors and the
subgraphs g / graphs at any depth; model-local functions (their nodes and default attributes); training_info's
initialization and algorithm graphs. Nesting is bounded (MAX_GRAPH_DEPTH subgraphs), so a hostile file ends in a
PackageError, never a RecursionError. A location that is not a plain relative path (absolute, '..', ':', control
characters, onnxruntime's in-memory tag), or an external tensor without a location, is refused here.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath

from ..errors import PackageError

MAX_GRAPH_DEPTH = 64  # real models nest If/Loop bodies a few levels; protobuf itself stops at 100

# field numbers from onnx.proto (onnx 1.17)
_MODEL_GRAPH, _MODEL_TRAINING_INFO, _MODEL_FUNCTIONS = 7, 20, 25
_TRAINING_INITIALIZATION, _TRAINING_ALGORITHM = 1, 2
_FUNCTION_NODE, _FUNCTION_ATTRIBUTE_PROTO = 7, 11
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 5, 15
_NODE_ATTRIBUTE = 5
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE_TENSOR, _ATTR_SPARSE_TENSORS = 5, 6, 10, 11, 22, 23
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _EXTERNAL = 13, 14, 1
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
# onnxruntime reads the location "*/_ORT_MEM_ADDR_/*" as a raw memory address: hence no "*" in a location


def _fields(buf: memoryview):
    """Yield (field_number, wire_type, value) for one message; value is a memoryview for length-delimited.
    Malformed input raises ValueError."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = None, i + 8
        elif wire == 2:
            length, i = _varint(buf, i)
            if i + length > n:
                raise ValueError("a length-delimited field runs past the end of its message")
            value, i = buf[i : i + length], i + length
        elif wire == 5:
            value, i = None, i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if i > n:
            raise ValueError("a field runs past the end of its message")
        yield number, wire, value


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    shift = result = 0
    n = len(buf)
    while True:
        if i >= n or shift > 63:
            raise ValueError("truncated or overlong varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


class _Scan:
    def __init__(self, name: str):
        self.name = name
        self.locations: list[str] = []

    def tensor(self, buf: memoryview, where: str) -> None:
        external, has_location = False, False
        for number, wire, value in _fields(buf):
            if number == _TENSOR_DATA_LOCATION and wire == 0:
                external = value == _EXTERNAL
            elif number == _TENSOR_EXTERNAL_DATA and wire == 2:
                entry: dict[int, memoryview] = {k: v for k, w, v in _fields(value) if w == 2}
                if bytes(entry.get(_ENTRY_KEY, b"")) == b"location":
                    has_location = True
                    self.locations.append(self.location(bytes(entry.get(_ENTRY_VALUE, b"")), where))
        if external and not has_location:
            raise PackageError(
                f"'{self.name}' has a tensor in {where} stored as external data without a 'location'; expected the "
                "file name of its data next to the .onnx file: the model is damaged or hostile, re-export it"
            )

    def location(self, raw: bytes, where: str) -> str:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise PackageError(f"'{self.name}' names external data {raw[:80]!r} ({where}) that is not UTF-8; expected "
                               "a plain relative file name: re-export the model") from None
        pure = PurePosixPath(text.replace("\\", "/"))
        control = any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text)
        if not text or "*" in text or control or pure.is_absolute() or ".." in pure.parts or ":" in text:
            raise PackageError(
                f"'{self.name}' names external data {text[:200]!r} ({where}): paths must stay inside the package "
                "(expected a plain relative file name next to the .onnx file: no absolute path, '..', ':', '*' or "
                "control characters); the model is hostile or damaged, re-export it"
            )
        return text

    def sparse(self, buf: memoryview, where: str) -> None:
        for number, wire, value in _fields(buf):
            if wire == 2 and number in (_SPARSE_VALUES, _SPARSE_INDICES):
                self.tensor(value, where)

    def graph(self, buf: memoryview, depth: int, where: str) -> None:
        if depth > MAX_GRAPH_DEPTH:
            raise PackageError(
                f"'{self.name}' nests subgraphs more than {MAX_GRAPH_DEPTH} levels deep ({where}); real models nest "
                "a few levels: the file is damaged or hostile"
            )
        for number, wire, value in _fields(buf):
            if wire != 2:
                continue
            if number == _GRAPH_INITIALIZER:
                self.tensor(value, f"{where}.initializer")
            elif number == _GRAPH_SPARSE_INITIALIZER:
                self.sparse(value, f"{where}.sparse_initializer")
            elif number == _GRAPH_NODE:
                self.node(value, depth, f"{where}.node")

    def node(self, buf: memoryview, depth: int, where: str) -> None:
        for number, wire, value in _fields(buf):
            if number == _NODE_ATTRIBUTE and wire == 2:
                self.attribute(value, depth, f"{where}.attribute")

    def attribute(self, buf: memoryview, depth: int, where: str) -> None:
        for number, wire, value in _fields(buf):
            if wire != 2:
                continue
            if number in (_ATTR_T, _ATTR_TENSORS):
                self.tensor(value, where)
            elif number in (_ATTR_SPARSE_TENSOR, _ATTR_SPARSE_TENSORS):
                self.sparse(value, where)
            elif number in (_ATTR_G, _ATTR_GRAPHS):
                self.graph(value, depth + 1, f"{where}.graph")

    def function(self, buf: memoryview) -> None:
        for number, wire, value in _fields(buf):
            if wire == 2 and number == _FUNCTION_NODE:
                self.node(value, 0, "functions.node")
            elif wire == 2 and number == _FUNCTION_ATTRIBUTE_PROTO:
                self.attribute(value, 0, "functions.attribute_proto")

    def model(self, buf: memoryview) -> None:
        for number, wire, value in _fields(buf):
            if wire != 2:
                continue
            if number == _MODEL_GRAPH:
                self.graph(value, 0, "graph")
            elif number == _MODEL_FUNCTIONS:
                self.function(value)
            elif number == _MODEL_TRAINING_INFO:
                for n2, w2, v2 in _fields(value):
                    if w2 == 2 and n2 in (_TRAINING_INITIALIZATION, _TRAINING_ALGORITHM):
                        self.graph(v2, 0, "training_info")


def external_data_locations(model_path: Path) -> list[str]:
    """Relative paths of the external data files the model refers to (empty for self-contained models).

    Raises ValueError for a file that is not valid protobuf, PackageError for a hostile one (see the module doc)."""
    scan = _Scan(model_path.name)
    scan.model(memoryview(model_path.read_bytes()))
    return sorted(set(scan.locations))


def onnx_versions(model_path: Path) -> tuple[int, dict[str, int]]:
    """(IR version, {opset domain: version}) of an ONNX file; '' is the default 'ai.onnx' domain."""
    ir, opsets = 0, {}
    for number, wire, value in _fields(memoryview(model_path.read_bytes())):
        if number == 1 and wire == 0:
            ir = value
        elif number == 8 and wire == 2:
            entry = {n: v for n, _, v in _fields(value)}
            domain = bytes(entry.get(1, b"")).decode() if entry.get(1) is not None else ""
            opsets[domain] = int(entry.get(2, 0))
    return ir, opsets
