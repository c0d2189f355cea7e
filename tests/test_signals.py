"""Ctrl-C and SIGTERM stop `python -m local_runner run` mid-generation: at once, with one line, no traceback, no
temp folders and no child process left (a real runner subprocess, smoke preset)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from local_runner import APP_ROOT

EXAMPLE = APP_ROOT / "examples" / "smoke"
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def marked_processes(marker: str) -> list[int]:
    """Live (non-zombie) processes whose environment holds `marker`: the runner and everything it started, even
    after the runner is gone (children inherit the environment; an orphan is re-parented and escapes a ppid walk)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if f"WAN_TEST_MARKER={marker}".encode() not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            found.append(int(entry.name))
    return found


def interrupt_mid_generation(tmp_path: Path, signum: int) -> tuple[int, str, str, list[int]]:
    """Start the runner on a 2-clip request, send `signum` once clip 2 is denoising (clip 1 is then being encoded by
    an ffmpeg child); returns (exit code, stderr before the signal, stderr after it, the runner's children then)."""
    temp_root = tmp_path / "tmp"
    temp_root.mkdir()
    request = {
        "driving_video": {"path": str(EXAMPLE / "driving.mp4")}, "reference_image": {"path": str(EXAMPLE / "reference.jpg")},
        "resolution_width": 512, "resolution_height": 512, "fps": 4, "clip_len": 5, "sampling_steps": 12, "seed": 1,
    }  # fmt: skip
    (tmp_path / "input.json").write_text(json.dumps(request))
    marker = uuid.uuid4().hex
    env = {**os.environ, "TMPDIR": str(temp_root), "WAN_TEST_MARKER": marker, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "local_runner", "run", str(tmp_path / "input.json"), "--setup",
         str(EXAMPLE / "setup.json"), "--output-dir", str(tmp_path / "out")],
        cwd=APP_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    guard = threading.Timer(300, proc.kill)  # a hung runner fails the test instead of hanging it
    guard.start()
    try:
        before = []
        for line in proc.stderr:
            before.append(line)
            if "generate: clip 2/2 step 1/" in line:
                break
        assert before and "generate: clip 2/2 step 1/" in before[-1], "".join(before[-20:])
        children = [pid for pid in marked_processes(marker) if pid != proc.pid]
        proc.send_signal(signum)
        _, after = proc.communicate(timeout=60)
    finally:
        guard.cancel()
        if proc.poll() is None:
            proc.kill()
    leftovers = [p.name for p in temp_root.iterdir() if p.name.startswith("wan-animate-")]
    assert leftovers == [], leftovers
    assert marked_processes(marker) == [], "child processes outlived the runner"
    return proc.returncode, "".join(before), after, children


@pytest.mark.slow  # ~50 s each on 2 busy CPU cores (a runner start, setup and 1.5 clips of 12 steps)
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_run_at_once_cleanly(tmp_path: Path, signum: int, code: int) -> None:
    returncode, before, after, children = interrupt_mid_generation(tmp_path, signum)
    assert children, "no ffmpeg child was running when the signal came: the test did not exercise its cleanup"
    assert "Traceback" not in before + after and "KeyboardInterrupt" not in after
    messages = [line for line in after.splitlines() if line and not LOG_LINE.match(line)]
    name = signal.Signals(signum).name
    assert messages == [f"error: interrupted by {name}; the run was stopped and its temporary files removed"], after
    steps_after = [line for line in after.splitlines() if "generate: clip 2/2 step" in line]
    assert len(steps_after) <= 1, after  # stopped within the step in flight, not at the end of the run
    assert returncode == code
