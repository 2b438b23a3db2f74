"""The static checks (`make lint`: ruff, ruff format, mypy) as a test of the suite: under pytest-xdist they run
beside the other tests and fill the cores those leave idle (waiting on servers and child processes), instead of
taking 45 s on a fresh clone before the first test starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINTED = ["core", "plugins", "examples", "tests", "benchmarks", "docs/scripts"]  # the Makefile's LINTED


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [["ruff", "check", *LINTED], ["ruff", "format", "--check", *LINTED], ["mypy"]],
    ids=["ruff", "ruff-format", "mypy"],
)
def test_static_checks_are_clean(command: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout[-4000:]}{done.stderr[-2000:]}"
