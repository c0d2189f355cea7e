"""Memory of the driving pass over a 4K video follows the working size: frames are reduced as they are decoded; and
the whole preprocess() grows per frame by about a pose in both modes (skeletons are drawn when read; the face crops
and replacement mode's frames, masks and background are kept on disk).

Each measurement runs in a fresh process (peak RSS, ru_maxrss, is per process): the animation-mode driving pass
(decode, reduce, pose, face crops), or the whole preprocess(), with a stand-in pose estimator over the first N frames
of a 3840x2160 clip.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from wan_animate.preprocess import video_io as vio

APP_ROOT = Path(__file__).resolve().parents[1]

CHILD_START = """
import json, logging, resource, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from local_runner import load_app_package
load_app_package()
from wan_animate.preprocess import PreprocessModels, PreprocessOptions, driving_pass, model_loading, preprocess
from wan_animate.preprocess import video_decode
from wan_animate.preprocess.pose_meta import PoseMeta

def stand_in(frames):  # one person in the middle, with a face box: no model
    h, w = frames.shape[1:3]
    metas = []
    for _ in frames:
        m = PoseMeta.empty(w, h)
        m.body[:, :2] = (w / 2, h / 2)
        m.body[:, 2] = 0.9
        m.person_box = np.array([w * 0.3, h * 0.1, w * 0.7, h * 0.95, 0.9], np.float32)
        m.face_box = np.array([w * 0.45, h * 0.12, w * 0.55, h * 0.3, 0.9], np.float32)
        metas.append(m)
    return metas
"""

CHILD = CHILD_START + """
clip, frames = sys.argv[2], int(sys.argv[3])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
info = video_decode.probe_video(clip)
work_w, work_h = driving_pass.working_size(info.width, info.height, 1280 * 720)
models = model_loading.PreprocessModels(pose_estimator=stand_in)
drive = driving_pass.driving_pass(clip, list(range(frames)), models, None, False, logging.getLogger("memory"),
                                  work_hw=(work_h, work_w), source_hw=(info.height, info.width))
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "before_mb": before,
                  "frame_hw": list(drive.frame_hw), "pose_wh": [drive.poses[0].width, drive.poses[0].height],
                  "faces": len(drive.faces)}))
"""


CHILD_PREPROCESS = CHILD_START + """
class BatchReadingSegmenter:  # stand-in SAM2: reads every frame, 32 at a time as SAM2's resize does; the person box
    def segment(self, frames, clicks):
        count, height, width = frames.shape[:3]
        for start in range(0, count, 32):
            assert frames[start : start + 32].shape[0] > 0
        masks = np.zeros((count, height, width), bool)
        masks[:, int(height * 0.1) : int(height * 0.95), int(width * 0.3) : int(width * 0.7)] = True
        return masks

clip, reference, fps, mode, work = sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5], sys.argv[6]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
models = PreprocessModels(pose_estimator=stand_in, segmenter=BatchReadingSegmenter() if mode == "replacement" else None)
cond = preprocess(clip, reference, PreprocessOptions(mode=mode, fps=fps), models, log=logging.getLogger("memory"),
                  work_dir=work)
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "before_mb": before,
                  "frames": cond.num_frames, "size": [cond.width, cond.height],
                  "skeletons": type(cond.pose_frames).__name__,
                  "faces": type(cond.face_frames).__name__, "background": type(cond.background_frames).__name__,
                  "masks": type(cond.mask_frames).__name__,
                  "mask_sum": int(sum(int(m.sum()) for m in cond.mask_frames)) if mode == "replacement" else 0}))
"""


@pytest.fixture(scope="module")
def clip_4k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("uhd") / "uhd.mp4"
    cmd = [vio.ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=3840x2160:rate=60",
           "-frames:v", "120", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "30", "-pix_fmt", "yuv420p",
           str(path)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    return path


def _driving_pass_peak(clip: Path, frames: int) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(APP_ROOT), str(clip), str(frames)], capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_4k_driving_pass_memory_does_not_grow_with_source_frames(clip_4k):
    short, long = _driving_pass_peak(clip_4k, 30), _driving_pass_peak(clip_4k, 120)
    # poses refer to the source's pixels, found in frames reduced to 1920x1080
    assert long["frame_hw"] == [2160, 3840] and long["pose_wh"] == [3840, 2160] and long["faces"] == 120
    per_frame_mb = (long["peak_mb"] - short["peak_mb"]) / 90
    # what each frame must keep is its 512x512 face crop (0.79 MB); a kept 4K frame would be 24.9 MB, a kept
    # 1920x1080 one 6.2 MB (the decord reader grew by ~27 MB per 4K frame)
    assert per_frame_mb < 2.0, (short, long)
    # and probing + the pass hold less than one 32-frame chunk of 4K frames (796 MB) would
    assert long["peak_mb"] - long["before_mb"] < 32 * 3840 * 2160 * 3 / 2**20, long


class BoxFinder:
    """Stand-in pose estimator: the bright square's corners as body points; records the frame sizes it was given."""

    def __init__(self) -> None:
        self.sizes: list[tuple[int, int]] = []

    def __call__(self, frames):
        import numpy as np
        from wan_animate.preprocess.pose_meta import PoseMeta

        height, width = frames.shape[1:3]
        self.sizes.append((width, height))
        metas = []
        for frame in frames:
            ys, xs = np.nonzero(frame.min(axis=2) > 200)
            meta = PoseMeta.empty(width, height)
            meta.body[:2] = [[xs.min(), ys.min(), 0.9], [xs.max() + 1, ys.max() + 1, 0.9]]
            meta.person_box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, 0.9], np.float32)
            meta.face_box = meta.person_box.copy()
            metas.append(meta)
        return metas


def _square_clip(path: Path, width: int, height: int) -> Path:
    """6 frames of black with a white square from (width/4, height/4) to (width/2, height/2), lossless."""
    box = f"drawbox=x={width // 4}:y={height // 4}:w={width // 4}:h={height // 4}:color=white:t=fill"
    cmd = [vio.ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", f"color=c=black:s={width}x{height}:r=6",
           "-vf", box, "-frames:v", "6", "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv444p", str(path)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    return path


@pytest.mark.parametrize("width, height, work", [(2560, 1440, (1920, 1080)), (1280, 720, (1280, 720))])
def test_animation_poses_found_at_working_size_refer_to_source_pixels(width, height, work, tmp_path):
    from wan_animate.preprocess import driving_pass, model_loading

    assert driving_pass.working_size(width, height, 1280 * 720) == work
    clip = _square_clip(tmp_path / "square.mp4", width, height)
    finder = BoxFinder()
    models = model_loading.PreprocessModels(pose_estimator=finder)
    drive = driving_pass.driving_pass(clip, list(range(6)), models, None, False, logging.getLogger("test"),
                                      work_hw=work[::-1], source_hw=(height, width))  # fmt: skip
    assert finder.sizes == [work]  # the estimator saw frames at the working size, one chunk
    assert drive.frame_hw == (height, width)
    pose = drive.poses[0]
    assert (pose.width, pose.height) == (width, height)
    # the square's corners in the source's pixels (to within a working-size pixel)
    tolerance = width / work[0] + 0.01
    assert pose.body[0, :2].tolist() == pytest.approx([width / 4, height / 4], abs=tolerance)
    assert pose.body[1, :2].tolist() == pytest.approx([width / 2, height / 2], abs=tolerance)
    assert pose.person_box[:4].tolist() == pytest.approx([width / 4, height / 4, width / 2, height / 2], abs=tolerance)
    assert drive.faces[0].mean() > 100  # the face crop came from the (reduced) frame at the box found there


# glibc raises its mmap threshold as large blocks are freed, after which frame-sized buffers come from the heap and
# freed ones may stay mapped: peak RSS then varies by 0.2-0.8 MiB per frame from run to run with the same code. A
# fixed threshold makes every frame buffer an mmap returned when freed, so the peak measures what the code holds.
FIXED_MMAP_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": str(2**20)}


def _preprocess_peak(clip: Path, reference: Path, fps: float, mode: str = "animation", work: Path | None = None
                     ) -> dict:  # fmt: skip
    """The whole preprocess() of the clip at `fps` (above the clip's 60: source frames repeated) in `mode`."""
    args = [str(APP_ROOT), str(clip), str(reference), str(fps), mode, str(work or clip.parent)]
    done = subprocess.run([sys.executable, "-c", CHILD_PREPROCESS, *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **FIXED_MMAP_THRESHOLD})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_4k_preprocess_memory_grows_per_frame_by_a_pose_not_a_face_crop_or_an_output_frame(clip_4k, tmp_path):
    from PIL import Image

    reference = tmp_path / "reference.png"  # 16:9, so the output is 1280x720
    Image.fromarray(np.full((720, 1280, 3), 128, np.uint8)).save(reference)
    # the 2 s clip at 60 and 300 fps: 120 and 600 output frames from the same 120 decoded 4K frames (the pass's
    # working memory, decoder and chunk buffers, is the same; only what is kept per output frame differs)
    short, long = _preprocess_peak(clip_4k, reference, 60), _preprocess_peak(clip_4k, reference, 300)
    assert short["frames"] == 120 and long["frames"] == 600 and long["size"] == [1280, 720], (short, long)
    assert long["skeletons"] == "SkeletonVideo" and long["faces"] == "FrameStore"
    per_frame_mb = (long["peak_mb"] - short["peak_mb"]) / 480
    # each frame keeps only its pose (a few KB) in memory: 0.015 MiB measured; face crops held in memory would add
    # 0.75 MiB each (0.83 MiB measured when they were), drawn skeletons 2.64 MiB (the eager drawing measured 4.1)
    assert per_frame_mb < 0.3, (short, long)


def test_4k_replacement_memory_grows_per_frame_by_a_pose_not_frames_masks_or_faces(clip_4k, tmp_path):
    from PIL import Image

    reference = tmp_path / "reference.png"
    Image.fromarray(np.full((720, 1280, 3), 128, np.uint8)).save(reference)
    work = tmp_path / "work"
    work.mkdir()
    # 420 and 900 output frames (the 2 s clip at 210 and 450 fps): both runs take full 400-frame SAM2 chunks, so the
    # difference is what is kept per frame
    short = _preprocess_peak(clip_4k, reference, 210, "replacement", work)
    long = _preprocess_peak(clip_4k, reference, 450, "replacement", work)
    assert short["frames"] == 420 and long["frames"] == 900 and long["size"] == [1280, 720], (short, long)
    assert long["background"] == long["masks"] == long["faces"] == "FrameStore"
    box = (int(720 * 0.95) - int(720 * 0.1)) * (int(1280 * 0.7) - int(1280 * 0.3))
    assert long["mask_sum"] > 900 * box  # the stand-in's masks arrived (and were dilated outward), all frames
    assert list(work.iterdir()) == []  # the stores' files had no names and went with the process
    per_frame_mb = (long["peak_mb"] - short["peak_mb"]) / 480
    # each frame keeps only its pose in memory (0.015 MiB measured); its face crop would be 0.75 MiB, its frame (the
    # background) 2.64 MiB and its mask 0.88 MiB (the in-memory pipeline measured 4.6 MiB per frame at 1800 frames)
    assert per_frame_mb < 0.3, (short, long)
