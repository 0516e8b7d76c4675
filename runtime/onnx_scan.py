"""Find the external-data files an ONNX model references, without the onnx package (runtime stays light).

Reads just enough of the protobuf wire format: ModelProto.graph -> initializers, Constant-node attributes and
subgraphs -> TensorProto.external_data entries with key 'location'.
"""
from __future__ import annotations

from pathlib import Path

# field numbers from onnx.proto
_MODEL_GRAPH = 7
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 5, 15
_NODE_ATTRIBUTE = 5
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS = 5, 6, 10, 11
_TENSOR_EXTERNAL_DATA = 13
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_ENTRY_KEY, _ENTRY_VALUE = 1, 2


def _fields(buf: memoryview):
    """Yield (field_number, wire_type, value) for one message; value is a memoryview for length-delimited."""
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
            value, i = buf[i : i + length], i + length
        elif wire == 5:
            value, i = None, i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _tensor_locations(buf: memoryview, out: list[str]) -> None:
    for number, wire, value in _fields(buf):
        if number == _TENSOR_EXTERNAL_DATA and wire == 2:
            entry = {k: bytes(v).decode("utf-8", "replace") for k, w, v in _fields(value) if w == 2}
            if entry.get(_ENTRY_KEY) == "location" and _ENTRY_VALUE in entry:
                out.append(entry[_ENTRY_VALUE])


def _graph_locations(buf: memoryview, out: list[str]) -> None:
    for number, wire, value in _fields(buf):
        if wire != 2:
            continue
        if number == _GRAPH_INITIALIZER:
            _tensor_locations(value, out)
        elif number == _GRAPH_SPARSE_INITIALIZER:
            for n2, w2, v2 in _fields(value):
                if w2 == 2 and n2 in (_SPARSE_VALUES, _SPARSE_INDICES):
                    _tensor_locations(v2, out)
        elif number == _GRAPH_NODE:
            for n2, w2, attr in _fields(value):
                if n2 != _NODE_ATTRIBUTE or w2 != 2:
                    continue
                for n3, w3, v3 in _fields(attr):
                    if w3 == 2 and n3 in (_ATTR_T, _ATTR_TENSORS):
                        _tensor_locations(v3, out)
                    elif w3 == 2 and n3 in (_ATTR_G, _ATTR_GRAPHS):
                        _graph_locations(v3, out)


def external_data_locations(model_path: Path) -> list[str]:
    """Relative paths of the external data files the model refers to (empty for self-contained models)."""
    data = memoryview(model_path.read_bytes())
    out: list[str] = []
    for number, wire, value in _fields(data):
        if number == _MODEL_GRAPH and wire == 2:
            _graph_locations(value, out)
    return sorted(set(out))


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
