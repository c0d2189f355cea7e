"""The debug videos a request can return: what the model saw (skeletons, face crops, reference, masks)."""

from __future__ import annotations

from pathlib import Path

from .conditioning import Conditioning
from .video_io import write_video


def save_debug_files(cond: Conditioning, out_dir: Path) -> dict[str, Path]:
    """Write what the model sees: src_pose.mp4, src_face.mp4, src_ref.png (+ src_bg.mp4, src_mask.mp4).

    Unlike the official src_ref.png (a copy of the input file), ours is the resized/letterboxed array.
    """
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "pose": write_video(out_dir / "src_pose.mp4", iter(cond.pose_frames), cond.fps),
        "face": write_video(out_dir / "src_face.mp4", iter(cond.face_frames), cond.fps),
    }
    Image.fromarray(cond.reference).save(out_dir / "src_ref.png")
    files["ref"] = out_dir / "src_ref.png"
    if cond.background_frames is not None:
        files["bg"] = write_video(out_dir / "src_bg.mp4", iter(cond.background_frames), cond.fps)
    if cond.mask_frames is not None:
        masks = (m * 255 for m in cond.mask_frames)  # (H, W) {0, 255}, written as grey video
        files["mask"] = write_video(out_dir / "src_mask.mp4", masks, cond.fps)
    return files

