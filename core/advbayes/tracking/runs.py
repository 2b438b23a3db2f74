"""Tracked runs as the commands see them: who runs them (host, pid), whether they are alive, their params."""

from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from advbayes.errors import RunError
from advbayes.sweep.plan import COMBINATION_TAG, SWEEP_ID_TAG
from advbayes.tracking.lease import current_writer, holder_state
from advbayes.tracking.store import (
    CHECKPOINT_DIR,
    CHILD_ROLE,
    PARENT_ROLE,
    ROLE_TAG,
    client_for,
    shown_uri,
    tracked_run,
)

CLOSED_TAG = "advbayes.closed"  # runs --close: never offered for resume again
HOST_TAG = "advbayes.host"
PID_TAG = "advbayes.pid"


def process_tags() -> dict[str, str]:
    """Where a run executes, so that a run left RUNNING by a killed process can be told from a live one."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def hardware_tags(device: str) -> dict[str, str]:
    """What a run's float results depend on beyond the code: torch's CPU threads (how sums are split), the CPU model
    (which kernels run) and, on CUDA, the GPU. The same code, seed and these reproduce a CPU run bit for bit."""
    import torch

    tags = {"advbayes.torch_threads": str(torch.get_num_threads()), "advbayes.cpu": cpu_model()}
    if device.startswith("cuda") and torch.cuda.is_available():
        tags["advbayes.gpu"] = torch.cuda.get_device_name(torch.device(device))
    return tags


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo; elsewhere what `platform` knows), read once per process."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux
    return platform.processor() or platform.machine() or "unknown"


def current_holder(run: Any) -> dict[str, Any]:
    """The process that writes (or last wrote) a run: its latest lease, else (runs tracked before leases) its
    host and pid tags."""
    latest = current_writer(run)
    if latest is not None:
        return latest[1]
    tags = run.data.tags
    return {"host": tags.get(HOST_TAG), "pid": tags.get(PID_TAG)}


def liveness(run: Any) -> str:
    """For a RUNNING run: "alive" (its writer runs: its process here, or its heartbeat elsewhere is fresh), "stale"
    (its writer is gone: killed here, or silent past the lease's expiry), or "elsewhere" (another machine, no
    heartbeat to judge by). Runs in other states: their status."""
    if run.info.status != "RUNNING":
        return run.info.status
    latest = current_writer(run)
    if latest is None:  # tracked before leases: its host and pid tags
        return holder_state(run, None, current_holder(run))
    return holder_state(run, *latest)


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


def _git(args: Sequence[str], where: Path) -> str | None:
    """The output of `git ARGS` run in `where`, or None when git or the checkout is missing."""
    try:
        out = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit(where: Path | None = None) -> str | None:
    """The commit of the git checkout advbayes runs from (its source directory; `where` if given), if any.

    The package's directory, not the working directory: runs are started from a results directory outside the
    checkout, and the code that ran is what a reader needs to find."""
    return _git(["rev-parse", "HEAD"], where or Path(__file__).resolve().parent) or None


CODE_TAGS = ("advbayes.git_commit", "advbayes.git_dirty", "advbayes.version.advbayes")  # which code made a run
RESUMED_CODE_TAG = "advbayes.resumed_with_code"  # the other code that worked on a resumed run, "; "-separated


def commit_text(tags: Mapping[str, str]) -> str:
    """`commit C` (with uncommitted changes) from a run's provenance tags."""
    commit = tags.get("advbayes.git_commit")
    text = f"commit {commit[:12]}" if commit else "commit unknown"
    return text + (" with uncommitted changes" if tags.get("advbayes.git_dirty") == "true" else "")


def code_text(tags: Mapping[str, str]) -> str:
    """`commit C` (with uncommitted changes), advbayes V: the code a run's provenance tags name."""
    return f"{commit_text(tags)}, advbayes {tags.get('advbayes.version.advbayes', 'unknown')}"


def code_differences(run_tags: Mapping[str, str], mine: Mapping[str, str]) -> list[str]:
    """The CODE_TAGS where the code that made a run (its tags) and this process's (`mine`, provenance()) differ."""
    return [k for k in CODE_TAGS if run_tags.get(k) != mine.get(k)]


def resumed_code(run_tags: Mapping[str, str], mine: Mapping[str, str]) -> str | None:
    """The run's RESUMED_CODE_TAG once this process's code (`mine`, provenance()) has worked on it, or None when
    the code is the one that started it or is already named."""
    if not code_differences(run_tags, mine):
        return None
    earlier = [part for part in run_tags.get(RESUMED_CODE_TAG, "").split("; ") if part]
    now = code_text(mine)
    return None if now in earlier else "; ".join([*earlier, now])


def provenance(where: Path | None = None) -> dict[str, str]:
    """Tags that say which code ran: the checkout's commit and whether it had uncommitted changes to tracked files,
    and the versions of Python, torch, MLflow and advbayes (the plugins' versions are tagged on their own).

    For advbayes's own checkout (no `where`) the answer is read once per process: a process that runs many
    defenses keeps the code it loaded even when the checkout moves to another commit meanwhile."""
    if where is None:
        return dict(_process_provenance())
    return _read_provenance(where)


@functools.lru_cache(maxsize=1)
def _process_provenance() -> dict[str, str]:
    """provenance() of advbayes's own checkout, as first read by this process."""
    return _read_provenance(Path(__file__).resolve().parent)


def _read_provenance(folder: Path) -> dict[str, str]:
    """provenance() of the checkout at `folder`, read now."""
    from importlib.metadata import PackageNotFoundError, version

    tags = {"advbayes.version.python": platform.python_version()}
    for package in ("advbayes", "torch", "mlflow"):
        try:
            tags[f"advbayes.version.{package}"] = version(package)
        except PackageNotFoundError:
            tags[f"advbayes.version.{package}"] = "not installed"
    commit = git_commit(folder)
    if commit:
        tags["advbayes.git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
        changes = _git(["status", "--porcelain", "--untracked-files=no"], folder)
        tags["advbayes.git_dirty"] = "unknown" if changes is None else str(bool(changes)).lower()
    return tags


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
            raise RunError(f"no tracked runs of experiment '{name}' in {shown_uri(client.tracking_uri)}")
        ids.append(found.experiment_id)
    if not ids:
        return []
    return client.search_runs(
        ids, filter_string=f"tags.`{ROLE_TAG}` = '{PARENT_ROLE}'", order_by=["attributes.start_time DESC"]
    )


TRAINING_PREFIX = "train/"  # the per-epoch metrics (step = epoch) that the epoch_finished hook logs
TRAINING_LOSS = f"{TRAINING_PREFIX}loss"  # logged every epoch by every defense that trains


def attacks_running(client: Any, experiment_ids: Sequence[str]) -> dict[str, str]:
    """parent run id -> name of the attack run it has open (RUNNING: evaluating, or stopped while it did)."""
    running = f"tags.`{ROLE_TAG}` = '{CHILD_ROLE}' and attributes.status = 'RUNNING'"
    found = client.search_runs(list(experiment_ids), filter_string=running, max_results=50000) if experiment_ids else []
    return {run.data.tags.get("mlflow.parentRunId", ""): run.info.run_name for run in found}


def last_epoch(client: Any, run_id: str) -> int:
    """The last epoch a run has logged (0 before its first)."""
    return max((m.step for m in client.get_metric_history(run_id, TRAINING_LOSS)), default=0)


def progress_text(client: Any, run: Any, attacking: Mapping[str, str]) -> str:
    """Where an unfinished run is (or stopped): the attack it evaluates, else its last logged epoch of how many."""
    if run.info.run_id in attacking:
        return f"attack {attacking[run.info.run_id]}"
    epoch = last_epoch(client, run.info.run_id)
    return f"epoch {epoch}/{run.data.params.get('epochs', '?')}" if epoch else "no epoch logged yet"


def log_metric_items(client: Any, run_id: str, items: Sequence[Any]) -> None:
    """Log MLflow `Metric`s into a run, 500 per call (under the store's batch limit)."""
    for start in range(0, len(items), 500):
        client.log_batch(run_id, metrics=list(items[start : start + 500]))


def copy_training_history(client: Any, source: str, target: str) -> int:
    """Log the per-epoch training metrics of run `source` into run `target` (same steps and times), so that a run
    resumed from another's checkpoint with changed settings shows its whole training; returns the count copied."""
    from mlflow.entities import Metric

    keys = sorted(k for k in client.get_run(source).data.metrics if k.startswith(TRAINING_PREFIX))
    items = [Metric(key, m.value, m.timestamp, m.step) for key in keys for m in client.get_metric_history(source, key)]
    log_metric_items(client, target, items)
    return len(items)


def has_checkpoint(client: Any, run_id: str) -> bool:
    """Whether the run logged a checkpoint to resume from."""
    return any(item.path.endswith("checkpoint.pt") for item in client.list_artifacts(run_id, CHECKPOINT_DIR))


def restart_hint(run: Any) -> str:
    """What to do with a run that stopped before its first checkpoint: there is nothing to resume, so run again."""
    experiment = run.data.tags.get("advbayes.experiment", "EXPERIMENT")
    return (
        f"the run stopped before its first checkpoint, so there is nothing to resume; run it again from the start "
        f"(advbayes run {experiment}, with the --set overrides it had: its experiment.toml artifact lists them)"
    )


def close_run(uri: str | None, run_id: str) -> str:
    """Mark a run whose process is gone FAILED (with its open attack runs), taking its lease first so that a resume
    starting at the same moment and this close cannot both win; returns what was done, as one line."""

    from advbayes.tracking.lease import claim, describe

    client = client_for(uri)
    run = tracked_run(client, run_id, f"runs --close {run_id}")
    if run.data.tags.get(ROLE_TAG) == CHILD_ROLE:
        raise RunError(f"runs --close {run_id}: that is an attack's child run; close its parent run")
    if run.info.status == "FINISHED" or CLOSED_TAG in run.data.tags:
        done = "FINISHED" if run.info.status == "FINISHED" else "closed"
        raise RunError(f"runs --close {run_id}: the run is {done} already; there is nothing to close")
    if liveness(run) == "alive":
        raise RunError(
            f"runs --close {run_id}: the run is being written by {describe(current_holder(run))}; stop that "
            "process first"
        )
    claim(client, run_id, purpose=f"runs --close {run_id}")  # no heartbeat: the run ends now
    open_children = f"tags.`mlflow.parentRunId` = '{run_id}' and attributes.status = 'RUNNING'"
    children = client.search_runs([run.info.experiment_id], filter_string=open_children)
    for child in children:
        client.set_terminated(child.info.run_id, status="FAILED")
    was = status_text(run)
    client.set_tag(run_id, CLOSED_TAG, f"{was}, closed {time.strftime('%Y-%m-%d %H:%M:%S')}")
    if "error" not in run.data.tags:
        client.set_tag(run_id, "error", f"closed by advbayes runs --close (it was {was})")
    client.set_terminated(run_id, status="FAILED")
    return f"run {run_id} ({run.data.tags.get('advbayes.experiment', '?')}) marked FAILED"


def filter_value(text: str) -> str:
    """A value quoted for an MLflow filter string (a label may hold a quote)."""
    return "'" + text.replace("'", "\\'") + "'"


def sweep_step(client: Any, run: Any) -> str:
    """For an unfinished run of a sweep: the sweep's --resume, or the run that has finished its place since."""
    keys = (SWEEP_ID_TAG, COMBINATION_TAG, "advbayes.defense")
    same = " and ".join(f"tags.`{key}` = {filter_value(run.data.tags.get(key, ''))}" for key in keys)
    done = client.search_runs([run.info.experiment_id], f"{same} and attributes.status = 'FINISHED'", max_results=1)
    return (
        f"finished since in run {done[0].info.run_id}"
        if done
        else f"advbayes sweep --resume {run.data.tags[SWEEP_ID_TAG]}"
    )


def next_step(client: Any, run: Any) -> str:
    """What `runs` offers for a run: the resume command when it has a checkpoint and no live writer, a fresh start
    (and --close for a stale one) when it has none, nothing for a finished or running one."""
    if run.info.status == "FINISHED" or CLOSED_TAG in run.data.tags or liveness(run) == "alive":
        return ""
    run_id = run.info.run_id
    if SWEEP_ID_TAG in run.data.tags:  # its sweep's --resume continues it, or starts it again, with the others
        return sweep_step(client, run)
    if has_checkpoint(client, run_id):
        return f"advbayes run --resume {run_id}"
    experiment = run.data.tags.get("advbayes.experiment", "EXPERIMENT")
    close = f"advbayes runs --close {run_id}; " if run.info.status == "RUNNING" else ""
    return f"no checkpoint: {close}advbayes run {experiment}"
