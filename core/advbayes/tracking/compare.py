"""`advbayes compare`: tracked parent runs as a terminal table, one column per attack x eps."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Any

from advbayes.errors import RunError
from advbayes.intervals import format_interval, is_companion, mean_sd
from advbayes.results import format_grid
from advbayes.tracking.runs import status_text, tracked_runs

COLUMN = re.compile(r"^(?P<attack>.+)/(?P<metric>[^/]+)/eps_(?P<eps>[0-9.]+)$")


def metric_columns(runs: Sequence[Any], metric: str) -> list[tuple[str, float, str]]:
    """(attack, eps, metric key) of every per-eps value of `metric` in the runs, attacks in first-seen order."""
    attacks: dict[str, None] = {}
    columns: dict[str, tuple[str, float]] = {}
    for run in runs:
        for key in run.data.metrics:
            match = COLUMN.match(key)
            if match and match["metric"] == metric:
                attacks.setdefault(match["attack"])
                columns[key] = (match["attack"], float(match["eps"]))
    order = list(attacks)
    return sorted(((a, e, k) for k, (a, e) in columns.items()), key=lambda c: (order.index(c[0]), c[1]))


def collapse_constant(
    runs: Sequence[Any], columns: list[tuple[str, float, str]]
) -> list[tuple[str, float | None, str]]:
    """One column for an attack whose value is the same at every eps in every run (e.g. the clean `none`)."""
    collapsed: list[tuple[str, float | None, str]] = []
    by_attack: dict[str, list[tuple[str, float, str]]] = {}
    for column in columns:
        by_attack.setdefault(column[0], []).append(column)
    for attack, group in by_attack.items():
        constant = len(group) > 1 and all(
            len({run.data.metrics[key] for _a, _e, key in group if key in run.data.metrics}) <= 1 for run in runs
        )
        collapsed.extend([(attack, None, group[0][2])] if constant else group)
    return collapsed


def metric_cell(metrics: dict[str, float], key: str) -> str:
    """A tracked value with its 95 % interval when its companions were logged (attack/accuracy_ci_low/eps_...)."""
    if key not in metrics:
        return "-"
    attack, metric, eps = key.rsplit("/", 2)
    low, high = metrics.get(f"{attack}/{metric}_ci_low/{eps}"), metrics.get(f"{attack}/{metric}_ci_high/{eps}")
    return f"{metrics[key]:.4f}" if low is None or high is None else format_interval(metrics[key], low, high)


def seed_rows(runs: Sequence[Any], columns: list[tuple[str, float | None, str]], width: int) -> list[list[str]]:
    """One row per defense tracked with several seeds: mean +- sd over the newest FINISHED run of each seed."""
    newest: dict[tuple[str, str], dict[str, Any]] = {}
    for run in runs:  # newest first
        tags = run.data.tags
        if run.info.status == "FINISHED":
            group = (tags.get("advbayes.experiment", "?"), tags.get("advbayes.defense", "?"))
            newest.setdefault(group, {}).setdefault(tags.get("advbayes.seed", "?"), run)
    rows = []
    for (experiment, defense), by_seed in newest.items():
        if len(by_seed) < 2:
            continue
        cells = []
        for _attack, _eps, key in columns:
            values = [r.data.metrics[key] for r in by_seed.values() if key in r.data.metrics]
            cells.append("-" if not values else "{:.4f} +- {:.4f}".format(*mean_sd(values)))
        seeds = ",".join(sorted(by_seed))
        rows.append(["mean+-sd", experiment, f"{len(by_seed)} seeds", seeds, defense, *cells][:width])
    return rows


def selected_runs(
    tracking_uri: str | None, experiments: Sequence[str], metric: str
) -> tuple[list[Any], list[tuple[str, float, str]]]:
    """The tracked runs of `experiments`, newest first, and the (attack, eps, key) columns of `metric`; a metric
    no evaluated run logged is an error listing the logged ones."""
    runs = tracked_runs(tracking_uri, experiments)
    columns = metric_columns(runs, metric)
    logged = sorted({m["metric"] for run in runs for key in run.data.metrics if (m := COLUMN.match(key)) is not None})
    if not columns and logged:  # runs that were evaluated, but not with this metric (runs killed early have none)
        shown = [name for name in logged if not is_companion(name, logged)]
        raise RunError(f"--metric {metric}: no run of {', '.join(experiments)} logged it; logged: {', '.join(shown)}")
    return runs, columns


def compare_records(tracking_uri: str | None, experiments: Sequence[str], metric: str) -> list[dict[str, Any]]:
    """One record per run, attack and eps (the long format pandas and spreadsheets want), with the 95 % interval
    where it was logged: what `compare --json` and `--csv` print."""
    runs, columns = selected_runs(tracking_uri, experiments, metric)
    records = []
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        for attack, eps, key in columns:
            if key not in metrics:
                continue
            suffix = key.rsplit("/", 1)[1]
            records.append(
                {
                    "run_id": run.info.run_id,
                    "experiment": tags.get("advbayes.experiment"),
                    "status": status_text(run),
                    "started": dt.datetime.fromtimestamp(run.info.start_time / 1000).isoformat(timespec="seconds"),
                    "defense": tags.get("advbayes.defense"),
                    "seed": int(tags["advbayes.seed"]) if tags.get("advbayes.seed", "").isdigit() else None,
                    "attack": attack,
                    "eps": eps,
                    "metric": metric,
                    "value": metrics[key],
                    "ci_low": metrics.get(f"{attack}/{metric}_ci_low/{suffix}"),
                    "ci_high": metrics.get(f"{attack}/{metric}_ci_high/{suffix}"),
                }
            )
    return records


def compare_table(tracking_uri: str | None, experiments: Sequence[str], metric: str) -> str:
    """The runs of `experiments` (newest first) with their `metric` per attack and eps (95 % intervals where
    logged), then mean +- sd across seeds for every defense tracked with several seeds."""
    runs, all_columns = selected_runs(tracking_uri, experiments, metric)
    if not runs:
        return f"no tracked runs of {', '.join(experiments)}"
    columns = collapse_constant(runs, all_columns)
    header = [
        "run",
        "experiment",
        "status",
        "started",
        "defense",
        *(attack if eps is None else f"{attack} eps={eps:g}" for attack, eps, _ in columns),
    ]
    rows = []
    for run in runs:
        started = dt.datetime.fromtimestamp(run.info.start_time / 1000).strftime("%Y-%m-%d %H:%M")
        tags = run.data.tags
        values = [metric_cell(run.data.metrics, key) for _attack, _eps, key in columns]
        rows.append(
            [
                run.info.run_id[:12],
                tags.get("advbayes.experiment", "?"),
                status_text(run),
                started,
                tags.get("advbayes.defense", "?"),
                *values,
            ]
        )
    rows += seed_rows(runs, columns, len(header))
    return format_grid(header, rows)
