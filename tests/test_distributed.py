"""advbayes run --nproc 2: DistributedDataParallel on CPU with the gloo backend against a single-process run with
the same global batch: equal loss curves and accuracies for a deterministic network, equal within noise for a
Bayesian one; rank 0 alone tracks."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from mlflow import MlflowClient

from advbayes.cli import cli
from advbayes.engine.distributed import Distributed, seed_draws

SETTINGS = ["--set", "epochs=3", "--set", 'attacks=["none", "fgsm"]', "--set", "eps=[0.0, 0.1]"]


def tracked(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`advbayes run moons ARGS` in a fresh process, tracked to ./mlflow.db, one torch thread per process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    done = subprocess.run(
        [sys.executable, "-m", "advbayes.cli", "run", "moons", *SETTINGS, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def runs_by_processes(cwd: Path) -> dict[tuple[str, str], object]:
    """{(defense, processes): run} of the parent runs in ./mlflow.db."""
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("moons")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`advbayes.role` = 'parent'")
    return {(run.data.tags["advbayes.defense"], run.data.tags.get("advbayes.processes", "1")): run for run in runs}


def loss_curve(cwd: Path, run: object) -> list[float]:
    history = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}").get_metric_history(run.info.run_id, "train/loss")
    return [m.value for m in sorted(history, key=lambda m: m.step)]


def test_each_rank_draws_its_own_stream() -> None:
    streams = []
    for rank in (0, 1):
        seed_draws(5, Distributed(rank=rank, world=2))
        streams.append(torch.randn(1000))
    assert not torch.equal(streams[0], streams[1])
    assert abs(float(torch.corrcoef(torch.stack(streams))[0, 1])) < 0.15  # independent-looking, not shifted copies


@pytest.mark.slow
def test_two_gloo_processes_train_as_one_process_does_exactly_when_deterministic_within_noise_when_bayesian(
    isolated_cwd: Path,
) -> None:
    """One launch of each kind runs both defenses. The single-process reference runs in this process, through the
    same command line (a fresh one would only import torch and MLflow again); the two ranks are fresh processes."""
    both = ("--set", 'defenses=["standard", "bnn"]')
    single_process = CliRunner().invoke(cli, ["run", "moons", *SETTINGS, *both])
    assert single_process.exit_code == 0, single_process.output[-3000:]
    out = tracked(isolated_cwd, *both, "--nproc", "2").stdout
    runs = runs_by_processes(isolated_cwd)
    assert sorted(runs) == [("bnn", "1"), ("bnn", "2"), ("standard", "1"), ("standard", "2")]  # rank 1 tracked none

    single, ddp = runs["standard", "1"], runs["standard", "2"]
    assert loss_curve(isolated_cwd, ddp) == pytest.approx(loss_curve(isolated_cwd, single), rel=1e-5)
    for key in ("none/accuracy/eps_0.0000", "fgsm/accuracy/eps_0.1000"):  # evaluation sharded, then gathered
        assert ddp.data.metrics[key] == pytest.approx(single.data.metrics[key], abs=1 / 500 + 1e-9)
    assert "n=500" in out and out.count("accuracy [95% CI]") == 2  # every example counted, printed once per defense
    names = {a.path for a in MlflowClient(f"sqlite:///{isolated_cwd / 'mlflow.db'}").list_artifacts(ddp.info.run_id)}
    assert "checkpoints" in names

    single, ddp = runs["bnn", "1"], runs["bnn", "2"]
    p = (single.data.metrics["none/accuracy/eps_0.0000"] + ddp.data.metrics["none/accuracy/eps_0.0000"]) / 2
    difference = abs(single.data.metrics["none/accuracy/eps_0.0000"] - ddp.data.metrics["none/accuracy/eps_0.0000"])
    assert difference <= 3 * math.sqrt(2 * p * (1 - p) / 500)  # 3 sd of the difference of two accuracies
    single_curve, ddp_curve = loss_curve(isolated_cwd, single), loss_curve(isolated_cwd, ddp)
    assert ddp_curve[-1] == pytest.approx(single_curve[-1], rel=0.15)
    assert ddp_curve != single_curve  # the ranks' draws are their own, not a replay of one process's
