"""Tracked runs as the commands see them: who runs them (host, pid), whether they are alive, their params."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from advbayes.errors import RunError
from advbayes.tracking.store import PARENT_ROLE, ROLE_TAG, client_for

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


def git_commit() -> str | None:
    """The commit of the working directory's git checkout, if there is one."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


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
