"""Tracking against a real `mlflow server`, and `advbayes ui`, each started on 127.0.0.1 and stopped by PID."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from servers import command_lines_in_group, free_port, mlflow_server_process, rendered_dom, start, stop, wait_for

import advbayes

pytestmark = [pytest.mark.server, pytest.mark.slow]


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    process, url = mlflow_server_process(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "server-artifacts", tmp_path)
    try:
        yield url
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


def test_ui_shows_the_runs_of_a_tracked_experiment_in_its_runs_view(isolated_cwd: Path) -> None:
    """What the UI renders, read through the UI's own server: the runs, the description, the runs view (not the
    GenAI one) and the saved view's columns, each of which names a metric the runs logged."""
    with pytest.warns(advbayes.EvaluationWarning, match="the model is stochastic"):  # bnn under a one-draw FGSM
        group = advbayes.run(
            "moons", epochs=1, defense=None, defenses=["standard", "bnn"], attacks=["none", "fgsm"], eps=[0.1, 0.2]
        )
    port = free_port()
    process = start([sys.executable, "-m", "advbayes.cli", "ui", "--port", str(port)], isolated_cwd)
    try:
        page = wait_for(f"http://127.0.0.1:{port}/", process)
        assert "MLflow" in page or "mlflow" in page
        served = MlflowClient(f"http://127.0.0.1:{port}")  # the UI serves the store the run was tracked in
        experiment = served.get_experiment_by_name("moons")
        runs = served.search_runs([experiment.experiment_id], "tags.`advbayes.role` = 'parent'")
        assert {r.info.run_id for r in runs} == set(group.run_ids)
        assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
        assert experiment.tags["mlflow.note.content"] == group.results[0].spec["description"]
        view = json.loads(experiment.tags["mlflow.sharedViewState.advbayes"])
        metrics = [c[len("metrics.`") : -1] for c in view["selectedColumns"] if c.startswith("metrics.")]
        assert metrics == ["none/accuracy/eps_0.1000", "fgsm/accuracy/eps_0.1000", "fgsm/accuracy/eps_0.2000"]
        assert all(all(key in r.data.metrics for key in metrics) for r in runs)
        charts = view["compareRunCharts"]  # one chart per attack measured at several eps, in the first section
        assert [(c["type"], c["metricKey"], c["xAxisKey"]) for c in charts] == [("LINE", "fgsm/accuracy", "step")]
        assert [section["uuid"] for section in view["compareRunSections"]] == [charts[0]["metricSectionId"]]
        assert runs[0].data.metrics["none/accuracy/eps_0.1000"] == group.results[-1].table()["none"][0.1]
        view_url = f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning&viewStateShareKey=advbayes"
        dom = rendered_dom(view_url)  # what a browser shows: the page's JavaScript run by headless Chromium
        serving = command_lines_in_group(process.pid)  # the UI's processes: its server, no GenAI job runner
        assert any("uvicorn" in line for line in serving), serving
        assert not any("huey" in line or "_job_runner" in line for line in serving), serving
    finally:
        output = stop(process)
    assert f"moons: {view_url}" in output
    assert f"moons (with intervals): {view_url}-intervals" in output
    if dom is None:
        pytest.skip("no chromium here: the API checks above passed, the rendered page was not read")
    for metric in metrics:  # the saved view's columns, each run's defense and its values, as the table renders them
        assert metric in dom, metric
    for result in group.results:
        defense = result.spec["defense"]["name"]
        assert f">{defense}<" in dom, defense
        assert f">{round(result.table()['fgsm'][0.2], 3):g}<" in dom, (defense, result.table()["fgsm"])
