"""SMOKE ONLY: tiny ONNX stand-ins for the released detector and pose model, written at setup.

The smoke preset runs every production preprocessing stage (`OnnxPersonDetector`, `OnnxWholeBodyPose`,
`WholeBodyPoseEstimator`, face crops, skeleton drawing, retargeting) on graphs with the released models'
input/output signatures but no learned weights: the detector always reports one person box in the middle of
the frame, the pose model always outputs heatmaps that decode to one standing whole-body skeleton (133
COCO-WholeBody points, face landmarks included) inside that box. The smoke video is noise anyway; what matters
is that each stage runs as it does on a real worker.

An ONNX file is a protobuf `ModelProto`; this module encodes the few message fields these graphs need (field
numbers from onnx/onnx.proto) with a minimal protobuf wire-format writer, so neither the `onnx` package nor a
download is needed. The tests build their own graphs with the same writers.
"""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import numpy as np

FLOAT = 1  # TensorProto.DataType
INT64 = 7
ATTR_FLOAT, ATTR_INT, ATTR_INTS = 1, 2, 7  # AttributeProto.AttributeType

HEATMAP_HW = (64, 48)  # ViTPose output rows, cols for its 256x192 input
HEATMAP_SIGMA = 1.5  # heatmap pixels
# The smoke person box, rows of the detector's (300, 6) output in its 640x640 input space:
# x1, y1, x2, y2, score, class (0 = person). A tall box around the frame's centre.
SMOKE_PERSON_BOX = np.array([[208.0, 48.0, 432.0, 624.0, 0.9, 0.0]], np.float32)


# ---------------------------------------------------------------------------------------------------
# Protobuf wire format


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
    return _int(1, 8) + _bytes(2, "wan-animate-smoke") + _bytes(7, graph) + _bytes(8, opset_id)


# ---------------------------------------------------------------------------------------------------
# Graphs with the released models' signatures


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


def write_vitpose(folder: Path, weight: np.ndarray, batch: int | str = "batch", offset: np.ndarray | None = None
                  ) -> Path:  # fmt: skip
    """A ViTPose-shaped graph in the official layout: `folder/end2end.onnx` + external weights file.

    input (B, 3, 256, 192) -> every 4th pixel (pool of kernel 1, stride 4) -> 1x1 Conv with `weight` (133, 3)
    [+ `offset` (133, 64, 48)] -> output (B, 133, 64, 48). Heatmap pixel j reads input pixel 4j, the
    heatmap/input alignment the official decoding assumes (x_input = 4 x_heatmap).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    w = np.ascontiguousarray(weight.reshape(133, 3, 1, 1).astype(np.float32))
    (folder / "conv.weight").write_bytes(w.tobytes())
    conv_out = "output" if offset is None else "conv"
    nodes = [
        node("AveragePool", ["input"], ["pooled"], [attr_ints("kernel_shape", [1, 1]), attr_ints("strides", [4, 4])]),
        node("Conv", ["pooled", "conv.weight"], [conv_out], [attr_ints("kernel_shape", [1, 1])]),
    ]
    inits = [tensor("conv.weight", w, external=("conv.weight", 0))]
    if offset is not None:
        nodes.append(node("Add", [conv_out, "offset"], ["output"]))
        inits.append(tensor("offset", np.asarray(offset, np.float32).reshape(1, 133, *HEATMAP_HW)))
    graph = model(
        nodes, inits, [value_info("input", [batch, 3, 256, 192])], [value_info("output", [batch, 133, 64, 48])]
    )
    path = folder / "end2end.onnx"
    path.write_bytes(graph)
    return path


# ---------------------------------------------------------------------------------------------------
# The fixed standing skeleton, in fractions (x, y) of the 256x192 pose crop (x = 0.5 is the crop's centre line).
# It spans 21% of the crop's width: inside the person box for frames up to portrait 9:16.

# COCO-17 body, the person facing the camera (their left side on the image's right).
BODY_17 = (
    (0.500, 0.170), (0.515, 0.160), (0.485, 0.160), (0.535, 0.170), (0.465, 0.170),  # nose, eyes, ears
    (0.555, 0.250), (0.445, 0.250), (0.575, 0.380), (0.425, 0.380), (0.585, 0.500), (0.415, 0.500),  # arms
    (0.540, 0.520), (0.460, 0.520), (0.545, 0.680), (0.455, 0.680), (0.550, 0.820), (0.450, 0.820),  # legs
)  # fmt: skip
# Feet: left big toe, small toe, heel, then the right ones.
FEET_6 = ((0.570, 0.850), (0.580, 0.845), (0.550, 0.835), (0.430, 0.850), (0.420, 0.845), (0.450, 0.835))
FACE_CENTER = (0.500, 0.175)
FACE_HALF_WH = (0.045, 0.040)


def face_68(center: tuple[float, float] = FACE_CENTER, half_wh: tuple[float, float] = FACE_HALF_WH) -> np.ndarray:
    """(68, 2) landmarks in the iBUG 68 layout: jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67."""
    cx, cy = center
    hw, hh = half_wh
    jaw_angle = np.linspace(np.pi, 0.0, 17)  # from the image-left ear round the chin to the image-right ear
    jaw = np.stack([cx + hw * np.cos(jaw_angle), cy + hh * (0.2 + 0.8 * np.sin(jaw_angle))], axis=1)
    brows = np.stack(
        [cx + hw * np.r_[np.linspace(-0.8, -0.2, 5), np.linspace(0.2, 0.8, 5)], np.full(10, cy - 0.6 * hh)], 1
    )
    nose = np.r_[np.stack([np.full(4, cx), cy + hh * np.linspace(-0.4, 0.2, 4)], 1),
                 np.stack([cx + hw * np.linspace(-0.2, 0.2, 5), np.full(5, cy + 0.3 * hh)], 1)]  # fmt: skip
    ring6 = np.linspace(0, 2 * np.pi, 6, endpoint=False)
    eyes = np.r_[
        np.stack([cx - 0.45 * hw + 0.15 * hw * np.cos(ring6), cy - 0.3 * hh + 0.08 * hh * np.sin(ring6)], 1),
        np.stack([cx + 0.45 * hw + 0.15 * hw * np.cos(ring6), cy - 0.3 * hh + 0.08 * hh * np.sin(ring6)], 1),
    ]
    outer, inner = np.linspace(0, 2 * np.pi, 12, endpoint=False), np.linspace(0, 2 * np.pi, 8, endpoint=False)
    mouth = np.r_[
        np.stack([cx + 0.35 * hw * np.cos(outer), cy + 0.6 * hh + 0.12 * hh * np.sin(outer)], 1),
        np.stack([cx + 0.25 * hw * np.cos(inner), cy + 0.6 * hh + 0.05 * hh * np.sin(inner)], 1),
    ]
    return np.concatenate([jaw, brows, nose, eyes, mouth]).astype(np.float64)


def hand_21(wrist: tuple[float, float], side: float) -> np.ndarray:
    """(21, 2) hand points hanging down from `wrist`: the wrist, then 4 joints per finger, thumb first.

    side = +1 for the hand on the image's right (thumb towards the body's centre line, i.e. image left), -1 mirrored.
    """
    x0, y0 = wrist
    points = [(x0, y0)]
    for finger in range(5):
        dx = side * (-0.02 + 0.01 * finger)
        points += [(x0 + dx * (0.5 + 0.2 * joint), y0 + 0.012 * (joint + 1)) for joint in range(4)]
    return np.asarray(points, np.float64)


def smoke_keypoints() -> np.ndarray:
    """(133, 2) COCO-WholeBody points of the smoke skeleton, in fractions (x, y) of the pose crop."""
    body = np.asarray(BODY_17 + FEET_6, np.float64)
    left_hand = hand_21(BODY_17[9], side=1.0)  # point 9: the left wrist (image right)
    right_hand = hand_21(BODY_17[10], side=-1.0)
    return np.concatenate([body, face_68(), left_hand, right_hand])


def smoke_heatmaps(keypoints: np.ndarray | None = None, sigma: float = HEATMAP_SIGMA) -> np.ndarray:
    """(133, 64, 48) float32 heatmaps: one Gaussian of peak 1 per keypoint, centred on its (sub-pixel) position."""
    kps = smoke_keypoints() if keypoints is None else keypoints
    rows, cols = HEATMAP_HW
    ys, xs = np.mgrid[0:rows, 0:cols].astype(np.float64)
    centers_x, centers_y = kps[:, 0] * cols, kps[:, 1] * rows
    dist2 = (xs[None] - centers_x[:, None, None]) ** 2 + (ys[None] - centers_y[:, None, None]) ** 2
    return np.exp(-dist2 / (2 * sigma**2)).astype(np.float32)


def write_smoke_pose_models(folder: Path) -> tuple[Path, Path]:
    """The smoke detector (`det/yolov10m.onnx`) and pose model (`pose2d/end2end.onnx` + weights) in `folder`."""
    folder = Path(folder)
    (folder / "det").mkdir(parents=True, exist_ok=True)
    detector = write_detector(folder / "det" / "yolov10m.onnx", SMOKE_PERSON_BOX)
    pose = write_vitpose(folder / "pose2d", np.zeros((133, 3), np.float32), offset=smoke_heatmaps())
    return detector, pose


def smoke_pose_estimator(providers: list | None = None):
    """The production `WholeBodyPoseEstimator(OnnxPersonDetector, OnnxWholeBodyPose)` on the smoke graphs.

    The graphs are written to a temporary folder that is removed once onnxruntime has loaded them.
    """
    from .detection import OnnxPersonDetector
    from .pose import OnnxWholeBodyPose, WholeBodyPoseEstimator

    providers = providers or ["CPUExecutionProvider"]
    with tempfile.TemporaryDirectory(prefix="wan-animate-smoke-onnx-") as folder:
        detector_path, pose_path = write_smoke_pose_models(Path(folder))
        return WholeBodyPoseEstimator(
            OnnxPersonDetector(detector_path, providers), OnnxWholeBodyPose(pose_path.parent, providers)
        )
