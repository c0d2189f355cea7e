"""Person detection: the released YOLOv10m ONNX detector (smoke runs use a tiny graph of the same signature).

Why onnxruntime and not ultralytics for the real detector: the release ships `yolov10m.onnx`
(process_checkpoint/det/ in Wan-AI/Wan2.2-Animate-14B), and what the pose model later sees depends
on the official pre- and post-processing around that graph: a plain stretch to 640x640 (not
ultralytics' letterbox), score >= 0.05, OpenCV NMS at IoU 0.5, integer-truncated boxes and the
"largest person, unless its longest side is under 0.4x the longest" choice. ultralytics would
letterbox, threshold and pick boxes its own way; running the same ONNX file with the same
arithmetic reproduces the boxes the official pipeline gets.

Channel order: the official `Pose2d.load_images` swaps the RGB frames to BGR and the detector's
`read_img` swaps them back, so the detector sees RGB, which is what ultralytics-exported YOLO graphs
expect. We feed RGB: faithful and correct at once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from .frame_threads import map_frames

logger = logging.getLogger(__name__)

DET_SIZE = 640  # the official detector input, width and height
CONF_THRESHOLD = 0.05
IOU_THRESHOLD = 0.5
SHAPE_RATIO = 0.4  # a person box whose longest side is under 0.4x the longest is not chosen
PERSON_CLASS = 0  # COCO "person"

Providers = list[str | tuple[str, dict]]  # onnxruntime execution providers, optionally with options


class PersonDetector(Protocol):
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB -> (N, 5) float64 x1, y1, x2, y2, score; score -1 = nobody (whole frame)."""
        ...

    def detect_all(self, frames: np.ndarray) -> list[np.ndarray]:
        """(N, H, W, 3) uint8 RGB -> per frame (M, 5) float64 x1, y1, x2, y2, score of EVERY person (M may be 0)."""
        ...


def default_providers() -> Providers:
    """CUDA first when this onnxruntime build has it, CPU always as fallback."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def wants_cuda(providers: Providers) -> bool:
    """True when the provider list asks for onnxruntime's CUDA execution provider."""
    return any((p if isinstance(p, str) else p[0]) == "CUDAExecutionProvider" for p in providers)


def torch_cuda_library_dir(ort_cuda_version: str | None) -> Path | None:
    """torch's CUDA 13+ library folder (`site-packages/nvidia/cu<major>/lib`, where NVIDIA's consolidated CUDA
    wheels put cuBLAS, cuRAND, cudart...) when torch has one for onnxruntime's CUDA major version, else None."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.version.cuda or not ort_cuda_version:
        return None
    major = torch.version.cuda.split(".")[0]
    if major != str(ort_cuda_version).split(".")[0]:
        return None
    folder = Path(torch.__file__).resolve().parents[1] / "nvidia" / f"cu{major}" / "lib"
    return folder if folder.is_dir() else None


def load_cuda_libraries() -> None:
    """Make CUDA and cuDNN loadable for onnxruntime-gpu before a CUDA session is created.

    `import torch` first: torch's CUDA build links cudart, cuBLAS(Lt), cuRAND and cuDNN from the nvidia-* wheels
    it depends on, and once they are loaded onnxruntime finds them by name (onnxruntime documents this: no
    preloading is needed "if `import torch` is done before"). That also works when onnxruntime-gpu is installed
    somewhere else than those wheels, where `preload_dlls()` alone (it looks in the nvidia/ folders of its own
    site-packages) finds nothing; for CUDA 13+ builds torch's consolidated `nvidia/cu<major>/lib` folder is handed
    to it as well. `preload_dlls()` then loads what torch did not (it prints, not raises, what it cannot find).
    """
    import onnxruntime as ort

    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    if not hasattr(ort, "preload_dlls"):  # onnxruntime-gpu < 1.21
        return
    try:
        folder = torch_cuda_library_dir(getattr(ort, "cuda_version", None))
        if folder is not None:
            ort.preload_dlls(cudnn=False, directory=str(folder))
        ort.preload_dlls()
    except Exception as error:  # missing libraries: the session falls back to CPU, checked after creating it
        logger.warning("onnxruntime could not preload CUDA libraries: %s", error)


def uses_cuda(session) -> bool:
    """True when the session really runs on onnxruntime's CUDA provider (not a silent CPU fallback)."""
    return session.get_providers()[:1] == ["CUDAExecutionProvider"]


def open_onnx_session(path: Path, providers: Providers | None = None):
    """An onnxruntime session on `path` (external-data files are resolved next to it).

    When CUDA was asked for but onnxruntime fell back to the CPU (no onnxruntime-gpu, or CUDA/cuDNN libraries it
    cannot load; onnxruntime only prints that), this logs an error: the models still run, many times slower.
    """
    import onnxruntime as ort

    if not Path(path).is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    providers = providers or default_providers()
    if wants_cuda(providers):
        load_cuda_libraries()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    logger.info("onnxruntime %s on %s", Path(path).name, session.get_providers())
    if wants_cuda(providers) and not uses_cuda(session):
        logger.error(
            "onnxruntime runs %s on %s although CUDA was requested (onnxruntime %s, providers available: %s); "
            "preprocessing will be slow. Install onnxruntime-gpu built for the CUDA major version of torch.",
            Path(path).name, session.get_providers(), ort.__version__, ort.get_available_providers(),
        )  # fmt: skip
    return session


def fixed_batch_size(session) -> int | None:
    """The graph's batch size when its first input has a fixed one, None when the batch is dynamic."""
    dim = session.get_inputs()[0].shape[0]
    return dim if isinstance(dim, int) and dim > 0 else None


ARENA_SHRINK_KEY = "memory.enable_memory_arena_shrinkage"  # an onnxruntime RunOptions config key


def arena_release_options(arena: str):
    """RunOptions that hand an onnxruntime memory arena's unused memory back at the end of each run.

    `arena` is "gpu:<device id>" (or "cpu:0"). Without it the CUDA arena keeps its high-water mark for the life of the
    worker, beside the 14B model (5.5 GiB after loading on an H100, 12.5 GiB after batch-32 runs: BENCHMARKS.md).
    """
    import onnxruntime as ort

    options = ort.RunOptions()
    options.add_run_config_entry(ARENA_SHRINK_KEY, arena)
    return options


def cuda_device_id(session) -> int:
    """The GPU a CUDA session runs on (its provider options; 0 when not given)."""
    return int(session.get_provider_options().get("CUDAExecutionProvider", {}).get("device_id", 0))


class BatchedSession:
    """An onnxruntime session run over (N, ...) inputs `batch` at a time, at one constant input shape where it pays.

    The last, short chunk is zero-padded to `batch` when the graph's batch is fixed, and also on CUDA: onnxruntime's
    CUDA convolutions re-tune their cuDNN algorithms (EXHAUSTIVE search, the provider's default) whenever the input
    shape changes, which cost YOLOv10m about 0.8 s per call on an H100 when chunks of 16 and 12 frames alternated
    (BENCHMARKS.md). Padded rows are dropped from the outputs; each row's result does not depend on the others.
    On CUDA each run also releases the arena's unused memory (`arena_release_options`): the GPU is the 14B model's.
    """

    def __init__(self, session, max_batch: int) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name
        fixed = fixed_batch_size(session)
        self.batch = fixed or max_batch
        self.cuda = uses_cuda(session)
        self.pad = fixed is not None or self.cuda
        self.run_options = arena_release_options(f"gpu:{cuda_device_id(session)}") if self.cuda else None

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """(N, ...) float32 -> the first output (N, ...), run in chunks of `self.batch` (padded as above)."""
        outs = []
        for start in range(0, len(inputs), self.batch):
            chunk = inputs[start : start + self.batch]
            n = len(chunk)
            if self.pad and n < self.batch:
                chunk = np.concatenate([chunk, np.zeros((self.batch - n, *chunk.shape[1:]), chunk.dtype)])
            outs.append(self.session.run(None, {self.input_name: chunk}, self.run_options)[0][:n])
        return np.concatenate(outs)

    def warm_up(self, sample_shape: tuple[int, ...]) -> None:
        """On CUDA, one run on zeros at the constant shape: the cuDNN tuning is paid at load, not by a request.

        It also checks that this onnxruntime build can release the CUDA arena; if it refuses (no arena allocator on
        that device), runs go on without releasing, and the log says so.
        """
        if not self.cuda:
            return
        zeros = np.zeros((self.batch, *sample_shape), np.float32)
        try:
            self.session.run(None, {self.input_name: zeros}, self.run_options)
        except Exception as error:  # noqa: BLE001 - onnxruntime's own error types derive from Exception only
            if self.run_options is None:
                raise
            logger.warning("onnxruntime cannot release its CUDA arena after runs (%s); its memory stays held", error)
            self.run_options = None
            self.session.run(None, {self.input_name: zeros})


def fallback_box(height: int, width: int) -> np.ndarray:
    """The official box when nobody is found: the whole frame, score -1."""
    return np.array([0.0, 0.0, float(width), float(height), -1.0])


def detector_input(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, 640, 640) float32 in [0, 1]: stretched, not letterboxed, as official.

    The official code divides by 255 in float64 and casts to float32; dividing in float32 gives the same float32
    for every one of the 256 levels (checked by a test) at half the time and memory.
    """
    resized = cv2.resize(frame, (DET_SIZE, DET_SIZE))  # bilinear, aspect not kept (official)
    out = resized.transpose(2, 0, 1).astype(np.float32, order="C")
    out /= np.float32(255.0)
    return out


def detector_inputs(frames: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB -> (N, 3, 640, 640) float32 detector inputs, frames prepared side by side."""
    return np.stack(map_frames(detector_input, frames))


def decode_end2end(output: np.ndarray, height: int, width: int) -> np.ndarray:
    """One frame's YOLOv10 end-to-end output (K, 6) -> (M, 6) x1, y1, x2, y2, score, class after NMS.

    As official: keep score >= 0.05, scale from 640x640 to the frame, truncate x, y, w, h to int,
    OpenCV NMS (IoU 0.5) across classes; rows in NMS order (descending score).
    """
    rows = np.asarray(output).reshape(-1, output.shape[-1])
    if rows.shape[-1] != 6:
        # The official code also has a branch for raw (84, K) YOLOv8-style outputs, but it only
        # transposes when the per-frame array's second axis is 84, so it never worked per frame;
        # the released yolov10m.onnx gives (1, 300, 6).
        raise ValueError(f"expected a YOLOv10 end-to-end output (K, 6), got {output.shape}")
    keep = rows[:, 4] >= CONF_THRESHOLD
    rows = rows[keep]
    if len(rows) == 0:
        return np.zeros((0, 6))
    boxes = rows[:, :4].astype(np.float32)  # float32 in-place arithmetic as official (it sets the truncation)
    boxes[:, [0, 2]] *= width / DET_SIZE
    boxes[:, [1, 3]] *= height / DET_SIZE
    boxes[:, 2] -= boxes[:, 0]
    boxes[:, 3] -= boxes[:, 1]
    xywh = boxes.astype(np.int32)
    scores = rows[:, 4].tolist()
    picked = cv2.dnn.NMSBoxes(xywh.tolist(), scores, CONF_THRESHOLD, IOU_THRESHOLD)
    picked = np.asarray(picked, dtype=np.int64).reshape(-1)
    out = np.zeros((len(picked), 6))
    for row, i in enumerate(picked):
        x, y, w, h = (int(v) for v in xywh[i])
        out[row] = [x, y, x + w, y + h, scores[i], float(rows[i, 5])]
    return out


def select_largest_person(dets: np.ndarray) -> np.ndarray | None:
    """The official choice among (M, 6) detections: (5,) x1, y1, x2, y2, score, or None.

    Persons with score > 0.05 are visited in NMS order; a box is taken when its area beats the best
    so far, unless its longest side is under 0.4x the reference side. The reference side starts as the
    longest side of all persons and then becomes the side of the box last taken (official quirk, kept).
    """
    persons = [d for d in dets if int(d[5]) == PERSON_CLASS and d[4] > CONF_THRESHOLD]
    if not persons:
        return None
    ref_side = max(max(d[2] - d[0], d[3] - d[1]) for d in persons)
    best: np.ndarray | None = None
    best_area = -np.inf
    for d in persons:
        area = (d[2] - d[0]) * (d[3] - d[1])
        side = max(d[2] - d[0], d[3] - d[1])
        if area > best_area:
            if side < ref_side * SHAPE_RATIO:
                continue
            best_area, ref_side, best = area, side, d
    return None if best is None else np.asarray(best[:5], dtype=np.float64)


def person_boxes(dets: np.ndarray) -> np.ndarray:
    """(M, 6) detections -> (P, 5) x1, y1, x2, y2, score of the persons `select_largest_person` chooses among
    (class person, score > 0.05), in the same (NMS) order."""
    persons = [d[:5] for d in dets if int(d[5]) == PERSON_CLASS and d[4] > CONF_THRESHOLD]
    return np.asarray(persons, dtype=np.float64).reshape(-1, 5)


def largest_person(persons: np.ndarray, height: int, width: int) -> np.ndarray:
    """(P, 5) person boxes in NMS order -> (5,) the official choice among them, or the whole-frame fallback."""
    rows = np.concatenate([persons, np.full((len(persons), 1), float(PERSON_CLASS))], axis=1)
    box = select_largest_person(rows)
    return fallback_box(height, width) if box is None else box


class OnnxPersonDetector:
    """The released YOLOv10m detector (`process_checkpoint/det/yolov10m.onnx`) with official pre/post-processing."""

    def __init__(self, path: Path, providers: Providers | None = None, max_batch: int = 16) -> None:
        self.runner = BatchedSession(open_onnx_session(Path(path), providers), max_batch)
        self.runner.warm_up((3, DET_SIZE, DET_SIZE))

    def raw_outputs(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB -> the graph's (N, K, 6) outputs, run `self.runner.batch` frames at a time."""
        return np.concatenate([self.runner.run(detector_inputs(frames[start : start + self.runner.batch]))
                               for start in range(0, len(frames), self.runner.batch)])  # fmt: skip

    def detect_all(self, frames: np.ndarray) -> list[np.ndarray]:
        """(N, H, W, 3) uint8 RGB -> per frame (P, 5) x1, y1, x2, y2, score of every person, NMS order (for tracking)."""
        height, width = frames.shape[1:3]
        return [person_boxes(decode_end2end(out, height, width)) for out in self.raw_outputs(frames)]

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB -> (N, 5) x1, y1, x2, y2, score per frame: the official largest person (official
        fallback when nobody)."""
        height, width = frames.shape[1:3]
        boxes = [largest_person(p, height, width) for p in self.detect_all(frames)]
        return np.stack(boxes) if boxes else np.zeros((0, 5))

