"""One shared thread pool for per-frame CPU preparation (resizing, cropping, normalising).

Why threads: the work is OpenCV, PIL and NumPy calls on whole images, which release the GIL, and each frame's result
depends on that frame alone, so running frames side by side gives the same arrays in a fraction of the time while
the GPU models wait for their inputs. `WAN_ANIMATE_CPU_THREADS` sets the pool size (1 = no threads).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

R = TypeVar("R")

ENV_THREADS = "WAN_ANIMATE_CPU_THREADS"
MAX_THREADS = 8  # past this, memory bandwidth, not cores, bounds these image operations

_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def thread_count() -> int:
    """Threads for per-frame work: $WAN_ANIMATE_CPU_THREADS, else min(8, CPU cores)."""
    explicit = os.environ.get(ENV_THREADS)
    if explicit:
        return max(1, int(explicit))
    return max(1, min(MAX_THREADS, os.cpu_count() or 1))


def map_frames(fn: Callable[..., R], *items: Iterable) -> list[R]:
    """[fn(a, b, ...) for a, b, ... in zip(*items)], in order, on the shared pool when it has more than one thread."""
    global _pool, _pool_size
    args = list(zip(*items, strict=True))
    threads = thread_count()
    if threads == 1 or len(args) < 2:
        return [fn(*a) for a in args]
    if _pool is None or _pool_size != threads:
        if _pool is not None:
            _pool.shutdown(wait=False)
        _pool, _pool_size = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wan-frames"), threads
    return list(_pool.map(lambda a: fn(*a), args))
