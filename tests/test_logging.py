"""The app's INFO lines reach stdout (the hosted task log) once each, and step progress is in tqdm's form."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

from local_runner import APP_ROOT, import_app_module

app_logging = import_app_module("app_logging")


def run_python(code: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter (pytest's own logging handlers would hide what a worker process sees)."""
    prelude = f"import logging, sys\nsys.path.insert(0, {str(APP_ROOT)!r})\nfrom local_runner import import_app_module\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, cwd=APP_ROOT)  # fmt: skip


def test_info_lines_go_to_stdout_once_when_nobody_configured_logging() -> None:
    result = run_python("""
        app_logging = import_app_module("app_logging")
        app_logging.configure_logging()
        app_logging.configure_logging()  # setup may run twice: still one handler
        logging.getLogger("wan_animate.preprocess").info("stage started")
        logging.getLogger("other.library").info("not ours")
    """)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and "wan_animate.preprocess INFO stage started" in lines[0]
    assert "stage started" not in result.stderr and "not ours" not in result.stdout


def test_a_runner_that_configured_logging_keeps_it_and_gets_no_duplicate() -> None:
    result = run_python("""
        logging.basicConfig(level=logging.INFO)  # as local_runner does
        app_logging = import_app_module("app_logging")
        app_logging.configure_logging()
        logging.getLogger("wan_animate").info("configured before")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr.count("configured before") == 1


def test_a_root_handler_added_after_setup_does_not_double_the_lines() -> None:
    result = run_python("""
        app_logging = import_app_module("app_logging")
        app_logging.configure_logging()
        logging.basicConfig(level=logging.INFO)  # the host configures logging later
        logging.getLogger("wan_animate").info("configured after")
    """)
    assert result.returncode == 0, result.stderr
    assert (result.stdout + result.stderr).count("configured after") == 1


def test_setup_configures_logging_for_the_hosted_log() -> None:
    result = run_python("""
        import asyncio
        inference = import_app_module("inference")
        asyncio.run(inference.App().setup(inference.AppSetup(preset="smoke")))
    """)
    assert result.returncode == 0, result.stderr
    assert len([line for line in result.stdout.splitlines() if "setup done in" in line]) == 1


TQDM = re.compile(r"(\d+)%\|[^|]*\| (\d+)/(\d+) \[([\d:]+)<([\d:]+), ")  # NN%|...| n/N: what hosted clients parse


def test_step_progress_is_a_tqdm_meter_with_an_eta() -> None:
    line = app_logging.progress_line(9, 20, 12.0)
    match = TQDM.search(line)
    assert match is not None, line
    assert match.groups() == ("45", "9", "20", "00:12", "00:15")  # 1.33 s/step x 11 steps left
    assert TQDM.search(app_logging.progress_line(20, 20, 3725.0)).groups() == ("100", "20", "20", "1:02:05", "00:00")


def test_the_step_logger_writes_one_meter_line_per_step(caplog) -> None:
    on_step = app_logging.progress_logger(0.0)
    with caplog.at_level("INFO", logger="wan_animate"):
        on_step(1, 2, 0, 4)  # clip 2 of 2, step 1 of 4: step 5 of 8 overall
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith("generate: clip 2/2 step 1/4 (")
    assert TQDM.search(message).groups()[:3] == ("62", "5", "8")
