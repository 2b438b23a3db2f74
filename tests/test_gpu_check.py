"""The prepared GPU checks (benchmarks/gpu/check.sh) run here on the CPU, one check, as a device session would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_check(tmp_path: Path, only: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OUT": str(tmp_path), "ONLY": only, "DEVICE": "cpu", "SKIP_INSTALL": "1"}
    env["PYTHON"] = sys.executable
    return subprocess.run(
        ["bash", str(ROOT / "benchmarks/gpu/check.sh")], env=env, capture_output=True, text=True, timeout=120
    )


def test_a_check_writes_its_log_and_a_summary_line(tmp_path: Path) -> None:
    done = run_check(tmp_path, "environment")
    assert done.returncode == 0, done.stderr
    summary = (tmp_path / "summary.txt").read_text().splitlines()
    assert len(summary) == 1 and summary[0].startswith("environment: exit 0 in ")
    log = (tmp_path / "environment.log").read_text()
    assert "  bnn  [" in log and "rse-mnist (use rse)" in log  # the plugins' defenses, the example's too
    assert not (tmp_path / "tests.log").exists()  # ONLY ran the one check


def test_a_check_past_its_limit_says_so_and_the_next_one_still_runs(tmp_path: Path) -> None:
    script = f"source {ROOT / 'benchmarks/gpu/lib.sh'}; check first 1 sleep 30; check second 5 echo done"
    env = {**os.environ, "OUT": str(tmp_path), "SCALE": "1"}
    env.pop("ONLY", None)
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=20)
    first, second = (tmp_path / "summary.txt").read_text().splitlines()
    assert first.startswith("first: exit 124 (time limit) in ") and int(first.split()[-2]) < 5
    assert second.startswith("second: exit 0 in ") and (tmp_path / "second.log").read_text() == "done\n"
    assert "done" in done.stdout  # the tail of each log is shown as it goes
