"""A claims file's x_param figure: a metric against a setting that differs between experiments (Carbone et al.'s
expected gradient against hidden units), read from hand-written run records and checked value by value."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from advbayes.cli import cli
from advbayes.errors import RunError
from advbayes.lab.figure_specs import FigureSpec
from advbayes.lab.records import read_records
from advbayes.lab.report import param_series
from advbayes.lab.sources import RecordRuns

METRIC = "model/expected_gradient_abs/s250_mean"


def write_record(
    folder: Path, experiment: str, run_id: str, defense: str, seed: int, params: dict[str, str], value: float
) -> None:
    """One run record as `advbayes export` writes it, with one metric and one results row."""
    record: dict[str, Any] = {
        "advbayes_record": 2,
        "experiment": experiment,
        "run_id": run_id,
        "run_name": f"{defense}-seed{seed}",
        "status": "FINISHED",
        "start_time": 1_700_000_000_000 + seed,
        "params": params,
        "tags": {"advbayes.defense": defense, "advbayes.seed": str(seed)},
        "metrics": {METRIC: value},
        "histories": {},
        "result_columns": ["attack", "eps", "metric", "value"],
        "results": [["pgd", "0.1", "accuracy", str(1 - value)]],
        "examples": [],
    }
    (folder / experiment).mkdir(parents=True, exist_ok=True)
    (folder / experiment / f"{run_id}.json").write_text(json.dumps(record))


# experiment -> its width, and per (defense, seed) the metric value
GRID = {
    "moons-w32": ("[32]", {("hmc", 0): 0.060, ("hmc", 1): 0.062, ("vi", 0): 0.2}),
    "moons-w128": ("[128]", {("hmc", 0): 0.054, ("hmc", 1): 0.055}),
    "moons-w256": ("[256]", {("hmc", 0): 0.050}),
}


@pytest.fixture
def records(tmp_path: Path) -> Path:
    folder = tmp_path / "records"
    for experiment, (width, values) in GRID.items():
        for (defense, seed), value in values.items():
            params = {"model.widths": width, "dataset.train_size": "5000"}
            write_record(folder, experiment, f"{experiment}-{defense}-{seed}", defense, seed, params, value)
    return folder


def spec(**changes: Any) -> FigureSpec:
    fields: dict[str, Any] = {
        "name": "gradient_vs_width",
        "experiment": "moons-w32",
        "experiments": tuple(GRID),
        "x_param": "model.widths",
        "title": "expected gradient vs width",
        "metric": METRIC,
    }
    return FigureSpec(**{**fields, **changes})


def test_x_comes_from_each_runs_param_and_y_from_its_metric_or_result(records: Path) -> None:
    source = RecordRuns(read_records(records), records)
    series = param_series(source, spec())
    expected = {"hmc": {32.0: [0.060, 0.062], 128.0: [0.054, 0.055], 256.0: [0.050]}, "vi": {32.0: [0.2]}}
    assert {d: {x: sorted(v) for x, v in by_x.items()} for d, by_x in series.items()} == expected
    only_hmc = param_series(source, spec(defenses=("hmc",)))
    assert set(only_hmc) == {"hmc"}
    accuracy = param_series(source, spec(metric="accuracy", attack="pgd", eps=0.1, defenses=("hmc",)))
    assert sorted(accuracy["hmc"][128.0]) == pytest.approx([1 - 0.055, 1 - 0.054])


def test_two_experiments_with_one_x_or_a_param_without_one_number_are_one_line_errors(records: Path) -> None:
    source = RecordRuns(read_records(records), records)
    with pytest.raises(RunError, match="dataset.train_size = 5000 in moons-w32 too; x_param must tell the experiments"):
        param_series(source, spec(x_param="dataset.train_size"))
    with pytest.raises(RunError, match="param model.depth is None; the x_param needs one number"):
        param_series(source, spec(x_param="model.depth"))
    write_record(records, "moons-deep", "deep-0", "hmc", 0, {"model.widths": "[32, 32]"}, 0.07)
    source = RecordRuns(read_records(records), records)
    with pytest.raises(RunError, match=r"run deep-0 of moons-deep: param model.widths is '\[32, 32\]'"):
        param_series(source, spec(experiments=("moons-w32", "moons-deep")))


def test_report_draws_the_trend_figure_from_records(records: Path, tmp_path: Path) -> None:
    claims = tmp_path / "claims.toml"
    claims.write_text(
        "[[figure]]\nname = 'gradient_vs_width'\nexperiments = ['moons-w32', 'moons-w128', 'moons-w256']\n"
        f"x_param = 'model.widths'\ntitle = 'expected gradient vs width'\nmetric = '{METRIC}'\n"
        "defenses = ['hmc']\nxlabel = 'hidden units'\nlog_y = true\n"
    )
    out = tmp_path / "report"
    args = ["report", *GRID, "--records", str(records), "--claims", str(claims), "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    figure = out / "report_figures" / "claims" / "gradient_vs_width.png"
    assert figure.is_file() and figure.stat().st_size > 1000
    text = (out / "report.md").read_text()
    assert "![expected gradient vs width](report_figures/claims/gradient_vs_width.png)" in text
    # an experiment list that nothing was run into says so instead of failing the report
    claims.write_text(claims.read_text().replace("'moons-w32', 'moons-w128', 'moons-w256'", "'x1', 'x2'"))
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "experiments x1, x2 have no finished runs in what was read." in (out / "report.md").read_text()
