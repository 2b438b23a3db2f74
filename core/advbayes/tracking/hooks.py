"""The tracking plugin's hooks: a parent run per experiment run and a nested child run per attack, checkpoints
and models logged, and tracked models loaded back."""

from __future__ import annotations

import pickle
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w

from advbayes.tracking.lease import Lease, claim, describe
from advbayes.tracking.runs import (
    RESUMED_CODE_TAG,
    TRAINING_PREFIX,
    code_text,
    copy_training_history,
    current_holder,
    flatten,
    hardware_tags,
    has_checkpoint,
    liveness,
    log_metric_items,
    process_tags,
    provenance,
    restart_hint,
    resumed_code,
    run_params,
)
from advbayes.tracking.store import (
    CHECKPOINT_DIR,
    CHILD_ROLE,
    MAX_TAG,
    MODEL_DIR,
    MODEL_ENTRY,
    MODEL_WEIGHTS,
    PARENT_ROLE,
    ROLE_TAG,
    client_for,
    tracked_run,
)
from advbayes.tracking.view import experiment_id, headline_columns, update_runs_view

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from advbayes.errors import AdvbayesError, ProvenanceWarning, RunError, error_text
from advbayes.hookspecs import hookimpl
from advbayes.results import eps_label, eps_step, metric_names, outcomes_csv, to_csv

if TYPE_CHECKING:
    from advbayes.results import EvalRecord, RunResult


def _log_params(client: Any, run_id: str, params: Mapping[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k[:250], v[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100])


def _metric_items(metrics: Mapping[str, float], step: int = 0) -> list[Any]:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in metrics.items()]


def _log_metrics(client: Any, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    log_metric_items(client, run_id, _metric_items(metrics, step))


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
        # The lease first: of two resumes started together, the loser is refused before it writes anything.
        run.tracking["lease"] = claim(client, run.resume_run_id, purpose=f"--resume {run.resume_run_id}").start()
        client.update_run(run.resume_run_id, status="RUNNING")
        run.run_id = run.resume_run_id
        for key, value in process_tags().items():  # the run lives in this process now
            client.set_tag(run.resume_run_id, key, value)
        recorded = client.get_run(run.resume_run_id).data.tags
        if "error" in recorded:  # the interruption is over
            client.delete_tag(run.resume_run_id, "error")
        mine = provenance()
        mixed = resumed_code(recorded, mine)
        if mixed is not None:  # its provenance tags name the code that started it: say which other code went on
            client.set_tag(run.resume_run_id, RESUMED_CODE_TAG, mixed)
            warnings.warn(
                f"--resume {run.resume_run_id}: the run was started by {code_text(recorded)} and goes on with "
                f"{code_text(mine)}; its tag {RESUMED_CODE_TAG} and reports name both",
                ProvenanceWarning,
                stacklevel=2,
            )
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
        **hardware_tags(run.device),
        **{f"advbayes.plugin.{name}": version for name, version in run.plugins.items()},
        **run.tags,
    }
    if run.resumed_from:  # a resumed run whose settings changed: a new run, since MLflow params never change
        tags["advbayes.resumed_from"] = run.resumed_from
    tags.update(provenance())  # the commit, whether it had uncommitted changes, and the package versions
    # The MLflow experiment is the advbayes experiment; its runs are named by defense, so variants line up.
    experiment = experiment_id(client, run.experiment, str(spec.get("description", "")))
    created = client.create_run(experiment, run_name=spec["defense"]["name"], tags=tags)
    run_id = created.info.run_id
    run.run_id = run_id
    run.tracking["lease"] = claim(client, run_id, purpose=f"run {run_id}").start()
    _log_params(client, run_id, run_params(spec))
    client.log_text(run_id, tomli_w.dumps({"experiments": {run.experiment: spec}}), "experiment.toml")
    if run.resumed_from:  # its epochs up to the checkpoint, so the new run's training curves start at epoch 1
        copy_training_history(client, run.resumed_from, run_id)


@hookimpl
def epoch_finished(run: Any, epoch: int, metrics: Mapping[str, float], checkpoint: Path) -> None:
    """Per-epoch training metrics (step = epoch); checkpoint_saved, just before, checked the lease."""
    run_id = run.run_id
    if not run.track or run_id is None:
        return
    with _lease_checked(run, before=False):
        training = {f"{TRAINING_PREFIX}{k}": v for k, v in metrics.items()}
        _log_metrics(client_for(run.store), run_id, training, step=epoch)


@hookimpl
def checkpoint_saved(run: Any, checkpoint: Path) -> None:
    """The latest checkpoint replaces the run's checkpoint artifact (after each epoch and each attack)."""
    if not run.track or run.run_id is None:
        return
    with _lease_checked(run):
        client_for(run.store).log_artifact(run.run_id, str(checkpoint), CHECKPOINT_DIR)


@hookimpl
def evaluation_finished(run: Any, attack_label: str, records: Sequence[EvalRecord], figures: Mapping[str, Any]) -> None:
    """A nested child run for the attack: its parameters, one metric per eps, figures; copies on the parent."""
    if not run.track or run.run_id is None:
        return
    with _lease_checked(run):
        _track_attack(run, attack_label, records, figures)


def _track_attack(run: Any, attack_label: str, records: Sequence[EvalRecord], figures: Mapping[str, Any]) -> None:
    parent_id = run.run_id
    client = client_for(run.store)
    parent = client.get_run(parent_id)
    for earlier in client.search_runs(  # an attack evaluated again (a resumed run) supersedes its earlier child
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`advbayes.attack` = '{attack_label}'",
    ):
        client.delete_run(earlier.info.run_id)
    first = records[0]
    entry = next(a for a in run.spec["attacks"] if a["name"] == (first.entry or attack_label))
    child = client.create_run(
        parent.info.experiment_id,
        run_name=attack_label,
        tags={"mlflow.parentRunId": parent_id, ROLE_TAG: CHILD_ROLE, "advbayes.attack": attack_label},
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
        if "zero_grad_share" in record.diagnostics:  # gradient attacks: what the zero-gradients check reads, kept
            values["zero_grad_share"] = record.diagnostics["zero_grad_share"]  # in the store (and the records)
        for key, value in values.items():
            child_metrics[f"{key}/{eps_label(record.eps)}"] = value
            parent_metrics[f"{attack_label}/{key}/{eps_label(record.eps)}"] = value
    # One write per run, every step in it: a write per eps was a transaction each (a request each on a server).
    child_items = _metric_items(child_metrics)
    for step, record in enumerate(sorted(records, key=lambda r: r.eps)):  # eps-ordered series for charts
        child_items += _metric_items({**record.metrics, "eps": record.eps}, step=step)
    log_metric_items(client, child_id, child_items)
    parent_items = _metric_items(parent_metrics)
    for record in records:  # each metric as a series over eps on the parent: the UI's line charts draw it
        series = {f"{attack_label}/{key}": value for key, value in record.metrics.items()}
        parent_items += _metric_items(series, step=eps_step(record.eps))
    log_metric_items(client, parent_id, parent_items)
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
    lease: Lease | None = run.tracking.pop("lease", None)
    if lease is not None:
        lease.stop()
        if lease.store_gone():  # the store was deleted: nothing can be recorded (the run's error says so)
            return
        if lease.failure is None and not lease.holds():  # another process took the run over: it is theirs now
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
        if any(r.per_example for r in result.records):  # which test examples each verdict got right: paired tests
            client.log_text(run_id, outcomes_csv(result.records), "examples.csv")
        from advbayes.lab.figures import drawable_metrics, experiment_figure, points_from_records, safe_file_name

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


@contextmanager
def _lease_checked(run: Any, *, before: bool = True) -> Iterator[None]:
    """Around a run's writes: fail first if this process no longer holds the run (see lease.py), and if a write
    fails because the store was deleted after that check (the database's own error then says "no such table" or
    "autoflush"), fail with the line that says so."""
    lease: Lease | None = run.tracking.get("lease")
    if lease is not None and before:
        lease.check()
    try:
        yield
    except Exception:
        if lease is not None:
            lease.fail_if_store_gone()
        raise


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
    tracked = tracked_run(client, run_id, f"--resume {run_id}")
    if tracked.data.tags.get(ROLE_TAG) == CHILD_ROLE:
        raise RunError(f"--resume {run_id}: that is an attack's child run; resume its parent run")
    if liveness(tracked) == "alive":
        raise RunError(
            f"--resume {run_id}: the run is being written by {describe(current_holder(tracked))}; only one process "
            "writes a run"
        )
    if not has_checkpoint(client, run_id):
        raise RunError(f"--resume {run_id}: {restart_hint(tracked)}")
    try:
        local = client.download_artifacts(run_id, f"{CHECKPOINT_DIR}/checkpoint.pt", str(destination))
    except (MlflowException, OSError) as exc:
        raise RunError(f"--resume {run_id}: its checkpoint could not be downloaded ({error_text(exc)[:200]})") from None
    return Path(local)


@hookimpl
def load_model(run_id: str, tracking_uri: str | None) -> Any:
    """A tracked run's network, rebuilt from its registry entries and loaded with torch.load(weights_only=True)."""
    import torch
    from mlflow.exceptions import MlflowException

    from advbayes.components import prepared_model
    from advbayes.plugins import get_plugin_manager
    from advbayes.registry import load_registry

    client = client_for(tracking_uri, write=False)
    tracked_run(client, run_id, f"tracked run {run_id}")
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
    parts = []
    for key, kind in (("dataset", "datasets"), ("model", "models"), ("defense", "defenses")):
        table = entry.get(key)
        if not isinstance(table, dict) or not isinstance(table.get("use", table.get("name")), str):
            raise RunError(
                f"tracked run {run_id}: its {MODEL_DIR}/{MODEL_ENTRY} has no `{key}` entry table (expected the "
                f"resolved {key} entry advbayes logged, got {type(table).__name__}); it was not written by advbayes"
            )
        try:
            parts.append(registry.build(kind, table))
        except AdvbayesError as exc:
            raise RunError(f"tracked run {run_id}: its {MODEL_DIR}/{MODEL_ENTRY}, `{key}`: {exc}") from None
    model = prepared_model(*parts)
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
    """ui, compare, runs, report, export, bench and leaderboard: the commands that read or write the MLflow store."""
    from advbayes.lab.commands import add_lab_commands
    from advbayes.tracking.commands import add_commands

    add_commands(cli)
    add_lab_commands(cli)
