"""The built-in MLflow tracking plugin: a parent run per experiment run and a nested child run per attack."""

from __future__ import annotations

import logging
import os
import pickle
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlparse

import tomli_w

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from advbayes.errors import RunError, error_text
from advbayes.hookspecs import hookimpl
from advbayes.results import eps_label, metric_names, to_csv

if TYPE_CHECKING:
    from advbayes.results import EvalRecord, RunResult

DEFAULT_STORE = "mlflow.db"
PARENT_ROLE = "parent"
CHILD_ROLE = "attack"
ROLE_TAG = "advbayes.role"
CHECKPOINT_DIR = "checkpoints"
MODEL_DIR = "model"
MODEL_WEIGHTS = "weights.pt"
MODEL_ENTRY = "entry.toml"
MAX_TAG = 4000


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else the embedded store ./mlflow.db as an absolute sqlite URI, its path
    percent-encoded (a directory named `x?q=1`, `x#y` or `x%20y` is a path, not a query, a fragment or an escape)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{quote(str(Path.cwd() / DEFAULT_STORE))}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (percent-decoded, as SQLAlchemy reads it), or None for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(unquote(path))


_READY: set[str] = set()  # sqlite stores this process has seen created and migrated


@contextmanager
def store_lock(database: Path) -> Iterator[None]:
    """An exclusive lock on <database>.lock, held while a sqlite store is created or an experiment is added, so
    concurrent runs in one directory never race on MLflow's table creation and migrations."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX: no lock
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


STORE_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks")
DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}
CONNECT_TIMEOUT = 3.0  # seconds; MLflow itself retries an unreachable server for minutes


def check_store(uri: str, *, write: bool) -> None:
    """Fail fast, in one line, on a store that cannot work: an unknown scheme, a server nobody answers on, or (to
    write) a sqlite file whose directory is missing or read-only."""
    scheme = urlparse(uri).scheme.split("+")[0].lower()
    if len(scheme) == 1 or not scheme:  # a plain path (or a Windows drive letter): MLflow's file store
        scheme = "file"
    if scheme not in STORE_SCHEMES:
        raise RunError(
            f"tracking URI {uri}: unknown scheme '{scheme}'; expected sqlite:///PATH, postgresql://HOST/DB, "
            "http(s)://HOST:PORT or a directory"
        )
    if scheme in DEFAULT_PORTS:
        parsed = urlparse(uri)
        host = parsed.hostname or "localhost"
        try:
            port = parsed.port or DEFAULT_PORTS[scheme]
        except ValueError:
            raise RunError(f"tracking URI {uri}: the port is not a number from 1 to 65535") from None
        try:
            socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
        except OSError as exc:
            raise RunError(
                f"tracking store {uri} is unreachable ({host}:{port}: {exc.strerror or type(exc).__name__}); start it, "
                "or pass another --tracking-uri, or --no-track"
            ) from None
    database = sqlite_path(uri)
    if database is None:
        return
    if database.exists():
        if not database.is_file():
            raise RunError(f"tracking store {database} is not a file")
        if write and not os.access(database, os.W_OK):
            raise RunError(f"tracking store {database} is read-only; pass another --tracking-uri, or --no-track")
        return
    folder = database.parent
    if not folder.is_dir():
        raise RunError(f"tracking store {database}: no directory {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RunError(
            f"tracking store {database} cannot be created: {folder} is read-only; pass --tracking-uri "
            "sqlite:////a/writable/mlflow.db, or --no-track"
        )
    if not write:
        raise RunError(f"no tracking store {database} (nothing was tracked here); pass --tracking-uri")


BUSY_RETRIES = 8  # sqlite answers "database is locked" when another run holds the write lock past its timeout


class BusyRetryingClient:
    """An MlflowClient whose calls are retried, with growing pauses, while sqlite reports the database busy (each
    failed call was rolled back, so a retry writes once)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            for attempt in range(BUSY_RETRIES + 1):
                try:
                    return attribute(*args, **kwargs)
                except Exception as exc:
                    if attempt == BUSY_RETRIES or not _is_busy(exc):
                        raise
                    time.sleep(min(0.1 * 2**attempt, 5.0))
            raise AssertionError("unreachable")

        return call


def _is_busy(error: BaseException) -> bool:
    """Whether an error (or one it was raised from) is sqlite's "database is locked" / "database is busy"."""
    seen: BaseException | None = error
    while seen is not None:
        text = str(seen).lower()
        if "database is locked" in text or "database is busy" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def client_for(uri: str | None, *, write: bool = True) -> Any:
    """An MlflowClient on `uri` (or the default store), checked first; a sqlite store is created and migrated once,
    under a lock."""
    from mlflow import MlflowClient

    uri = uri or default_tracking_uri()
    if uri not in _READY:
        check_store(uri, write=write)
    database = sqlite_path(uri)
    if database is None:
        return MlflowClient(tracking_uri=uri)
    if uri in _READY:
        return BusyRetryingClient(MlflowClient(tracking_uri=uri))
    if not write:  # reading an existing store: no lock file beside it (its directory may be read-only)
        client = _open_sqlite(uri, database)
    else:
        with store_lock(database):
            if not database.exists():
                _create_sqlite(database)
                # Said on stderr: a store appearing wherever a script or notebook was started is otherwise a surprise.
                print(
                    f"advbayes: created the MLflow store {database} (--tracking-uri or MLFLOW_TRACKING_URI chooses "
                    "another; advbayes ui shows it)",
                    file=sys.stderr,
                )
            client = _open_sqlite(uri, database)
        _READY.add(uri)
    return BusyRetryingClient(client)


def _create_sqlite(database: Path) -> None:
    """Create and migrate a new store in a scratch file beside it, then move it into place in one step: a run
    killed while MLflow builds the tables leaves only the scratch file (rebuilt next time), never a half-made store."""
    scratch = database.with_name(f".{database.name}.creating")
    for leftover in ("", "-journal", "-wal", "-shm"):  # a killed creation's journal must not roll into the new file
        scratch.with_name(scratch.name + leftover).unlink(missing_ok=True)
    _open_sqlite(f"sqlite:///{quote(str(scratch))}", scratch)
    os.replace(scratch, database)


def _open_sqlite(uri: str, database: Path) -> Any:
    """An MlflowClient on a sqlite store, opened (created and migrated when new) and read once to prove it works."""
    from mlflow import MlflowClient

    quiet = logging.getLogger("mlflow.store.db.utils")  # it logs each database error with a traceback first
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    # MLflow creates the parent of the URI's path as written, percent-encoding and all: an empty twin directory
    stray = Path(uri[len("sqlite:///") :].split("?", 1)[0]).parent
    stray_existed = stray == database.parent or stray.exists()
    try:
        client = MlflowClient(tracking_uri=uri)  # opening a sqlite store creates its tables and runs migrations
        client.search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - MLflow and SQLAlchemy raise many kinds; each becomes one line
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise RunError(
            f"the MLflow store {database} cannot be opened ({type(exc).__name__}: {first}); if it is not a store or "
            f"a run was killed while creating it, move it away (mv {database} {database}.broken) and run again"
        ) from None
    finally:
        quiet.setLevel(level)
        if not stray_existed and stray.is_dir() and not any(stray.iterdir()):
            stray.rmdir()
    return client


def describe_store(uri: str | None) -> str:
    """Where runs would be tracked, checked as a run checks it, and whether the store exists yet."""
    uri = uri or default_tracking_uri()
    check_store(uri, write=True)
    database = sqlite_path(uri)
    if database is None:
        return uri
    return f"{uri} ({'exists' if database.exists() else 'would be created'})"


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


@contextmanager
def experiment_lock(client: Any) -> Iterator[None]:
    """Serialise concurrent runs' read-modify-writes of experiment tags: the store's file lock for sqlite (a
    server store's tags are set one by one; see set_changed_tags)."""
    database = sqlite_path(client.tracking_uri)
    if database is None:
        yield
        return
    with store_lock(database):
        yield


def set_changed_tags(client: Any, experiment: str, tags: Mapping[str, str]) -> None:
    """Set the experiment's tags whose value differs; call it under experiment_lock (which is not re-entrant).
    Two runs adding the same new tag at once make MLflow insert it twice (UNIQUE constraint failed): the lock
    prevents that for sqlite, and on a server store the loser's second try updates the row the winner inserted."""
    current = client.get_experiment(experiment).tags
    for key, value in tags.items():
        if current.get(key) == value:
            continue
        try:
            client.set_experiment_tag(experiment, key, value)
        except Exception:  # noqa: BLE001 - the concurrent insert; a second failure is raised
            client.set_experiment_tag(experiment, key, value)


HOST_TAG = "advbayes.host"
PID_TAG = "advbayes.pid"


def process_tags() -> dict[str, str]:
    """Where a run executes, so that a run left RUNNING by a killed process can be told from a live one."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def liveness(run: Any) -> str:
    """For a RUNNING run: "alive" (its process runs here), "stale" (its process here is gone: killed), or
    "elsewhere" (another machine; cannot tell). Runs in other states: their status."""
    if run.info.status != "RUNNING":
        return run.info.status
    tags = run.data.tags
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return "elsewhere"
    try:
        os.kill(int(tags[PID_TAG]), 0)
    except ProcessLookupError:
        return "stale"
    except PermissionError:  # a process of another user holds that id: alive
        return "alive"
    return "alive"


def status_text(run: Any) -> str:
    """The status as tables show it: a RUNNING run whose process was killed reads "RUNNING (stale)"."""
    state = liveness(run)
    return f"RUNNING ({state})" if run.info.status == "RUNNING" and state != "alive" else run.info.status


def flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten a resolved entry to dotted MLflow params; entry lists are keyed by entry name."""
    flat: dict[str, str] = {}
    for key, value in table.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{path}."))
        elif isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value):
            for item in value:
                flat.update(flatten(item, f"{path}.{item['name']}."))
        else:
            flat[path] = str(value)
    return flat


def run_params(spec: Mapping[str, Any]) -> dict[str, str]:
    """The MLflow params of a run: the flattened resolved experiment, without what did not run. An attack entry's
    own `eps` is replaced by the experiment's eps list whenever that list is given, so it is left out."""
    flat = flatten(spec)
    if spec.get("eps"):
        flat = {k: v for k, v in flat.items() if not (k.startswith("attacks.") and k.endswith(".eps"))}
    return flat


# The MLflow UI: open the runs view (not the GenAI one), show the entry's description, and offer a saved view
# whose columns are the defense, the seed and the robust accuracy per attack and eps instead of 160 params.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
DESCRIPTION_TAG = "mlflow.note.content"
VIEW_TAG = "mlflow.sharedViewState.advbayes"  # opened by ...#/experiments/ID?viewStateShareKey=advbayes
VIEW_KEY = "advbayes"
MAX_VIEW_COLUMNS = 24


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
            by_attack.setdefault(record.attack, []).append(record)
    keys = []
    for attack, group in by_attack.items():
        constant = len({r.metrics["accuracy"] for r in group}) == 1
        keys += [f"{attack}/accuracy/{eps_label(r.eps)}" for r in (group[:1] if constant else group)]
    return keys


CHART_SECTION = "advbayes-robust-accuracy"


def robust_accuracy_charts(columns: Sequence[str]) -> dict[str, Any]:
    """The charts view of the saved view: a section first in line with one chart per attack measured at several
    eps, each run a line through its accuracy at every eps (MLflow's parallel-coordinates chart: each axis
    scales on its own). MLflow's own charts (training curves, one bar per metric key) follow it."""
    by_attack: dict[str, list[str]] = {}
    for column in columns:
        if column.startswith("metrics.`") and "/accuracy/eps_" in column:
            key = column[len("metrics.`") : -1]
            by_attack.setdefault(key.split("/accuracy/")[0], []).append(key)
    charts = [
        {
            "uuid": f"advbayes-{attack}",
            "type": "PARALLEL",
            "runsCountToCompare": 10,
            "metricSectionId": CHART_SECTION,
            "deleted": False,
            "isGenerated": False,
            "displayName": f"{attack}: accuracy per eps",
            "selectedParams": [],
            "selectedMetrics": keys,
            "showAllRuns": True,
        }
        for attack, keys in by_attack.items()
        if len(keys) > 1
    ]
    section = {
        "uuid": CHART_SECTION,
        "name": "Robust accuracy per eps",
        "display": True,
        "isReordered": False,
        "deleted": False,
        "isGenerated": False,
    }
    return {"compareRunCharts": charts, "compareRunSections": [section], "isAccordionReordered": True} if charts else {}


def update_runs_view(client: Any, experiment: str, metric_keys: Sequence[str]) -> None:
    """Add this run's headline columns (accuracy per attack and eps) to the experiment's saved runs view."""
    import json

    with experiment_lock(client):  # concurrent runs each add their columns: none may be lost
        current = client.get_experiment(experiment).tags.get(VIEW_TAG)
        try:
            state = json.loads(current) if current else {}
        except ValueError:  # written by hand or by another version: replaced
            state = {}
        columns = list(state.get("selectedColumns") or ["tags.`advbayes.defense`", "tags.`advbayes.seed`"])
        for key in metric_keys:
            column = f"metrics.`{key}`"
            if column not in columns and len(columns) < MAX_VIEW_COLUMNS:
                columns.append(column)
        widths = {c: 180 for c in columns if c.startswith("metrics.")}  # fits `pgd-20/accuracy/eps_0.3000`
        state.update(selectedColumns=columns, columnOrder=columns, columnWidths=widths)
        state.update(robust_accuracy_charts(columns))
        set_changed_tags(client, experiment, {VIEW_TAG: json.dumps(state)})


def git_commit() -> str | None:
    """The commit of the working directory's git checkout, if there is one."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _log_params(client: Any, run_id: str, params: Mapping[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k[:250], v[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100])


def _log_metrics(client: Any, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
    for start in range(0, len(items), 500):
        client.log_batch(run_id, metrics=items[start : start + 500])


def _log_figure(client: Any, run_id: str, figure: Any, path: str) -> None:
    import matplotlib.pyplot as plt

    client.log_figure(run_id, figure, path)
    plt.close(figure)


@hookimpl
def run_started(run: Any) -> None:
    """Open (or reopen, when resuming) the parent run; log params, tags and the resolved experiment."""
    if not run.track:
        return
    client = client_for(run.tracking_uri)
    run.store = client.tracking_uri
    if run.resume_run_id:
        if client.get_run(run.resume_run_id).info.status == "FINISHED":  # refused before the run is touched
            raise RunError(
                f"--resume {run.resume_run_id}: the run FINISHED; there is nothing to resume (to train it further, "
                "give --set epochs=N: a new tracked run that starts from its checkpoint)"
            )
        client.update_run(run.resume_run_id, status="RUNNING")
        run.run_id = run.resume_run_id
        for key, value in process_tags().items():  # the run lives in this process now
            client.set_tag(run.resume_run_id, key, value)
        if "error" in client.get_run(run.resume_run_id).data.tags:  # the interruption is over
            client.delete_tag(run.resume_run_id, "error")
        return
    spec = run.spec
    tags = {
        **process_tags(),
        ROLE_TAG: PARENT_ROLE,
        "advbayes.experiment": run.experiment,
        "advbayes.dataset": spec["dataset"]["name"],
        "advbayes.model": spec["model"]["name"],
        "advbayes.defense": spec["defense"]["name"],
        "advbayes.seed": str(run.seed),
        "advbayes.device": run.device,
        **{f"advbayes.plugin.{name}": version for name, version in run.plugins.items()},
        **run.tags,
    }
    if run.resumed_from:  # a resumed run whose settings changed: a new run, since MLflow params never change
        tags["advbayes.resumed_from"] = run.resumed_from
    commit = git_commit()
    if commit:
        tags["advbayes.git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    # The MLflow experiment is the advbayes experiment; its runs are named by defense, so variants line up.
    experiment = experiment_id(client, run.experiment, str(spec.get("description", "")))
    created = client.create_run(experiment, run_name=spec["defense"]["name"], tags=tags)
    run_id = created.info.run_id
    run.run_id = run_id
    _log_params(client, run_id, run_params(spec))
    client.log_text(run_id, tomli_w.dumps({"experiments": {run.experiment: spec}}), "experiment.toml")


@hookimpl
def epoch_finished(run: Any, epoch: int, metrics: Mapping[str, float], checkpoint: Path) -> None:
    """Per-epoch training metrics (step = epoch)."""
    run_id = run.run_id
    if not run.track or run_id is None:
        return
    client = client_for(run.store)
    _log_metrics(client, run_id, {f"train/{k}": v for k, v in metrics.items()}, step=epoch)


@hookimpl
def checkpoint_saved(run: Any, checkpoint: Path) -> None:
    """The latest checkpoint replaces the run's checkpoint artifact (after each epoch and each attack)."""
    if not run.track or run.run_id is None:
        return
    client_for(run.store).log_artifact(run.run_id, str(checkpoint), CHECKPOINT_DIR)


@hookimpl
def evaluation_finished(run: Any, attack: str, records: Sequence[EvalRecord], figures: Mapping[str, Any]) -> None:
    """A nested child run for the attack: its parameters, one metric per eps, figures; copies on the parent."""
    parent_id = run.run_id
    if not run.track or parent_id is None:
        return
    client = client_for(run.store)
    parent = client.get_run(parent_id)
    for earlier in client.search_runs(  # an attack evaluated again (a resumed run) supersedes its earlier child
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`advbayes.attack` = '{attack}'",
    ):
        client.delete_run(earlier.info.run_id)
    first = records[0]
    entry = next(a for a in run.spec["attacks"] if a["name"] == (first.entry or attack))
    child = client.create_run(
        parent.info.experiment_id,
        run_name=attack,
        tags={"mlflow.parentRunId": parent_id, ROLE_TAG: CHILD_ROLE, "advbayes.attack": attack},
    )
    child_id = child.info.run_id
    run.tracking["open_child"] = child_id
    params = flatten(entry)
    params.update(
        {
            "attack_samples": str(first.attack_samples),
            "inference_samples": str(first.inference_samples),
            "eps_values": str([r.eps for r in records]),
        }
    )
    _log_params(client, child_id, params)
    child_metrics: dict[str, float] = {}
    parent_metrics: dict[str, float] = {}
    for record in records:
        values = {**record.metrics, "mean_l2": record.mean_l2, "max_linf": record.max_linf}
        for key, value in values.items():
            child_metrics[f"{key}/{eps_label(record.eps)}"] = value
            parent_metrics[f"{attack}/{key}/{eps_label(record.eps)}"] = value
    _log_metrics(client, child_id, child_metrics)
    for step, record in enumerate(sorted(records, key=lambda r: r.eps)):  # eps-ordered series for charts
        _log_metrics(client, child_id, {**record.metrics, "eps": record.eps}, step=step)
    _log_metrics(client, parent_id, parent_metrics)
    for path, figure in figures.items():
        _log_figure(client, child_id, figure, f"figures/{path}")
    client.set_terminated(child_id, status="FINISHED")
    run.tracking.pop("open_child", None)


@hookimpl
def run_finished(run: Any, result: RunResult | None, status: str, error: BaseException | None) -> None:
    """Results artifacts and the model on success; the error as a tag on failure; the final status."""
    run_id = run.run_id
    if not run.track or run_id is None:
        return
    client = client_for(run.store)
    open_child = run.tracking.pop("open_child", None)
    if open_child is not None:
        client.set_terminated(open_child, status=status)
    if error is not None:
        client.set_tag(run_id, "error", error_text(error))
    if result is not None:
        from advbayes.checks import as_tags  # torch

        for key, message in as_tags(result.findings).items():  # randomness and masking checks that fired
            client.set_tag(run_id, key[:250], message[:MAX_TAG])
        if "posterior/converged" in result.model_metrics:  # the posterior's verdict, filterable in the UI
            converged = bool(result.model_metrics["posterior/converged"])
            client.set_tag(run_id, "posterior.converged", "true" if converged else "false")
        client.log_text(run_id, to_csv(result.records), "results.csv")
        client.log_text(run_id, result.format() + "\n", "results.txt")
        from advbayes.figures import drawable_metrics, experiment_figure, points_from_records, safe_file_name

        defense = result.spec["defense"]["name"]
        points = {m: points_from_records(result.records, m, defense, result.seed) for m in metric_names(result.records)}
        for metric in drawable_metrics(points):
            figure = experiment_figure(points[metric], metric, title=f"{run.experiment} / {defense}")
            _log_figure(client, run_id, figure, f"{safe_file_name(metric)}_vs_eps.png")
        _log_metrics(client, run_id, {f"model/{k}": v for k, v in result.model_metrics.items()})
        for path, figure in result.figures.items():
            _log_figure(client, run_id, figure, "figures/" + "/".join(map(safe_file_name, path.split("/"))))
        log_model(client, run_id, run.experiment, result.spec, result.model)
        headline = headline_columns(result.records)
        update_runs_view(client, client.get_run(run_id).info.experiment_id, headline)
    client.set_terminated(run_id, status=status)


def log_model(client: Any, run_id: str, experiment: str, spec: Mapping[str, Any], model: Any) -> None:
    """The trained network as model/weights.pt (its state_dict: tensors only, no draw noise) and model/entry.toml
    (the resolved data set, model and defense entries that rebuild it); nothing pickled, nothing to execute."""
    import torch

    entry = {"experiment": experiment, **{key: spec[key] for key in ("dataset", "model", "defense")}}
    with tempfile.TemporaryDirectory(prefix="advbayes-model-") as folder:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, Path(folder) / MODEL_WEIGHTS)
        (Path(folder) / MODEL_ENTRY).write_text(tomli_w.dumps(entry))
        client.log_artifacts(run_id, folder, MODEL_DIR)


@hookimpl
def load_checkpoint(run_id: str, tracking_uri: str | None, destination: Path) -> Path:
    """Download the last checkpoint of a tracked run."""
    from mlflow.exceptions import MlflowException

    client = client_for(tracking_uri, write=False)
    try:
        tracked = client.get_run(run_id)
    except MlflowException:
        raise RunError(f"--resume {run_id}: no such run in {client.tracking_uri}") from None
    if tracked.data.tags.get(ROLE_TAG) == CHILD_ROLE:
        raise RunError(f"--resume {run_id}: that is an attack's child run; resume its parent run")
    if liveness(tracked) == "alive":
        raise RunError(
            f"--resume {run_id}: the run is still running (process {tracked.data.tags.get(PID_TAG)} on this machine)"
        )
    try:
        local = client.download_artifacts(run_id, f"{CHECKPOINT_DIR}/checkpoint.pt", str(destination))
    except (MlflowException, OSError):
        raise RunError(
            f"--resume {run_id}: the run has no checkpoint (it stopped before its first epoch ended)"
        ) from None
    return Path(local)


def tracked_runs(uri: str | None, experiments: Sequence[str]) -> list[Any]:
    """Parent runs of the named experiments (all experiments when none is named), newest first; an unknown
    experiment is an error."""
    client = client_for(uri, write=False)
    if not experiments:
        experiments = [found.name for found in client.search_experiments()]
    ids = []
    for name in experiments:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise RunError(f"no tracked runs of experiment '{name}' in {client.tracking_uri}")
        ids.append(found.experiment_id)
    if not ids:
        return []
    return client.search_runs(
        ids, filter_string=f"tags.`{ROLE_TAG}` = '{PARENT_ROLE}'", order_by=["attributes.start_time DESC"]
    )


@hookimpl
def load_model(run_id: str, tracking_uri: str | None) -> Any:
    """A tracked run's network, rebuilt from its registry entries and loaded with torch.load(weights_only=True)."""
    import torch
    from mlflow.exceptions import MlflowException

    from advbayes.plugins import get_plugin_manager
    from advbayes.registry import load_registry
    from advbayes.stochastic import as_sampled

    client = client_for(tracking_uri, write=False)
    try:
        client.get_run(run_id)
    except MlflowException:
        raise RunError(f"no tracked run {run_id} in {client.tracking_uri}") from None
    with tempfile.TemporaryDirectory(prefix="advbayes-model-") as scratch:
        try:
            folder = Path(client.download_artifacts(run_id, MODEL_DIR, scratch))
        except (MlflowException, OSError):
            raise RunError(f"tracked run {run_id} logged no model (it did not finish)") from None
        if not (folder / MODEL_ENTRY).is_file() or not (folder / MODEL_WEIGHTS).is_file():
            raise RunError(
                f"tracked run {run_id}: its model/ lacks {MODEL_ENTRY} or {MODEL_WEIGHTS} "
                "(logged by an older advbayes?)"
            )
        try:
            entry = tomllib.loads((folder / MODEL_ENTRY).read_text())
            state = torch.load(folder / MODEL_WEIGHTS, map_location="cpu", weights_only=True)
        except (
            tomllib.TOMLDecodeError,
            UnicodeDecodeError,
            pickle.UnpicklingError,
            RuntimeError,
            EOFError,
            ValueError,
        ) as exc:
            raise RunError(
                f"tracked run {run_id}: its model is not one advbayes wrote ({str(exc).splitlines()[0][:160]})"
            ) from None
    registry = load_registry(pm=get_plugin_manager())
    dataset = registry.build("datasets", entry["dataset"])
    network = registry.build("models", entry["model"]).build(tuple(dataset.input_shape), dataset.num_classes)
    model = as_sampled(registry.build("defenses", entry["defense"]).prepare(network))
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:
        raise RunError(
            f"tracked run {run_id}: its weights do not fit the network its entries build "
            f"({str(exc).splitlines()[0][:160]})"
        ) from None
    return model.eval()


@hookimpl
def register_commands(cli: Any) -> None:
    """ui, compare, runs and report: the commands that read the MLflow store."""
    from advbayes.tracking_commands import add_commands

    add_commands(cli)
