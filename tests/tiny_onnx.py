"""Tiny ONNX models written by hand for the tests (the `onnx` package is not a dependency).

An ONNX file is a protobuf `ModelProto`; this module encodes the few message fields the test graphs
need (field numbers from onnx/onnx.proto) with a minimal protobuf wire-format writer, so the tests
can run real onnxruntime sessions on graphs with the real input/output signatures.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

FLOAT = 1  # TensorProto.DataType
INT64 = 7
ATTR_FLOAT, ATTR_INT, ATTR_INTS = 1, 2, 7  # AttributeProto.AttributeType


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 as two's complement
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint((field << 3) | wire)


def _int(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(value)


def _bytes(field: int, value: bytes | str) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return _key(field, 2) + _varint(len(data)) + data


def _float(field: int, value: float) -> bytes:
    return _key(field, 5) + struct.pack("<f", value)


def tensor(name: str, array: np.ndarray, external: tuple[str, int] | None = None) -> bytes:
    """TensorProto; `external=(file name, offset)` stores the data in that file (ONNX external data)."""
    array = np.ascontiguousarray(array)
    dtype = {np.dtype(np.float32): FLOAT, np.dtype(np.int64): INT64}[array.dtype]
    msg = b"".join(_int(1, d) for d in array.shape) + _int(2, dtype) + _bytes(8, name)
    if external is None:
        return msg + _bytes(9, array.tobytes())
    location, offset = external
    entries = [("location", location), ("offset", str(offset)), ("length", str(array.nbytes))]
    msg += b"".join(_bytes(13, _bytes(1, k) + _bytes(2, v)) for k, v in entries)
    return msg + _int(14, 1)  # data_location = EXTERNAL


def attr_ints(name: str, values: list[int]) -> bytes:
    return _bytes(1, name) + b"".join(_int(8, v) for v in values) + _int(20, ATTR_INTS)


def attr_int(name: str, value: int) -> bytes:
    return _bytes(1, name) + _int(3, value) + _int(20, ATTR_INT)


def node(op: str, inputs: list[str], outputs: list[str], attrs: list[bytes] = ()) -> bytes:
    msg = b"".join(_bytes(1, i) for i in inputs) + b"".join(_bytes(2, o) for o in outputs)
    msg += _bytes(3, f"{op}_{outputs[0]}") + _bytes(4, op)
    return msg + b"".join(_bytes(5, a) for a in attrs)


def value_info(name: str, shape: list[int | str]) -> bytes:
    dims = b"".join(_bytes(1, _int(1, d) if isinstance(d, int) else _bytes(2, d)) for d in shape)
    tensor_type = _int(1, FLOAT) + _bytes(2, dims)
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor_type))


def model(nodes: list[bytes], initializers: list[bytes], inputs: list[bytes], outputs: list[bytes],
          opset: int = 13) -> bytes:  # fmt: skip
    graph = b"".join(_bytes(1, n) for n in nodes) + _bytes(2, "tiny")
    graph += b"".join(_bytes(5, t) for t in initializers)
    graph += b"".join(_bytes(11, i) for i in inputs) + b"".join(_bytes(12, o) for o in outputs)
    opset_id = _bytes(1, "") + _int(2, opset)
    return _int(1, 8) + _bytes(2, "wan-animate-tests") + _bytes(7, graph) + _bytes(8, opset_id)


def write_detector(path: Path, dets: np.ndarray, batch: int | str = "batch") -> Path:
    """A YOLOv10-like graph: images (B, 3, 640, 640) -> output0 (B, 300, 6) = the fixed `dets` rows.

    output = Reshape(MatMul(ReduceMax(images over H, W), zeros (3, 1800)), (-1, 300, 6)) + dets, so
    the batch follows the input while the detections are the constant table given.
    """
    table = np.zeros((1, 300, 6), np.float32)
    table[0, : len(dets)] = dets
    nodes = [
        node("ReduceMax", ["images"], ["pooled"], [attr_ints("axes", [2, 3]), attr_int("keepdims", 0)]),
        node("MatMul", ["pooled", "zero_w"], ["flat"]),
        node("Reshape", ["flat", "shape"], ["zeros"]),
        node("Add", ["zeros", "table"], ["output0"]),
    ]
    inits = [
        tensor("zero_w", np.zeros((3, 1800), np.float32)),
        tensor("shape", np.array([-1, 300, 6], np.int64)),
        tensor("table", table),
    ]
    graph = model(nodes, inits, [value_info("images", [batch, 3, 640, 640])], [value_info("output0", [batch, 300, 6])])
    Path(path).write_bytes(graph)
    return Path(path)


def write_vitpose(folder: Path, weight: np.ndarray, batch: int | str = "batch") -> Path:
    """A ViTPose-shaped graph in the official layout: `folder/end2end.onnx` + external weights file.

    input (B, 3, 256, 192) -> every 4th pixel (pool of kernel 1, stride 4) -> 1x1 Conv with `weight` (133, 3)
    -> output (B, 133, 64, 48). Heatmap pixel j reads input pixel 4j, the heatmap/input alignment the
    official decoding assumes (x_input = 4 x_heatmap).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    w = np.ascontiguousarray(weight.reshape(133, 3, 1, 1).astype(np.float32))
    (folder / "conv.weight").write_bytes(w.tobytes())
    nodes = [
        node("AveragePool", ["input"], ["pooled"], [attr_ints("kernel_shape", [1, 1]), attr_ints("strides", [4, 4])]),
        node("Conv", ["pooled", "conv.weight"], ["output"], [attr_ints("kernel_shape", [1, 1])]),
    ]
    inits = [tensor("conv.weight", w, external=("conv.weight", 0))]
    graph = model(
        nodes, inits, [value_info("input", [batch, 3, 256, 192])], [value_info("output", [batch, 133, 64, 48])]
    )
    path = folder / "end2end.onnx"
    path.write_bytes(graph)
    return path
