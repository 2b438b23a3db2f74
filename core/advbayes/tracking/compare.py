"""`advbayes compare`: tracked parent runs as a terminal table, one column per attack x eps."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Sequence
from typing import Any

from advbayes.errors import RunError
from advbayes.intervals import format_interval, is_companion, mean_sd
from advbayes.results import format_grid
from advbayes.tracking.runs import status_text, tracked_runs
from advbayes.tracking.settings import defense_label, group_key, run_settings, setting_columns, varied_settings

RECORD_FIELDS = (  # the fields of compare --json, in order; --csv puts the settings' keys after defense_entry
    "run_id",
    "experiment",
    "status",
    "started",
    "defense",
    "defense_entry",
    "settings",
    "seed",
    "attack",
    "eps",
    "metric",
    "value",
    "ci_low",
    "ci_high",
)
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


Column = tuple[str, "float | None", tuple[str, ...]]  # attack, eps (None: one value at every eps), metric keys


def collapse_constant(runs: Sequence[Any], columns: list[tuple[str, float, str]]) -> list[Column]:
    """One column for an attack whose value is the same at every eps in every run (e.g. the clean `none`); its
    cell reads whichever of the attack's keys a run logged, so runs with other eps lists still show it."""
    collapsed: list[Column] = []
    by_attack: dict[str, list[tuple[str, float, str]]] = {}
    for column in columns:
        by_attack.setdefault(column[0], []).append(column)
    for attack, group in by_attack.items():
        constant = len(group) > 1 and all(
            len({run.data.metrics[key] for _a, _e, key in group if key in run.data.metrics}) <= 1 for run in runs
        )
        if constant:
            collapsed.append((attack, None, tuple(key for _a, _e, key in group)))
        else:
            collapsed.extend((attack, eps, (key,)) for _a, eps, key in group)
    return collapsed


def logged_key(metrics: dict[str, float], keys: Sequence[str]) -> str | None:
    """The first of a column's metric keys that a run logged."""
    return next((key for key in keys if key in metrics), None)


def metric_cell(metrics: dict[str, float], keys: Sequence[str]) -> str:
    """A tracked value with its 95 % interval when its companions were logged (attack/accuracy_ci_low/eps_...)."""
    key = logged_key(metrics, keys)
    if key is None:
        return "-"
    attack, metric, eps = key.rsplit("/", 2)
    low, high = metrics.get(f"{attack}/{metric}_ci_low/{eps}"), metrics.get(f"{attack}/{metric}_ci_high/{eps}")
    return f"{metrics[key]:.4f}" if low is None or high is None else format_interval(metrics[key], low, high)


def seed_rows(runs: Sequence[Any], columns: list[Column], varied: Sequence[str]) -> list[list[str]]:
    """One row per group of runs that differ only in their seed (same experiment, defense and every varied
    setting), tracked with several seeds: mean +- sd over the newest FINISHED run of each seed."""
    newest: dict[tuple[str, ...], dict[str, Any]] = {}
    for run in runs:  # newest first
        if run.info.status == "FINISHED":
            newest.setdefault(group_key(run, varied), {}).setdefault(run.data.tags.get("advbayes.seed", "?"), run)
    rows = []
    for (experiment, defense, *settings), by_seed in newest.items():
        if len(by_seed) < 2:
            continue
        cells = []
        metrics = [r.data.metrics for r in by_seed.values()]
        for _attack, _eps, keys in columns:
            values = [m[key] for m in metrics if (key := logged_key(m, keys)) is not None]
            cells.append("-" if not values else "{:.4f} +- {:.4f}".format(*mean_sd(values)))
        seeds = ",".join(sorted(by_seed))
        rows.append(["mean+-sd", experiment, f"{len(by_seed)} seeds", seeds, defense, *settings, *cells])
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
    where it was logged: what `compare --json` and `--csv` print. `defense` carries the varied defense parameters
    (noisy-bnn[sigma=0.2]) and `settings` every other setting that differs between runs of one defense."""
    runs, columns = selected_runs(tracking_uri, experiments, metric)
    varied = varied_settings(runs)
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
                    "defense": defense_label(run, varied),
                    "defense_entry": tags.get("advbayes.defense"),
                    "settings": run_settings(run, varied),
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
    logged), every setting that differs between runs of one defense as a column, then mean +- sd across seeds
    for every group of runs that differ only in their seed."""
    runs, all_columns = selected_runs(tracking_uri, experiments, metric)
    if not runs:
        return f"no tracked runs of {', '.join(experiments)}"
    columns = collapse_constant(runs, all_columns)
    varied = varied_settings(runs)
    header = [
        "run",
        "experiment",
        "status",
        "started",
        "defense",
        *setting_columns(varied),
        *(attack if eps is None else f"{attack} eps={eps:g}" for attack, eps, _ in columns),
    ]
    rows = []
    for run in runs:
        started = dt.datetime.fromtimestamp(run.info.start_time / 1000).strftime("%Y-%m-%d %H:%M")
        tags = run.data.tags
        values = [metric_cell(run.data.metrics, keys) for _attack, _eps, keys in columns]
        rows.append(
            [
                run.info.run_id[:12],
                tags.get("advbayes.experiment", "?"),
                status_text(run),
                started,
                defense_label(run, varied),
                *run_settings(run, varied).values(),
                *values,
            ]
        )
    rows += seed_rows(runs, columns, varied)
    return format_grid(header, rows)


def compare_csv(records: Sequence[dict[str, Any]]) -> str:
    """compare --csv: the records with one column per varied setting (named by its param key) after the defense."""
    keys = list(dict.fromkeys(key for record in records for key in record["settings"]))
    at = RECORD_FIELDS.index("settings")
    fields = [*RECORD_FIELDS[:at], *keys, *RECORD_FIELDS[at + 1 :]]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({**{k: v for k, v in record.items() if k != "settings"}, **record["settings"]})
    return buffer.getvalue()
