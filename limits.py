"""Documented limits on what a request may ask for; checked before any heavy work."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_duration_s: float = 60.0  # driving video length after trimming nothing: longer is rejected, not cut
    max_output_frames: int = 1800  # frames after resampling to the requested fps (60 s at 30 fps)
    max_input_pixels: int = 3840 * 2160  # per driving-video frame (4K UHD)
    max_image_pixels: int = 50_000_000  # reference image (decompression-bomb guard)
    min_image_side: int = 64  # reference image, each side: smaller has nothing to pose or size the output from
    max_image_aspect: float = 4.0  # reference image, long side / short side: beyond it one output side collapses
    max_file_bytes: int = 2_000_000_000  # any input file (also checked from Content-Length before downloading)
    download_timeout_s: float = 600.0  # wall-clock budget for one input URL's download
    download_stall_s: float = 60.0  # a download with no byte for this long fails (also the connect timeout)
    max_fps: float = 60.0  # requested output rate
    decode_timeout_s: float = 300.0  # wall-clock budget for decoding the driving video


LIMITS = Limits()
