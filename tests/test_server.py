"""Tracking against a real `mlflow server`, and `advbayes ui`, each started on 127.0.0.1 and stopped by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

import advbayes

pytestmark = [pytest.mark.server, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, timeout: float = 90.0) -> str:
    """Poll `url` until it answers 200; fail with the server's output if it dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}: {process.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return response.read().decode("utf-8", "replace")
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def stop(process: subprocess.Popen) -> None:
    """Stop the server and its workers by PID (it leads its own process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.Popen(
        args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env
    )


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    process = start(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
            "--workers",
            "1",
        ],
        tmp_path,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/health", process)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


def test_run_tracked_on_a_real_mlflow_server(mlflow_server: str, tmp_path: Path) -> None:
    result = advbayes.run("moons", tracking_uri=mlflow_server, epochs=1)
    client = MlflowClient(mlflow_server)
    parent = client.get_run(result.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["none/accuracy/eps_0.0000"] == pytest.approx(result.table()["none"][0.0])
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{result.run_id}'"
    )
    assert len(children) == 1
    names = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"experiment.toml", "results.csv", "accuracy_vs_eps.png", "checkpoints"} <= names
    assert any((tmp_path / "server-artifacts").rglob("results.csv"))  # artifacts went through the server


def test_ui_serves_the_mlflow_page_on_localhost(isolated_cwd: Path) -> None:
    advbayes.run("moons", epochs=1)
    port = free_port()
    process = start([sys.executable, "-m", "advbayes.cli", "ui", "--port", str(port)], isolated_cwd)
    try:
        page = wait_for(f"http://127.0.0.1:{port}/", process)
        assert "MLflow" in page or "mlflow" in page
        served = MlflowClient(f"http://127.0.0.1:{port}")  # the UI serves the store the run was tracked in
        experiment = served.get_experiment_by_name("moons")
        assert experiment is not None and len(served.search_runs([experiment.experiment_id])) == 2
    finally:
        stop(process)
