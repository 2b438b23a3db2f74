"""`advbayes report` reads tracked runs back from MLflow into Markdown tables and figures."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

import advbayes
from advbayes.cli import cli
from advbayes.intervals import format_interval, wilson_interval
from advbayes.plugins import create_plugin_manager


def test_report_of_a_small_tracked_run_has_the_tables_and_figures(store: str, tmp_path: Path) -> None:
    group = advbayes.run(
        "moons",
        tracking_uri=store,
        pm=create_plugin_manager(),
        defense=None,
        defenses=["standard", {"use": "standard", "name": "second"}],
        eps=[0.0, 0.2],
    )
    preamble = tmp_path / "claims.md"
    preamble.write_text("# Findings\n\nThe claims.\n")
    out = tmp_path / "report"
    result = CliRunner().invoke(
        cli, ["report", "moons", "--out", str(out), "--preamble", str(preamble), "--tracking-uri", store]
    )
    assert result.exit_code == 0, result.output
    text = (out / "report.md").read_text()
    assert text.startswith("# Findings")
    assert "## moons" in text and "### accuracy" in text and "### training (last epoch)" in text
    for member in group.results:
        name = member.spec["defense"]["name"]
        metrics = next(r.metrics for r in member.records if r.attack_label == "none")
        value = format_interval(
            metrics["accuracy"],
            *wilson_interval(metrics["accuracy"] * metrics["accuracy_n"], int(metrics["accuracy_n"])),
        )
        assert re.search(rf"\| {name} \| none \| {re.escape(value)} \|", text), (name, value, text)
        assert member.run_id in text
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert "report_figures/moons/standard/accuracy_vs_eps.png" in images
    assert "report_figures/moons/accuracy_vs_eps.png" in images  # the defenses overlaid, with its PDF
    assert "([PDF](report_figures/moons/accuracy_vs_eps.pdf))" in text
    assert (out / "report_figures/moons/accuracy_vs_eps.pdf").read_bytes()[:4] == b"%PDF"
    assert all((out / image).is_file() and (out / image).stat().st_size > 1000 for image in images)


def test_an_experiment_of_one_defense_at_one_eps_gets_its_table_and_no_one_dot_figure(
    store: str, tmp_path: Path
) -> None:
    advbayes.run("moons", tracking_uri=store, pm=create_plugin_manager(), defense="standard", eps=[0.0], epochs=1)
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["report", "moons", "--out", str(out), "--tracking-uri", store])
    assert result.exit_code == 0, result.output
    text = (out / "report.md").read_text()
    assert re.search(r"\| standard \| none \| [0-9.]+ \[", text)  # the accuracy row is there
    assert "### figure: accuracy" not in text and not (out / "report_figures/moons/accuracy_vs_eps.png").exists()


def test_report_of_an_unknown_experiment_is_a_one_line_error(store: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    MlflowClient(store).search_experiments()  # the store exists, the experiment does not
    result = CliRunner().invoke(cli, ["report", "nothing-here", "--out", str(tmp_path), "--tracking-uri", store])
    assert result.exit_code == 2
    assert "no tracked runs of experiment 'nothing-here'" in result.output


def test_compare_of_a_metric_no_run_logged_is_an_error_listing_the_logged_ones(store: str) -> None:
    advbayes.run("moons", tracking_uri=store, epochs=0, **{"dataset.test_size": 20})
    result = CliRunner().invoke(cli, ["compare", "moons", "--metric", "acc", "--tracking-uri", store])
    assert result.exit_code == 2
    assert "Error: --metric acc: no run of moons logged it; logged: accuracy, max_linf, mean_l2" in result.output


def test_report_keeps_runs_with_different_settings_apart_and_averages_only_over_seeds(
    store: str, tmp_path: Path
) -> None:
    from advbayes.intervals import mean_sd

    pm = create_plugin_manager()
    by_lr = {
        lr: advbayes.run("moons", tracking_uri=store, pm=pm, seeds=[0, 1], epochs=1, lr=lr) for lr in (0.05, 0.001)
    }
    advbayes.run("moons", tracking_uri=store, pm=pm, seeds=[1], epochs=1, lr=0.01)  # a setting run on one seed
    result = CliRunner().invoke(cli, ["report", "moons", "--out", str(tmp_path), "--tracking-uri", store])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "report.md").read_text()
    for lr, group in by_lr.items():
        mean, sd = mean_sd([r.table()["none"][0.0] for r in group.results])
        row = f"| standard lr={lr}: mean +- sd over 2 seeds | none | {mean:.4f} +- {sd:.4f} |"
        assert row in text, text
        assert f"| standard lr={lr} (seed 1) |" in text
    assert "| standard lr=0.01 (seed 1) |" in text  # alone in its group, it still names the seed it ran
    assert text.count("mean +- sd over") == 2


def test_a_pipe_inside_a_table_cell_is_escaped_and_the_row_keeps_its_cells() -> None:
    from advbayes.lab.report import markdown_table

    table = markdown_table(["claim", "verdict"], [["min_c r_c > ||delta||", "held"]])
    row = table.splitlines()[-1]
    cells = re.split(r"(?<!\\)\|", row.strip())[1:-1]  # GitHub splits a row at unescaped pipes only
    assert [c.strip() for c in cells] == [r"min_c r_c > \|\|delta\|\|", "held"]
