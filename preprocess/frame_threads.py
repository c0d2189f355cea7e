"""Per-frame CPU preparation (resizing, cropping, normalising, drawing) on threads.

Why threads: the work is OpenCV, PIL and NumPy calls on whole images, which release the GIL, and each frame's result
depends on that frame alone, so running frames side by side gives the same arrays in a fraction of the time while
the GPU models wait for their inputs. `WAN_ANIMATE_CPU_THREADS` sets the thread count (1 = no threads).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

ENV_THREADS = "WAN_ANIMATE_CPU_THREADS"
MAX_THREADS = 8  # past this, memory bandwidth, not cores, bounds these image operations


def thread_count() -> int:
    """Threads for per-frame work: $WAN_ANIMATE_CPU_THREADS, else min(8, CPU cores)."""
    explicit = os.environ.get(ENV_THREADS)
    if explicit:
        return max(1, int(explicit))
    return max(1, min(MAX_THREADS, os.cpu_count() or 1))


def map_frames(fn: Callable[..., Any], *items: Iterable) -> list[Any]:
    """[fn(a, b, ...) for a, b, ... in zip(*items)], in order; on `thread_count()` threads when there are several.

    A pool per call: calls come per chunk of frames, so starting a few threads (microseconds) is nothing beside the
    work, and no threads outlive the call.
    """
    args = list(zip(*items, strict=True))
    threads = min(thread_count(), len(args))
    if threads <= 1:
        return [fn(*a) for a in args]
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wan-frames") as pool:
        return list(pool.map(lambda a: fn(*a), args))
