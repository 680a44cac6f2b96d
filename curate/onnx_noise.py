"""Noise from outside an ONNX graph: each unseeded RandomNormalLike node becomes a graph input.

onnxruntime draws RandomNormalLike's values from a generator seeded when the session is made and
advanced by every run, so the same input gives different output on each call, in each process,
in whatever order the calls came. `seed_noise_inputs` rewrites the model so that node `k` reads
a flat float32 input `noise_k` instead: its first numel(x) values, reshaped to x's shape. The
caller draws that array from its own seeded generator, so the output is a function of the
inputs only. If the array is shorter than the tensor the graph repeats it (Tile) rather than
fail, and an extra output `noise_k_shape` (the tensor's shape) lets the caller see that it was
short and run again with a long enough array. The rewritten node reads, for y = RandomNormalLike(x):

    n = Reshape(Size(x), [1]);  m = Reshape(Size(noise_k), [1])   ([1]: the constant `one`)
    y = Reshape(Slice(Tile(noise_k, (n + m - 1) / m), [0], n), Shape(x))

Only standard-normal float32 nodes (no mean, scale or other dtype) are rewritten; any other
attribute raises ValueError. The model is edited in its protobuf wire format (the ONNX schema
field numbers are stable: https://github.com/onnx/onnx/blob/main/onnx/onnx.proto), so the `onnx`
package is not needed (Piper's voices have 2 such nodes among some 2,750; a 63 MB voice is edited in
about a second, once per process).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

# ONNX protobuf field numbers (onnx.proto)
MODEL_GRAPH = 7
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_INPUT, GRAPH_OUTPUT = 1, 5, 11, 12
NODE_INPUT, NODE_OUTPUT, NODE_NAME, NODE_OP_TYPE, NODE_ATTRIBUTE = 1, 2, 3, 4, 5
ATTR_NAME, ATTR_I = 1, 3
TENSOR_DIMS, TENSOR_DATA_TYPE, TENSOR_NAME, TENSOR_RAW_DATA = 1, 2, 8, 9
FLOAT, INT64 = 1, 7  # TensorProto.DataType
PREFIX = "seeded_noise"  # names of the tensors the rewrite adds


@dataclass(frozen=True)
class NoiseInput:
    """One rewritten node: feed `name` (1-D float32); `shape_output` gives the tensor's shape."""

    name: str
    shape_output: str
    node: str  # the RandomNormalLike node it replaced


# ---------------------------------------------------------------- protobuf wire format
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        byte = buf[pos]
        n |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return n, pos


def _fields(buf: memoryview) -> Iterator[tuple[int, int | memoryview, memoryview]]:
    """(field number, value, the field's raw bytes): varints as int, everything else as bytes."""
    pos = 0
    while pos < len(buf):
        start = pos
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            size, pos = _read_varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"ONNX model: unsupported protobuf wire type {wire} (field {field})")
        yield field, value, buf[start:pos]


def _bytes_field(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _int_field(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _str(field: int, text: str) -> bytes:
    return _bytes_field(field, text.encode())


# ---------------------------------------------------------------- ONNX messages
def _node(op: str, inputs: list[str], output: str) -> bytes:
    body = b"".join(_str(NODE_INPUT, i) for i in inputs) + _str(NODE_OUTPUT, output)
    return _bytes_field(GRAPH_NODE, body + _str(NODE_NAME, output) + _str(NODE_OP_TYPE, op))


def _int64_initializer(name: str, values: list[int]) -> bytes:
    body = (_int_field(TENSOR_DIMS, len(values)) + _int_field(TENSOR_DATA_TYPE, INT64)
            + _str(TENSOR_NAME, name)
            + _bytes_field(TENSOR_RAW_DATA, struct.pack(f"<{len(values)}q", *values)))
    return _bytes_field(GRAPH_INITIALIZER, body)


def _value_info(field: int, name: str, elem_type: int, dim: str) -> bytes:
    """A graph input/output: a 1-D tensor of `elem_type` whose length is the symbol `dim`."""
    shape = _bytes_field(2, _bytes_field(1, _str(2, dim)))  # TensorShapeProto.dim[0].dim_param
    tensor = _bytes_field(1, _int_field(1, elem_type) + shape)  # TypeProto.tensor_type
    return _bytes_field(field, _str(1, name) + _bytes_field(2, tensor))


def _replacement(x: str, y: str, k: int, name: str) -> tuple[list[bytes], NoiseInput]:
    """Nodes computing y from the input noise_k, shaped like x (see the module docstring)."""
    p, noise = f"{PREFIX}/{k}", f"noise_{k}"
    nodes = [_node("Size", [x], f"{p}/n0"), _node("Reshape", [f"{p}/n0", f"{PREFIX}/one"], f"{p}/n"),
             _node("Size", [noise], f"{p}/m0"), _node("Reshape", [f"{p}/m0", f"{PREFIX}/one"], f"{p}/m"),
             _node("Add", [f"{p}/n", f"{p}/m"], f"{p}/nm"),
             _node("Sub", [f"{p}/nm", f"{PREFIX}/one"], f"{p}/nm1"),
             _node("Div", [f"{p}/nm1", f"{p}/m"], f"{p}/reps"),
             _node("Tile", [noise, f"{p}/reps"], f"{p}/tiled"),
             _node("Slice", [f"{p}/tiled", f"{PREFIX}/zero", f"{p}/n"], f"{p}/flat"),
             _node("Shape", [x], f"{noise}_shape"), _node("Reshape", [f"{p}/flat", f"{noise}_shape"], y)]
    return nodes, NoiseInput(noise, f"{noise}_shape", name)


def _random_normal_like(node: memoryview) -> tuple[str, str, str] | None:
    """(input, output, name) of an unseeded standard-normal float RandomNormalLike node, else None."""
    fields = list(_fields(node))
    if not any(f == NODE_OP_TYPE and bytes(v) == b"RandomNormalLike" for f, v, _ in fields):
        return None
    inputs = [bytes(v).decode() for f, v, _ in fields if f == NODE_INPUT]
    outputs = [bytes(v).decode() for f, v, _ in fields if f == NODE_OUTPUT]
    name = next((bytes(v).decode() for f, v, _ in fields if f == NODE_NAME), outputs[0])
    for f, attr, _ in fields:
        if f != NODE_ATTRIBUTE:
            continue
        parts = {af: av for af, av, _ in _fields(attr)}
        key = bytes(parts.get(ATTR_NAME, b"")).decode()
        if key != "dtype" or parts.get(ATTR_I) != FLOAT:
            raise ValueError(f"ONNX node {name}: RandomNormalLike with {key!r} set is not supported "
                             f"(only standard-normal float32 noise is fed from outside)")
    return inputs[0], outputs[0], name


def seed_noise_inputs(model: bytes) -> tuple[bytes, list[NoiseInput]]:
    """The model with every RandomNormalLike node fed from an input, and those inputs in order."""
    buf = memoryview(model)
    out_model, found = [], []
    for field, value, raw in _fields(buf):
        if field != MODEL_GRAPH:
            out_model.append(raw)
            continue
        graph = []
        for gfield, gvalue, graw in _fields(value):
            node = _random_normal_like(gvalue) if gfield == GRAPH_NODE else None
            if node is None:
                graph.append(graw)
                continue
            x, y, name = node
            nodes, noise = _replacement(x, y, len(found), name)
            graph += nodes
            found.append(noise)
        if found:
            graph += [_int64_initializer(f"{PREFIX}/one", [1]), _int64_initializer(f"{PREFIX}/zero", [0])]
            for n in found:
                graph += [_value_info(GRAPH_INPUT, n.name, FLOAT, f"{n.name}_length"),
                          _value_info(GRAPH_OUTPUT, n.shape_output, INT64, f"{n.name}_rank")]
        out_model.append(_bytes_field(MODEL_GRAPH, b"".join(graph)))
    return b"".join(out_model), found
