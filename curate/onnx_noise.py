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
attribute raises ValueError, and so does a file that is not an ONNX model or a rewrite that
onnx.checker rejects. Piper's voices have 2 such nodes among some 2,750; a 63 MB voice is
rewritten and checked in about a second, once per process.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

PREFIX = "seeded_noise"  # names of the tensors the rewrite adds


@dataclass(frozen=True)
class NoiseInput:
    """One rewritten node: feed `name` (1-D float32); `shape_output` gives the tensor's shape."""

    name: str
    shape_output: str
    node: str  # the RandomNormalLike node it replaced


def _replacement(node: onnx.NodeProto, k: int) -> tuple[list[onnx.NodeProto], NoiseInput]:
    """Nodes computing the node's output from the input noise_k (see the module docstring)."""
    name = node.name or node.output[0]
    for attr in node.attribute:
        if attr.name != "dtype" or attr.i != TensorProto.FLOAT:
            raise ValueError(f"ONNX node {name}: RandomNormalLike with {attr.name!r} set is not supported "
                             f"(only standard-normal float32 noise is fed from outside)")
    (x,), (y,) = node.input, node.output
    p, noise, one = f"{PREFIX}/{k}", f"noise_{k}", f"{PREFIX}/one"
    steps = [("Size", [x], f"{p}/n0"), ("Reshape", [f"{p}/n0", one], f"{p}/n"),
             ("Size", [noise], f"{p}/m0"), ("Reshape", [f"{p}/m0", one], f"{p}/m"),
             ("Add", [f"{p}/n", f"{p}/m"], f"{p}/nm"), ("Sub", [f"{p}/nm", one], f"{p}/nm1"),
             ("Div", [f"{p}/nm1", f"{p}/m"], f"{p}/reps"), ("Tile", [noise, f"{p}/reps"], f"{p}/tiled"),
             ("Slice", [f"{p}/tiled", f"{PREFIX}/zero", f"{p}/n"], f"{p}/flat"),
             ("Shape", [x], f"{noise}_shape"), ("Reshape", [f"{p}/flat", f"{noise}_shape"], y)]
    nodes = [helper.make_node(op, inputs, [out], name=out) for op, inputs, out in steps]
    return nodes, NoiseInput(noise, f"{noise}_shape", name)


def seed_noise_inputs(model: bytes) -> tuple[bytes, list[NoiseInput]]:
    """The model with every RandomNormalLike node fed from an input, and those inputs in order."""
    try:
        proto = onnx.load_from_string(model)
    except DecodeError as e:
        raise ValueError(f"not an ONNX model: {e}") from e
    graph, nodes, found = proto.graph, [], []
    for node in graph.node:
        if node.op_type != "RandomNormalLike":
            nodes.append(node)
            continue
        new, noise = _replacement(node, len(found))
        nodes += new
        found.append(noise)
    if not found:
        return model, found
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend([numpy_helper.from_array(np.array([1], np.int64), f"{PREFIX}/one"),
                              numpy_helper.from_array(np.array([0], np.int64), f"{PREFIX}/zero")])
    for n in found:  # 1-D: the input's length and the shape's rank are left symbolic
        graph.input.append(helper.make_tensor_value_info(n.name, TensorProto.FLOAT, [f"{n.name}_length"]))
        graph.output.append(helper.make_tensor_value_info(n.shape_output, TensorProto.INT64,
                                                          [f"{n.name}_rank"]))
    rewritten = proto.SerializeToString()
    try:
        onnx.checker.check_model(rewritten)  # given bytes, it does not serialize the model again
    except onnx.checker.ValidationError as e:
        raise ValueError(f"the rewritten model is not valid ONNX: {e}") from e
    return rewritten, found
