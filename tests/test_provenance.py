"""Every tracked run says which code ran: the commit of advbayes's checkout, whether it had uncommitted changes, and
the package versions, read back against git and importlib.metadata."""

from __future__ import annotations

import platform
import subprocess
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

import advbayes
from advbayes import hookimpl
from advbayes.plugins import create_plugin_manager
from advbayes.tracking.runs import provenance

CHECKOUT = Path(advbayes.__file__).resolve().parent


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def test_provenance_follows_the_checkouts_commit_and_its_uncommitted_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    for key in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(key, "advbayes-test")
    git("init", "-q", cwd=repo)
    (repo / "code.py").write_text("x = 1\n")
    git("add", "code.py", cwd=repo)
    git("commit", "-q", "-m", "one", cwd=repo)
    tags = provenance(repo)
    assert tags["advbayes.git_commit"] == git("rev-parse", "HEAD", cwd=repo) == tags["mlflow.source.git.commit"]
    assert tags["advbayes.git_dirty"] == "false"
    (repo / "notes.txt").write_text("untracked files are not the code that ran\n")
    assert provenance(repo)["advbayes.git_dirty"] == "false"
    (repo / "code.py").write_text("x = 2\n")
    assert provenance(repo)["advbayes.git_dirty"] == "true"
    outside = tmp_path / "not-a-checkout"
    outside.mkdir()
    assert "advbayes.git_commit" not in provenance(outside) and "advbayes.git_dirty" not in provenance(outside)
    assert provenance(outside)["advbayes.version.torch"] == version("torch")
    assert provenance(outside)["advbayes.version.python"] == platform.python_version()


def test_a_process_keeps_the_commit_of_the_code_it_loaded_when_the_checkout_moves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import advbayes.tracking.runs as runs

    heads = iter(["a" * 40, "b" * 40])  # the checkout is pulled to another commit between two runs of one process
    monkeypatch.setattr(runs, "_git", lambda args, where: next(heads) if args[0] == "rev-parse" else "")
    runs._process_provenance.cache_clear()
    try:
        first, second = provenance(), provenance()
        second["advbayes.git_commit"] = "changed by a caller"
        third = provenance()
    finally:
        runs._process_provenance.cache_clear()  # later tests read the real checkout again
    assert first["advbayes.git_commit"] == third["advbayes.git_commit"] == "a" * 40  # each caller gets a copy


def test_a_run_started_outside_the_checkout_is_tagged_with_the_checkouts_commit(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a results directory, not the source tree
    try:
        commit = git("rev-parse", "HEAD", cwd=CHECKOUT)
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", cwd=CHECKOUT))
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("advbayes is not installed from a git checkout here")
    result = advbayes.run("moons", tracking_uri=store, pm=create_plugin_manager(), epochs=1)
    tags = MlflowClient(store).get_run(result.run_id).data.tags
    assert tags["advbayes.git_commit"] == commit
    assert tags["advbayes.git_dirty"] == str(dirty).lower()
    for package in ("advbayes", "torch", "mlflow"):
        assert tags[f"advbayes.version.{package}"] == version(package)
    from click.testing import CliRunner

    from advbayes.cli import cli

    done = CliRunner().invoke(cli, ["report", "moons", "--tracking-uri", store, "--out", str(tmp_path / "r")])
    assert done.exit_code == 0, done.output
    text = (tmp_path / "r" / "report.md").read_text()
    row = next(line for line in text.splitlines() if f"`{result.run_id}`" in line)  # each run's own commit
    assert f"commit {commit[:12]}" in row and ("with uncommitted changes" in row) == dirty
    assert "batch 64, seed 0;" in text  # the seeds of the runs behind the section


class InterruptAfterFirstEpoch:
    """Ctrl-C once epoch 1 is checkpointed (after the tracking plugin's hook)."""

    @hookimpl(trylast=True)
    def epoch_finished(self, run: Any, epoch: int, metrics: Any, checkpoint: Any) -> None:
        if epoch == 1:
            raise KeyboardInterrupt


def test_a_run_resumed_by_other_code_names_that_code_in_a_tag_a_warning_and_its_report(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, --resume kept only the tags of the code that started a run: a run named one commit while its later
    epochs and its evaluation ran on another."""
    import advbayes.tracking.runs as runs
    from advbayes.lab.report import commit_of

    pm = create_plugin_manager()
    pm.register(InterruptAfterFirstEpoch(), name="interrupt")
    with pytest.raises(KeyboardInterrupt) as raised:
        advbayes.run("moons", tracking_uri=store, pm=pm, epochs=2)
    run_id = raised.value.advbayes_run_id  # type: ignore[attr-defined]
    client = MlflowClient(store)
    started = client.get_run(run_id).data.tags
    mine = runs.provenance()
    other = {"advbayes.git_commit": "b" * 40, "advbayes.git_dirty": "true"}
    monkeypatch.setattr(runs, "_process_provenance", lambda: {**mine, **other})  # this process: another checkout
    with pytest.warns(advbayes.ProvenanceWarning) as warned:
        advbayes.run(tracking_uri=store, resume=run_id, pm=create_plugin_manager())
    tags = client.get_run(run_id).data.tags
    version = started["advbayes.version.advbayes"]
    assert tags["advbayes.git_commit"] == started["advbayes.git_commit"]  # the code that started it, as before
    assert tags[runs.RESUMED_CODE_TAG] == f"commit bbbbbbbbbbbb with uncommitted changes, advbayes {version}"
    message = str(warned[0].message)
    assert message.startswith(f"--resume {run_id}: the run was started by {runs.code_text(started)} and goes on with")
    assert commit_of(tags) == f"{runs.commit_text(started)}, resumed with {tags[runs.RESUMED_CODE_TAG]}"
    assert runs.resumed_code(tags, {**mine, **other}) is None  # the same other code again is named once
    assert runs.resumed_code(started, mine) is None  # resumed by the code that started it: nothing to say


def test_a_run_names_the_threads_and_cpu_its_floats_depend_on_and_a_rerun_under_them_repeats_it_bit_for_bit(
    store: str,
) -> None:
    """Thread count and CPU decide how float sums are split and which kernels run: tagged on every run, and
    the same code, seed, threads and CPU give the same training losses, to the last bit."""
    import torch

    runs = [advbayes.run("moons", tracking_uri=store, pm=create_plugin_manager(), epochs=2) for _ in range(2)]
    tags = [MlflowClient(store).get_run(r.run_id).data.tags for r in runs]
    assert tags[0]["advbayes.torch_threads"] == tags[1]["advbayes.torch_threads"] == str(torch.get_num_threads())
    cpu = tags[0]["advbayes.cpu"]
    if Path("/proc/cpuinfo").exists():
        assert cpu and f": {cpu}\n" in Path("/proc/cpuinfo").read_text()
    else:
        assert cpu in (platform.processor(), platform.machine())
    assert "advbayes.gpu" not in tags[0]  # a CPU run names no GPU
    losses = [[float(epoch["loss"]) for epoch in r.history] for r in runs]
    assert len(losses[0]) == 2 and losses[0] == losses[1]


def test_a_reports_setting_names_every_commit_its_runs_came_from_with_their_counts() -> None:
    """Before, the Setting line named the first run's commit only: advbnn-mnist-5k's 12 records (4 runs from one
    commit, 8 from another) read as if one commit had made them all."""
    from types import SimpleNamespace

    from advbayes.lab.report import codes_of

    def run(commit: str, torch: str = "2.5.0") -> SimpleNamespace:
        tags = {"advbayes.git_commit": commit * 40, "advbayes.git_dirty": "false", "advbayes.version.torch": torch}
        return SimpleNamespace(data=SimpleNamespace(tags=tags))

    assert codes_of([run("a"), run("a")]) == f"commit {'a' * 12}, torch 2.5.0"
    mixed = [run("a"), run("b"), run("a"), run("b"), run("b")]
    assert codes_of(mixed) == f"commit {'a' * 12} (2 runs), commit {'b' * 12} (3 runs), torch 2.5.0"
    versions = [run("a"), run("a", torch="2.6.0")]  # other versions: each whole code with its count
    assert codes_of(versions) == f"commit {'a' * 12}, torch 2.5.0 (1 run); commit {'a' * 12}, torch 2.6.0 (1 run)"
