"""Run records: the runs behind a report exported from MLflow into plain JSON files, one per run, and read back in
place of the store, so that a report (docs/findings.md) regenerates with no store and no network.

A record holds what the report reads: the run's params, tags, last metric values, the per-epoch history of its
training metrics, its results.csv rows (as `result_columns` and one list of values per row: the column names
repeated on each of a robustness run's ~2,000 rows made up two thirds of its record) and its examples.csv rows
(which test examples each accuracy counted, for paired tests). No weights, checkpoints or figures (the figures are
drawn again from the numbers). mlflow-export-import was not used: it exports whole runs with their artifacts
(weights and checkpoints included) in a layout that has to be imported into a store again before anything can read
it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advbayes.errors import RunError
from advbayes.results import unpack_outcomes
from advbayes.tracking.runs import TRAINING_PREFIX

RECORD_VERSION = 2  # 2: results as columns + rows
DROPPED_TAGS = ("advbayes.heartbeat", "advbayes.pid", "mlflow.runName", "mlflow.user", "mlflow.log-model.history")
DROPPED_PARAMS = ("advbayes.writer.",)  # leases: which process wrote the run, not what it computed


@dataclass(frozen=True)
class RecordInfo:
    """The parts of MLflow's RunInfo a report reads."""

    run_id: str
    status: str
    start_time: int
    run_name: str


@dataclass(frozen=True)
class RecordData:
    """The parts of MLflow's RunData a report reads."""

    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]


@dataclass(frozen=True)
class RecordRun:
    """A run as read from its record: `info` and `data` as MLflow's Run has them, plus what the report downloads."""

    info: RecordInfo
    data: RecordData
    experiment: str
    histories: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    results: list[dict[str, str]] = field(default_factory=list)
    examples: list[dict[str, str]] = field(default_factory=list)


def record_of(
    client: Any,
    run: Any,
    experiment: str,
    rows: Sequence[Mapping[str, str]],
    examples: Sequence[Mapping[str, str]] = (),
) -> dict[str, Any]:
    """The JSON-ready record of one tracked run (the histories of its train/ metrics read from the store)."""
    metrics = dict(run.data.metrics)
    histories = {
        key: [[m.step, m.value] for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]
        for key in sorted(metrics)
        if key.startswith(TRAINING_PREFIX)
    }
    columns = sorted({key for row in rows for key in row})
    return {
        "advbayes_record": RECORD_VERSION,
        "experiment": experiment,
        "run_id": run.info.run_id,
        "run_name": run.info.run_name or "",
        "status": run.info.status,
        "start_time": run.info.start_time,
        "params": {k: v for k, v in run.data.params.items() if not k.startswith(DROPPED_PARAMS)},
        "tags": {k: v for k, v in run.data.tags.items() if k not in DROPPED_TAGS},
        "metrics": metrics,
        "histories": histories,
        "result_columns": columns,
        "results": [[row.get(key) for key in columns] for row in rows],
        "examples": [dict(row) for row in examples],
    }


def dumps_record(record: Mapping[str, Any]) -> str:
    """A record as JSON with one line per param, tag, metric, history and results row (readable, and a diff of two
    exports shows what changed), keys sorted so that the same run always gives the same text."""
    lines = ["{"]
    items = sorted(record.items())
    for i, (key, value) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        if isinstance(value, (dict, list)) and value:
            inner = sorted(value.items()) if isinstance(value, dict) else list(enumerate(value))
            lines.append(f" {json.dumps(key)}: " + ("{" if isinstance(value, dict) else "["))
            for j, (name, item) in enumerate(inner):
                label = f"{json.dumps(name)}: " if isinstance(value, dict) else ""
                lines.append(f"  {label}{json.dumps(item, sort_keys=True)}" + ("," if j < len(inner) - 1 else ""))
            lines.append(" " + ("}" if isinstance(value, dict) else "]") + comma)
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value, sort_keys=True)}{comma}")
    return "\n".join([*lines, "}"]) + "\n"


def _field(record: Mapping[str, Any], key: str, kind: type | tuple[type, ...], path: Path) -> Any:
    """record[key], checked to be of `kind` (a one-line error naming the file and key otherwise)."""
    value = record.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise RunError(f"{path}: key '{key}': expected {names}, got {value!r:.60}")
    return value


def read_record(path: Path) -> RecordRun:
    """One record file as a run; a one-line error naming the file and key when it is not a record."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"{path}: not a readable JSON record ({exc})") from None
    if not isinstance(record, dict):
        raise RunError(f"{path}: expected a JSON object, got {type(record).__name__}")
    if record.get("advbayes_record") != RECORD_VERSION:
        raise RunError(
            f"{path}: key 'advbayes_record': expected record version {RECORD_VERSION}, "
            f"got {record.get('advbayes_record')!r:.60}"
        )
    params = _field(record, "params", dict, path)
    tags = _field(record, "tags", dict, path)
    metrics = _field(record, "metrics", dict, path)
    histories = _field(record, "histories", dict, path)
    columns = _field(record, "result_columns", list, path)
    results = _field(record, "results", list, path)
    examples = _field(record, "examples", list, path)
    for name, table in (("params", params), ("tags", tags)):
        bad = next((k for k, v in table.items() if not isinstance(v, str)), None)
        if bad is not None:
            raise RunError(f"{path}: key '{name}.{bad}': expected a string, got {table[bad]!r:.60}")
    bad = next((k for k, v in metrics.items() if not isinstance(v, (int, float)) or isinstance(v, bool)), None)
    if bad is not None:
        raise RunError(f"{path}: key 'metrics.{bad}': expected a number, got {metrics[bad]!r:.60}")
    if not all(isinstance(c, str) for c in columns) or not {"attack", "eps", "metric", "value"} <= set(columns):
        raise RunError(f"{path}: key 'result_columns': expected names including attack, eps, metric and value")
    for i, values in enumerate(results):
        if not isinstance(values, list) or len(values) != len(columns):
            raise RunError(f"{path}: key 'results[{i}]': expected a list of {len(columns)} values (result_columns)")
    for i, row in enumerate(examples):
        if not isinstance(row, dict) or not {"attack", "eps", "metric", "n", "outcomes"} <= set(row):
            raise RunError(f"{path}: key 'examples[{i}]': expected a row with attack, eps, metric, n and outcomes")
        try:
            unpack_outcomes(str(row["outcomes"]), int(row["n"]))
        except ValueError as exc:
            raise RunError(f"{path}: key 'examples[{i}].outcomes': {exc}") from None
    try:
        steps = {k: [(int(s), float(v)) for s, v in points] for k, points in histories.items()}
    except (TypeError, ValueError):
        raise RunError(f"{path}: key 'histories': expected {{metric: [[step, value], ...]}}") from None
    return RecordRun(
        info=RecordInfo(
            run_id=_field(record, "run_id", str, path),
            status=_field(record, "status", str, path),
            start_time=_field(record, "start_time", int, path),
            run_name=_field(record, "run_name", str, path),
        ),
        data=RecordData(params=params, tags=tags, metrics={k: float(v) for k, v in metrics.items()}),
        experiment=_field(record, "experiment", str, path),
        histories=steps,
        results=[{k: str(v) for k, v in zip(columns, values) if v is not None} for values in results],
        examples=[{k: str(v) for k, v in row.items()} for row in examples],
    )


def read_records(folder: Path) -> dict[str, list[RecordRun]]:
    """{experiment: runs} of every record under `folder` (files in sorted order, so the result never depends on
    the file system's)."""
    if not folder.is_dir():
        raise RunError(
            f"--records {folder}: no such directory (write it with: advbayes export EXPERIMENT... --out {folder})"
        )
    runs: dict[str, list[RecordRun]] = {}
    seen: dict[str, Path] = {}
    for path in sorted(folder.rglob("*.json")):
        run = read_record(path)
        if run.info.run_id in seen:
            raise RunError(f"{path}: run {run.info.run_id} is recorded twice (also in {seen[run.info.run_id]})")
        seen[run.info.run_id] = path
        runs.setdefault(run.experiment, []).append(run)
    if not runs:
        raise RunError(f"--records {folder}: no record files (*.json) in it")
    return runs
