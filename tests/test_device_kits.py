"""benchmarks/device_kits.py: kit parts fit one device call, join back to the whole, and git ignores them."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import device_kits  # noqa: E402


def test_parts_join_back_to_the_whole_and_the_last_folder_checks_it(tmp_path: Path):
    blob = tmp_path / "rj.tar"
    blob.write_bytes(bytes(range(256)) * 41)  # 10,496 bytes
    parts = device_kits.split_into_parts(blob, 4000, tmp_path, "rjp")
    assert [p.parent.name for p in parts] == [".rjp0", ".rjp1", ".rjp2"]
    assert [p.stat().st_size for p in parts] == [4000, 4000, 2496]
    assert b"".join(p.read_bytes() for p in parts) == blob.read_bytes()
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()
    assert (tmp_path / ".rjp2" / "sha").read_text() == f"{digest}  /tmp/rj.tar\n"
    assert not (tmp_path / ".rjp0" / "sha").exists()


def test_a_rebuild_removes_the_parts_of_a_longer_earlier_split(tmp_path: Path):
    blob = tmp_path / "fa4.tar"
    blob.write_bytes(b"x" * 9000)
    device_kits.split_into_parts(blob, 2000, tmp_path, "fa4p")  # five parts
    device_kits.split_into_parts(blob, 5000, tmp_path, "fa4p")  # two parts
    assert sorted(p.name for p in tmp_path.glob(".fa4p*")) == [".fa4p0", ".fa4p1"]


def test_the_part_budget_leaves_room_for_the_tracked_tree():
    tree = 7_380_037  # the tracked tree on 2026-12-07
    budget = device_kits.part_budget(tree)
    assert tree + budget + device_kits.MARGIN_BYTES == device_kits.CALL_LIMIT_BYTES
    assert budget > 55_000_000  # the largest wheel kit part then: ~57.6 MB
    with pytest.raises(SystemExit, match="no room"):
        device_kits.part_budget(60 * 2**20)


def test_git_ignores_the_kit_folders_and_a_second_run_adds_no_duplicate_lines(tmp_path: Path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    patterns = ["/.whl/", "/.fa4p[0-9]*/", "/.rjp[0-9]*/"]
    device_kits.exclude_from_git(tmp_path, patterns)
    device_kits.exclude_from_git(tmp_path, patterns)
    lines = (tmp_path / ".git" / "info" / "exclude").read_text().splitlines()
    assert [line for line in lines if line in patterns] == patterns
    for folder in (".whl", ".fa4p1", ".rjp5", "kept"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "part").write_bytes(b"1")
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=tmp_path, check=True,
                            capture_output=True, text=True).stdout
    assert status.splitlines() == ["?? kept/part"]
