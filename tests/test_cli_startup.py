"""The CLI answers --help, completion, list and show without paying for torch: checked by what a fresh process
imports (deterministic, unlike a timing), and by the output cache's answers against the uncached command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "torchmetrics", "mlflow", "matplotlib", "torchvision")

# Runs the console entry point and reports, from an atexit handler (main() ends the process itself, running the
# atexit handlers first), which heavy libraries were imported.
DRIVER = """
import atexit, json, sys
from advbayes.cli import main
report = sys.argv[1]
sys.argv = ["advbayes", *sys.argv[2:]]
def write_report():
    with open(report, "w") as handle:
        json.dump({"heavy": sorted(m for m in %r if m in sys.modules)}, handle)
atexit.register(write_report)
main()
""" % (HEAVY,)


def advbayes(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[str, dict]:
    """Run `advbayes ARGS` in a fresh process in tmp_path; its stdout and what it imported."""
    report = tmp_path / "report.json"
    environment = {**os.environ, "ADVBAYES_CACHE_DIR": str(tmp_path / "cache"), **(env or {})}
    environment.pop("ADVBAYES_NO_CACHE", None)
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(report), *args],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert not done.stderr or "Error" in done.stderr, done.stderr
    return done.stdout, {"code": done.returncode, **json.loads(report.read_text())}


def test_help_and_completion_import_no_heavy_library(tmp_path: Path) -> None:
    out, seen = advbayes(tmp_path, "--help")
    assert seen == {"code": 0, "heavy": []}
    assert "compare" in out and "run" in out  # the tracking plugin's commands are listed too
    out, seen = advbayes(
        tmp_path, env={"_ADVBAYES_COMPLETE": "bash_complete", "COMP_WORDS": "advbayes show pgd-2", "COMP_CWORD": "2"}
    )
    assert seen["heavy"] == []
    assert "plain,pgd-20" in out.splitlines()
    out, seen = advbayes(
        tmp_path, env={"_ADVBAYES_COMPLETE": "bash_complete", "COMP_WORDS": "advbayes run quick", "COMP_CWORD": "2"}
    )
    assert out.splitlines() == ["plain,quickstart"] and seen["heavy"] == []


@pytest.mark.slow  # a fresh process that imports torch and trains or lists: seconds
def test_list_and_show_answer_from_the_cache_until_a_registry_file_changes(tmp_path: Path) -> None:
    registry = tmp_path / "mine.toml"
    registry.write_text('[experiments.mine]\nextends = "quickstart"\ndescription = "first"\n')
    args = ("list", "experiments", "--registry", str(registry))
    first, seen = advbayes(tmp_path, *args)
    assert seen["code"] == 0 and "torch" in seen["heavy"]  # validating entries needs the components
    assert "mine (use" not in first and "  mine  first" in first
    again, seen = advbayes(tmp_path, *args)
    assert again == first and seen == {"code": 0, "heavy": []}
    registry.write_text('[experiments.mine]\nextends = "quickstart"\ndescription = "second, longer"\n')
    changed, seen = advbayes(tmp_path, *args)
    assert "torch" in seen["heavy"] and "  mine  second, longer" in changed
    assert changed.replace("second, longer", "first") == first


def test_a_failed_command_is_never_kept(tmp_path: Path) -> None:
    out, seen = advbayes(tmp_path, "show", "no-such-entry")
    assert seen["code"] == 2 and out == ""
    assert not list((tmp_path / "cache").glob("*.out"))


@pytest.mark.slow  # fresh processes that import torch: seconds each
def test_the_cache_sees_an_edit_that_keeps_size_and_mtime_and_the_equals_spelling(tmp_path: Path) -> None:
    registry = tmp_path / "mine.toml"
    registry.write_text('[experiments.mine]\nextends = "quickstart"\ndescription = "first"\n')
    stamp = registry.stat()
    first, _ = advbayes(tmp_path, "list", "experiments", f"--registry={registry}")  # kept in the cache
    assert "  mine  first" in first
    registry.write_text('[experiments.mine]\nextends = "quickstart"\ndescription = "fresh"\n')  # same size
    os.utime(registry, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # as cp -p, touch -r, rsync -t leave it
    assert registry.stat().st_size == stamp.st_size and registry.stat().st_mtime_ns == stamp.st_mtime_ns
    changed, seen = advbayes(tmp_path, "list", "experiments", f"--registry={registry}")
    assert "  mine  fresh" in changed and "torch" in seen["heavy"]  # recomputed, not the kept answer


def test_an_argument_too_long_for_a_file_name_is_one_error_line(tmp_path: Path) -> None:
    out, seen = advbayes(tmp_path, "show", "x" * 300)
    assert seen["code"] == 2 and out == ""


def test_the_console_entry_point_ends_without_teardown_but_runs_atexit_flushes_and_waits_for_threads(
    tmp_path: Path,
) -> None:
    """main() ends the process with os._exit once the command is done (Python's teardown of torch and MLflow took
    1.6 CPU-s): the exit code and every printed line survive, atexit handlers run, a non-daemon thread still
    running is waited for, and SystemExit's text codes keep their meaning."""
    script = """
import atexit, os, sys, threading, time
from advbayes.cli import main
from advbayes.cli_output import exit_now
mode, folder = sys.argv[1], sys.argv[2]
atexit.register(lambda: open(os.path.join(folder, "atexit"), "w").write("ran"))
if mode == "thread":
    def late() -> None:
        time.sleep(0.5)
        open(os.path.join(folder, "thread"), "w").write("done")
    threading.Thread(target=late).start()
if mode == "text":
    exit_now("no store here")
sys.stdout.write("unflushed line without a newline")
sys.argv = ["advbayes", "show", "no-such-entry"] if mode == "error" else ["advbayes", "--help"]
main()
raise AssertionError("main() returned")
"""
    outcomes = {}
    for mode in ("help", "error", "thread", "text"):
        folder = tmp_path / mode
        folder.mkdir()
        done = subprocess.run(
            [sys.executable, "-c", script, mode, str(folder)], capture_output=True, text=True, timeout=120
        )
        outcomes[mode] = done
        assert (folder / "atexit").read_text() == "ran", (mode, done.stderr)
        assert "main() returned" not in done.stderr
    assert outcomes["help"].returncode == 0 and "Usage: advbayes" in outcomes["help"].stdout
    assert outcomes["help"].stdout.startswith("unflushed line without a newline")
    assert outcomes["error"].returncode == 2 and outcomes["error"].stderr.startswith("Error: unknown entry")
    assert outcomes["thread"].returncode == 0 and (tmp_path / "thread" / "thread").read_text() == "done"
    assert outcomes["text"].returncode == 1 and outcomes["text"].stderr == "no store here\n"


@pytest.mark.parametrize("args", [["plugins"], ["list", "attacks"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path, args: list[str]) -> None:
    """`advbayes plugins | head -1`: once the pipe's reader has closed it, the command ends with status 1 and says
    nothing (it printed "Error: BrokenPipeError", or a traceback when the answer came from the output cache). The
    reader here closes the pipe before the process has written anything; `list` answers from the cache, which a
    first, whole run filled."""
    environment = {**os.environ, "ADVBAYES_CACHE_DIR": str(tmp_path / "cache")}
    environment.pop("ADVBAYES_NO_CACHE", None)
    command = [sys.executable, "-m", "advbayes.cli", *args]
    if args[0] == "list":
        whole = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120)
        assert whole.returncode == 0 and "pgd-20" in whole.stdout and len(list((tmp_path / "cache").glob("*.out"))) == 1
    process = subprocess.Popen(
        command, cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader goes away first
    assert (process.wait(timeout=120), process.stderr.read()) == (1, "")
    process.stderr.close()
