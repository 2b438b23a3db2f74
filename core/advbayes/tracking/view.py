"""The MLflow UI's saved view of an experiment: the columns and charts a researcher looks at first."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from advbayes.results import EPS_STEPS, eps_label
from advbayes.tracking.store import experiment_lock, set_changed_tags, set_racing, sqlite_path, store_lock

if TYPE_CHECKING:
    from advbayes.results import EvalRecord


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
DESCRIPTION_TAG = "mlflow.note.content"
VIEW_TAG = "mlflow.sharedViewState.advbayes"  # opened by ...#/experiments/ID?viewStateShareKey=advbayes
VIEW_KEY = "advbayes"
INTERVALS_KEY = "advbayes-intervals"  # a second saved view: each accuracy with its interval's bounds beside it
INTERVALS_TAG = f"mlflow.sharedViewState.{INTERVALS_KEY}"
MAX_VIEW_COLUMNS = 24
BOUNDS = ("accuracy_ci_low", "accuracy_ci_high")


def experiment_tags(description: str) -> dict[str, str]:
    """The experiment marked as model development (the MLflow UI opens its runs view) with the entry's description."""
    tags = {EXPERIMENT_KIND_TAG: "custom_model_development"}
    if description:
        tags[DESCRIPTION_TAG] = description
    return tags


def headline_columns(records: Sequence[EvalRecord]) -> list[str]:
    """The accuracy metric keys worth a column: every eps of an attack, one for an attack whose value does not
    change with eps (the clean `none`)."""
    by_attack: dict[str, list[EvalRecord]] = {}
    for record in records:
        if "accuracy" in record.metrics:
            by_attack.setdefault(record.attack_label, []).append(record)
    keys = []
    for attack, group in by_attack.items():
        constant = len({r.metrics["accuracy"] for r in group}) == 1
        keys += [f"{attack}/accuracy/{eps_label(r.eps)}" for r in (group[:1] if constant else group)]
    return keys


CHART_SECTION = "advbayes-robust-accuracy"
GROUP_TAG = "advbayes.group"  # what the UI groups runs by: a defense and the settings that set it apart


def robust_accuracy_charts(columns: Sequence[str]) -> dict[str, Any]:
    """The charts view of the saved view: a section first in line with one line chart per attack measured at
    several eps, robust accuracy against eps (the series `ATTACK/accuracy` at step = eps x 1000) on a fixed
    [0, 1] axis, runs grouped by GROUP_TAG so a group's seeds draw as their mean line and band. MLflow's own
    charts (training curves, one bar per metric key) follow it."""
    by_attack: dict[str, int] = {}
    for column in columns:
        if column.startswith("metrics.`") and "/accuracy/eps_" in column:
            attack = column[len("metrics.`") : -1].split("/accuracy/")[0]
            by_attack[attack] = by_attack.get(attack, 0) + 1
    charts = [
        {
            "uuid": f"advbayes-{attack}",
            "type": "LINE",
            "runsCountToCompare": 100,
            "metricSectionId": CHART_SECTION,
            "deleted": False,
            "isGenerated": False,
            "displayName": f"{attack}: accuracy against eps (x-axis: eps x {EPS_STEPS})",
            "metricKey": f"{attack}/accuracy",
            "selectedMetricKeys": [f"{attack}/accuracy"],
            "xAxisKey": "step",
            "useGlobalXaxisKey": False,
            "xAxisScaleType": "linear",
            "scaleType": "linear",
            "lineSmoothness": 0,
            "useGlobalLineSmoothing": False,
            "displayPoints": True,
            "range": {"yMin": 0, "yMax": 1},
        }
        for attack, count in by_attack.items()
        if count > 1
    ]
    section = {
        "uuid": CHART_SECTION,
        "name": "Robust accuracy against eps",
        "display": True,
        "isReordered": False,
        "deleted": False,
        "isGenerated": False,
    }
    grouping = {
        "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": GROUP_TAG}]},
        "useGroupedValuesInCharts": True,
    }
    if not charts:
        return grouping
    return {"compareRunCharts": charts, "compareRunSections": [section], "isAccordionReordered": True, **grouping}


def update_run_groups(client: Any, experiment: str) -> None:
    """Tag every parent run with its group (tracking/settings.py: the defense with the settings that tell it
    apart from the other runs of that defense), the key the UI groups seeds by; call it under experiment_lock."""
    from advbayes.tracking.settings import group_label, varied_settings
    from advbayes.tracking.store import PARENT_ROLE, ROLE_TAG

    runs = client.search_runs([experiment], filter_string=f"tags.`{ROLE_TAG}` = '{PARENT_ROLE}'", max_results=5000)
    varied = varied_settings(runs)
    for run in runs:
        label = group_label(run, varied)
        if run.data.tags.get(GROUP_TAG) != label:  # on a server store another finishing run may tag it too
            set_racing(client.set_tag, run.info.run_id, GROUP_TAG, label)


def update_runs_view(client: Any, experiment: str, metric_keys: Sequence[str]) -> None:
    """Add this run's headline columns (accuracy per attack and eps) to the experiment's saved runs view."""
    import json

    with experiment_lock(client):  # concurrent runs each add their columns: none may be lost
        tags = client.get_experiment(experiment).tags
        state = _view_state(tags.get(VIEW_TAG))
        columns = _with_columns(state, [f"metrics.`{key}`" for key in metric_keys], MAX_VIEW_COLUMNS)
        widths = {c: 180 for c in columns if c.startswith("metrics.")}  # fits `pgd-20/accuracy/eps_0.3000`
        state.update(selectedColumns=columns, columnOrder=columns, columnWidths=widths)
        state.update(robust_accuracy_charts(columns))
        intervals = _view_state(tags.get(INTERVALS_TAG))
        with_bounds = [
            f"metrics.`{name}`"
            for key in metric_keys
            for name in (key, *(key.replace("/accuracy/", f"/{bound}/") for bound in BOUNDS))
        ]
        bounded = _with_columns(intervals, with_bounds, 3 * MAX_VIEW_COLUMNS)
        intervals.update(
            selectedColumns=bounded,
            columnOrder=bounded,
            columnWidths={c: 150 for c in bounded if c.startswith("metrics.")},
            groupBy=None,  # one row per run: an interval belongs to a run, an average of bounds is not an interval
        )
        set_changed_tags(client, experiment, {VIEW_TAG: json.dumps(state), INTERVALS_TAG: json.dumps(intervals)})
        update_run_groups(client, experiment)


def _view_state(text: str | None) -> dict[str, Any]:
    """A saved view's state from its tag; one written by hand or by another version is replaced."""
    import json

    try:
        state = json.loads(text) if text else {}
    except ValueError:
        return {}
    return state if isinstance(state, dict) else {}


def _with_columns(state: dict[str, Any], added: Sequence[str], limit: int) -> list[str]:
    """The view's columns (the defense and the seed first) with `added` appended, at most `limit` of them."""
    columns = list(state.get("selectedColumns") or ["tags.`advbayes.defense`", "tags.`advbayes.seed`"])
    for column in added:
        if column not in columns and len(columns) < limit:
            columns.append(column)
    return columns


def experiment_id(client: Any, name: str, description: str = "") -> str:
    """The MLflow experiment of an advbayes experiment, created with artifacts beside a sqlite store and with its
    UI tags (runs view, the entry's description); an existing one gets the tags that differ."""
    tags = experiment_tags(description)
    found = client.get_experiment_by_name(name)
    if found is not None:
        with experiment_lock(client):
            set_changed_tags(client, found.experiment_id, tags)
        return found.experiment_id
    database = sqlite_path(client.tracking_uri)
    if database is None:
        try:
            return client.create_experiment(name, tags=tags)
        except Exception:  # noqa: BLE001 - a concurrent run created it first (each server says so in its own way)
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).lstrip(".") or "experiment"  # never `..`: stay in mlartifacts/
    location = (database.resolve().parent / "mlartifacts" / slug).as_uri()
    with store_lock(database):  # a concurrent run may be creating the same experiment
        found = client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        return client.create_experiment(name, artifact_location=location, tags=tags)
