"""compare never averages runs made with different settings: every varied setting is a column or part of the
defense's label, and the clean accuracy shows for runs whose eps lists differ."""

from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner

import advbayes
from advbayes.cli import cli
from advbayes.intervals import mean_sd
from advbayes.plugins import create_plugin_manager
from advbayes.tracking.settings import CONVERGED_METRIC, defense_label, group_key, group_label, varied_settings


class FakeRun:
    """The parts of an MLflow run that the settings read."""

    def __init__(self, defense: str, seed: str, metrics: dict[str, float] | None = None, **params: str) -> None:
        self.data = type("Data", (), {})()
        self.data.tags = {"advbayes.experiment": "e", "advbayes.defense": defense, "advbayes.seed": seed}
        self.data.params = {"seed": seed, "eps": "[0.1]", **params}
        self.data.metrics = metrics or {}


def test_varied_settings_are_the_keys_that_differ_within_one_defense_seed_and_eps_aside() -> None:
    runs = [
        FakeRun("bnn", "0", lr="0.01", **{"defense.prior_sigma": "0.1"}),
        FakeRun("bnn", "1", lr="0.01", **{"defense.prior_sigma": "0.2"}),
        FakeRun("standard", "0", lr="0.1", epochs="3"),
        FakeRun("standard", "1", lr="0.1"),  # a key one run lacks differs too
    ]
    varied = varied_settings(runs)
    assert varied == ["defense.prior_sigma", "epochs"]  # lr differs only between defenses: not a setting
    assert [defense_label(r, varied) for r in runs[:2]] == ["bnn[prior_sigma=0.1]", "bnn[prior_sigma=0.2]"]
    assert group_key(runs[2], varied) != group_key(runs[3], varied)
    same_but_seed = [FakeRun("bnn", "0", lr="0.01"), FakeRun("bnn", "1", lr="0.01")]
    assert varied_settings(same_but_seed) == []
    assert group_key(same_but_seed[0], []) == group_key(same_but_seed[1], [])
    # a run continued with `run --resume ID --set ...` logs the experiment's empty `defenses` list, the run it
    # continued logged none: the list names an experiment's runs, it does not set one (found in shipped records)
    resumed = [FakeRun("adv-hvi", "0", lr="0.01"), FakeRun("adv-hvi", "1", lr="0.01", defenses="[]")]
    assert varied_settings(resumed) == [] and group_label(resumed[1], []) == "adv-hvi"


def test_the_cap_of_a_run_whose_posterior_converged_does_not_separate_it_from_a_larger_caps_runs() -> None:
    """A converged run stopped before its cap: continued to a larger cap it would be the same run (the rule is
    checked after every epoch), so seeds whose caps differ are one group; a cap that stopped a run unconverged,
    or one that did not train until converged, is a setting."""
    converged, unconverged = {CONVERGED_METRIC: 1.0}, {CONVERGED_METRIC: 0.0}
    until = {"until_converged": "True"}
    runs = [
        FakeRun("adv-hvi", "0", converged, epochs="600", **until),
        FakeRun("adv-hvi", "1", converged, epochs="300", **until),
    ]
    assert varied_settings(runs) == [] and group_key(runs[0], []) == group_key(runs[1], [])
    capped = FakeRun("adv-hvi", "2", unconverged, epochs="300", **until)
    varied = varied_settings([*runs, capped])
    assert varied == ["epochs"]
    assert [group_label(r, varied) for r in (*runs, capped)] == [
        "adv-hvi epochs=until converged",
        "adv-hvi epochs=until converged",
        "adv-hvi epochs=300",
    ]
    fixed = [FakeRun("bnn", s, converged, epochs=e, until_converged="False") for s, e in (("0", "10"), ("1", "20"))]
    assert varied_settings(fixed) == ["epochs"]  # trained for a fixed number of epochs: the number is the setting


def test_compare_groups_runs_by_every_varied_setting_and_never_averages_across_them(store: str) -> None:
    pm = create_plugin_manager()
    by_lr = {
        lr: advbayes.run("moons", tracking_uri=store, pm=pm, seeds=[0, 1], epochs=2, lr=lr) for lr in (0.05, 0.001)
    }
    table = CliRunner().invoke(cli, ["compare", "moons", "--tracking-uri", store])
    assert table.exit_code == 0, table.output
    header = table.output.splitlines()[0]
    assert " lr " in f" {header} "
    means = [line for line in table.output.splitlines() if line.startswith("mean+-sd")]
    assert len(means) == 2, table.output  # one per lr, never one over all four runs
    for lr, group in by_lr.items():
        mean, sd = mean_sd([r.table()["none"][0.0] for r in group.results])
        assert any(f" {lr} " in f" {line} " and f"{mean:.4f} +- {sd:.4f}" in line for line in means), table.output
    records = json.loads(CliRunner().invoke(cli, ["compare", "moons", "--tracking-uri", store, "--json"]).output)
    assert {(r["run_id"], r["settings"]["lr"]) for r in records} == {
        (result.run_id, str(lr)) for lr, group in by_lr.items() for result in group.results
    }
    rows = list(
        csv.DictReader(
            io.StringIO(CliRunner().invoke(cli, ["compare", "moons", "--tracking-uri", store, "--csv"]).output)
        )
    )
    assert {(r["run_id"], r["lr"]) for r in rows} == {(r["run_id"], r["settings"]["lr"]) for r in records}


def test_a_varied_defense_parameter_is_part_of_the_defense_label(store: str) -> None:
    pm = create_plugin_manager()
    for sigma in (0.1, 0.3):
        advbayes.run("moons", tracking_uri=store, pm=pm, epochs=1, defense="bnn", **{"defense.prior_sigma": sigma})
    table = CliRunner().invoke(cli, ["compare", "moons", "--tracking-uri", store])
    assert "bnn[prior_sigma=0.1]" in table.output and "bnn[prior_sigma=0.3]" in table.output, table.output
    assert "prior_sigma " not in table.output.splitlines()[0]  # in the label, not a column too


@pytest.mark.parametrize("eps_lists", [([0.1, 0.2], [0.3])])
def test_clean_accuracy_shows_for_every_run_whatever_its_eps_list(
    store: str, eps_lists: tuple[list[float], ...]
) -> None:
    pm = create_plugin_manager()
    clean = [
        advbayes.run("moons", tracking_uri=store, pm=pm, epochs=1, eps=eps).table()["none"][eps[0]] for eps in eps_lists
    ]
    table = CliRunner().invoke(cli, ["compare", "moons", "--tracking-uri", store])
    lines = table.output.splitlines()
    assert lines[0].rstrip().endswith("none"), table.output  # one clean column, not one per eps
    for line, value in zip(lines[2:4], reversed(clean)):  # newest first
        assert line.rstrip().endswith("]") and f" {value:.4f} [" in line, table.output


def test_the_ui_gets_accuracy_as_a_series_over_eps_line_charts_and_runs_grouped_by_setting(store: str) -> None:
    from mlflow import MlflowClient

    from advbayes.tracking.view import GROUP_TAG, INTERVALS_TAG, VIEW_TAG

    pm = create_plugin_manager()
    attacked = {"attacks": ["none", "fgsm"], "eps": [0.05, 0.2], "epochs": 1}
    by_lr = {
        lr: advbayes.run("moons", tracking_uri=store, pm=pm, seeds=[0, 1], lr=lr, **attacked) for lr in (0.05, 0.001)
    }
    client = MlflowClient(store)
    for group in by_lr.values():
        for result in group.results:
            history = client.get_metric_history(result.run_id, "fgsm/accuracy")
            assert sorted((m.step, m.value) for m in history) == [  # step = eps x 1000
                (50, result.table()["fgsm"][0.05]),
                (200, result.table()["fgsm"][0.2]),
            ]
            assert {m.step for m in client.get_metric_history(result.run_id, "fgsm/accuracy_ci_low")} == {50, 200}
    experiment = client.get_experiment_by_name("moons").experiment_id
    parents = client.search_runs([experiment], "tags.`advbayes.role` = 'parent'")
    tags = {r.info.run_id: r.data.tags[GROUP_TAG] for r in parents}
    for lr, group in by_lr.items():  # the seeds of one lr share a group; the two lrs never do
        assert {tags[r.run_id] for r in group.results} == {f"standard lr={lr}"}
    view = json.loads(client.get_experiment_by_name("moons").tags[VIEW_TAG])
    assert view["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": GROUP_TAG}]
    assert view["groupBy"]["aggregateFunction"] == "average" and view["useGroupedValuesInCharts"] is True
    (chart,) = view["compareRunCharts"]
    assert (chart["type"], chart["metricKey"], chart["xAxisKey"], chart["range"]) == (
        "LINE",
        "fgsm/accuracy",
        "step",
        {"yMin": 0, "yMax": 1},
    )
    # the second saved view: every accuracy column with its interval's bounds beside it, one row per run
    intervals = json.loads(client.get_experiment_by_name("moons").tags[INTERVALS_TAG])
    metrics = [c[len("metrics.`") : -1] for c in intervals["selectedColumns"] if c.startswith("metrics.")]
    assert metrics[:3] == [
        "none/accuracy/eps_0.0500",
        "none/accuracy_ci_low/eps_0.0500",
        "none/accuracy_ci_high/eps_0.0500",
    ]
    assert metrics[3:6] == [
        "fgsm/accuracy/eps_0.0500",
        "fgsm/accuracy_ci_low/eps_0.0500",
        "fgsm/accuracy_ci_high/eps_0.0500",
    ]
    assert intervals["groupBy"] is None
    for parent in parents:  # each column names a metric every run logged, low <= accuracy <= high
        values = [parent.data.metrics[key] for key in metrics]
        for accuracy, low, high in zip(values[::3], values[1::3], values[2::3]):
            assert low <= accuracy <= high


def test_run_groups_are_tagged_when_another_process_tags_the_same_run_at_once(store: str) -> None:
    """On a server store two finishing runs may add the same group tag to a third run at the same moment; MLflow's
    SQL store reads, then inserts, and the loser failed on PostgreSQL's unique key (tag_pk) in a CI sweep."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from advbayes.tracking.view import GROUP_TAG, update_run_groups

    result = advbayes.run("moons", tracking_uri=store, pm=create_plugin_manager(), epochs=1)
    other = MlflowClient(store)
    label = other.get_run(result.run_id).data.tags[GROUP_TAG]
    other.delete_tag(result.run_id, GROUP_TAG)
    experiment = other.get_run(result.run_id).info.experiment_id

    class Racing(MlflowClient):
        """The other process inserts the tag between this one's read and its insert, once."""

        raced = False

        def set_tag(self, run_id: str, key: str, value: str, synchronous: bool | None = None) -> None:
            if not Racing.raced:
                Racing.raced = True
                other.set_tag(run_id, key, value)
                raise MlflowException('duplicate key value violates unique constraint "tag_pk"')
            super().set_tag(run_id, key, value)

    update_run_groups(Racing(store), experiment)
    assert Racing.raced and other.get_run(result.run_id).data.tags[GROUP_TAG] == label

    class Broken(MlflowClient):
        def set_tag(self, run_id: str, key: str, value: str, synchronous: bool | None = None) -> None:
            raise MlflowException("the store is gone")

    other.delete_tag(result.run_id, GROUP_TAG)
    with pytest.raises(MlflowException, match="the store is gone"):  # a failure that persists is not swallowed
        update_run_groups(Broken(store), experiment)
