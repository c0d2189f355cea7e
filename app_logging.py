"""The app's log lines: INFO to stdout for the hosted task log, and the denoising loop's tqdm-style progress meter."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

APP_LOGGER = "wan_animate"  # the app's loggers: "wan_animate" and its children ("wan_animate.preprocess", ...)
logger = logging.getLogger(APP_LOGGER)


def _root_has_no_handlers(record: logging.LogRecord) -> bool:
    return not logging.getLogger().handlers


def configure_logging() -> logging.Logger:
    """Make the app's INFO lines reach stdout, which the hosted task log records (Python's default shows WARNING+).

    Only when the root logger has no handler: a runner that configured logging itself (local_runner's basicConfig)
    keeps its format and levels. The handler also stays silent if the root logger gains a handler later, so no line
    is written twice. Idempotent (setup may run more than once per process)."""
    app_logger = logging.getLogger(APP_LOGGER)
    if logging.getLogger().handlers or any(getattr(h, "wan_animate_stdout", False) for h in app_logger.handlers):
        return app_logger
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    handler.addFilter(_root_has_no_handlers)
    handler.wan_animate_stdout = True  # type: ignore[attr-defined]
    app_logger.addHandler(handler)
    if app_logger.level == logging.NOTSET:
        app_logger.setLevel(logging.INFO)
    return app_logger


def _interval(seconds: float) -> str:
    """tqdm's time format: mm:ss, or h:mm:ss from an hour on."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def progress_line(done: int, total: int, elapsed: float, width: int = 20) -> str:
    """tqdm's meter, ` 45%|█████████           | 9/20 [00:12<00:14, 1.33s/step]`: hosted clients parse `NN%|...| n/N`
    from the task log into a progress value. The ETA is the mean step time so far times the steps left."""
    fraction = done / total if total else 1.0
    filled = int(width * fraction)
    per_step = elapsed / done if done else 0.0
    remaining = per_step * (total - done)
    return (f"{100 * fraction:3.0f}%|{'█' * filled}{' ' * (width - filled)}| {done}/{total} "
            f"[{_interval(elapsed)}<{_interval(remaining)}, {per_step:.2f}s/step]")  # fmt: skip


def progress_logger(start: float) -> Callable[[int, int, int, int], None]:
    """on_step for wan.generate: one line per denoising step, `generate: clip 1/2 step 3/4 ( 38%|...| 3/8 [..])`,
    the meter counting all clips' steps together."""

    def on_step(segment: int, num_segments: int, step: int, num_steps: int) -> None:
        done = segment * num_steps + step + 1
        total = num_segments * num_steps
        meter = progress_line(done, total, time.perf_counter() - start)
        logger.info("generate: clip %d/%d step %d/%d (%s)", segment + 1, num_segments, step + 1, num_steps, meter)

    return on_step
