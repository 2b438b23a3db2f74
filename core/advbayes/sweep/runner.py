"""Running a planned sweep on Ray: a local Ray by default, a cluster by --address; one task per combination with
its own CPUs and GPUs; the runs land in one MLflow experiment tagged with the sweep id; --resume reruns only what
did not finish."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import attrs

from advbayes.errors import AdvbayesError, error_text
from advbayes.progress import PROGRESS_SECONDS, clock_text
from advbayes.sweep.plan import COMBINATION_TAG, SWEEP_ID_TAG, Combination, SweepError, SweepPlan
from advbayes.sweep.resume import (
    Earlier,
    close_replaced,
    close_runs,
    earlier_runs,
    finished_labels,
    resume_command,
    resume_lines,
    sweep_runs_filter,
)
from advbayes.tracking.store import shown_uri

SWEEP_ROLE = "sweep"  # the record run that holds a sweep's plan (sweep.json); compare and report skip it
MANIFEST = "sweep.json"
PROBE_TIMEOUT = 120  # seconds for a worker to answer whether it reaches the tracking store
CONNECT_TIMEOUT = 5  # seconds for a TCP probe of a cluster address
CLOCK_SKEW = 60  # seconds a worker's clock may lag the driver's, when it stamps a run's start
STOP_SECONDS = 30  # for the tasks of an interrupted sweep to be killed before their runs are marked KILLED


@attrs.define
class Outcome:
    """What one combination's task returned."""

    label: str
    ok: bool
    run_ids: list[str]
    seconds: float = 0.0
    error: str = ""
    summary: str = ""
    headline: list[str] = attrs.field(factory=list)  # the runs' saved-view columns (tracking.headline_columns)


@attrs.define
class SweepSummary:
    """The sweep's outcomes; `skipped` combinations had finished before a --resume."""

    plan: SweepPlan
    outcomes: list[Outcome]
    skipped: list[str]
    tracking_uri: str
    seconds: float
    again: str  # the command that finishes the sweep (its id, store and options)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    def format(self) -> str:
        """The summary the CLI prints: counts, then each failed combination with its error and run ids."""
        done = len(self.outcomes) - len(self.failed)
        lines = [
            f"sweep {self.plan.sweep_id} of {self.plan.experiment}: {done} of {len(self.outcomes)} combination(s) "
            f"finished in {self.seconds:.0f} s"
            + (f" ({len(self.skipped)} had finished before --resume)" if self.skipped else "")
        ]
        for outcome in self.failed:
            ids = ", ".join(outcome.run_ids) or "no MLflow run"
            lines.append(f"  FAILED {outcome.label}: {outcome.error} (run {ids})")
        if self.failed:
            lines.append(f"finish it (stopped runs go on from their checkpoints): {self.again}")
        lines.append(f"compare: advbayes compare {self.plan.experiment} (store {shown_uri(self.tracking_uri)})")
        return "\n".join(lines)


def absolute_store(uri: str) -> str:
    """A sqlite URI with an absolute path: Ray workers do not run in the driver's directory."""
    from advbayes.tracking import sqlite_path

    database = sqlite_path(uri)
    return f"sqlite:///{database.resolve()}" if database is not None else uri


def probe_address(address: str) -> None:
    """A TCP connection to the cluster's host:port, so an unreachable --address fails in seconds, not after Ray's
    minutes of retries; an address without a port (or port 0) is refused, since Ray would retry it for good."""
    if address == "auto":
        return
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:
        raise SweepError(f"--address {address}: the port is not a number from 1 to 65535") from None
    if not host or not port:
        raise SweepError(f"--address {address}: expected HOST:PORT with a port from 1 to 65535, or 'auto'")
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise SweepError(
            f"--address {address}: no Ray cluster answers at {host}:{port} ({exc.strerror or type(exc).__name__})"
        ) from None


def connect(address: str | None, workers: int | None, cpus_per_run: float) -> bool:
    """Start a local Ray (True: we stop it) or join the cluster at `address` (False)."""
    try:
        import ray
    except ImportError:
        raise SweepError(
            "advbayes sweep runs on Ray, which is not installed: pip install 'advbayes[cluster]'"
        ) from None

    quiet: dict[str, Any] = {"log_to_driver": False, "configure_logging": True, "logging_level": "ERROR"}
    if address is None:
        if workers is not None and workers < 1:
            raise SweepError(f"--workers: expected a number of concurrent runs >= 1, got {workers}")
        if ray.is_initialized():  # this process runs a Ray already (a notebook, an earlier sweep): use it as it is
            have = float(ray.cluster_resources().get("CPU", 0))
            if workers is not None and workers * max(cpus_per_run, 1) != have:
                raise SweepError(
                    f"--workers {workers}: this process's Ray is running already with {have:g} CPUs; "
                    "leave --workers out to use it, or ray.shutdown() it first"
                )
            return False  # not ours to stop; its workers stay warm (torch and MLflow imported) for the next sweep
        cpus = None if workers is None else max(1, int(workers * max(cpus_per_run, 1)))
        try:
            with sigterm_kept():
                ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=256 * 2**20, **quiet)
        except Exception as exc:  # noqa: BLE001 - any failure to start is reported in one line
            raise SweepError(f"could not start a local Ray: {error_text(exc)}") from None
        return True
    if workers is not None:
        raise SweepError("--workers sizes a local Ray; a cluster (--address) has the workers it has")
    probe_address(address)
    try:
        with sigterm_kept():
            ray.init(address=address, **quiet)
    except Exception as exc:  # noqa: BLE001 - ConnectionError, ValueError, grpc errors: all one line
        raise SweepError(f"--address {address}: cannot join a Ray cluster ({error_text(exc)})") from None
    return False


@contextlib.contextmanager
def sigterm_kept() -> Iterator[None]:
    """ray.init installs a SIGTERM handler that prints a stack and ends the driver at once; the command's own (a
    SIGTERM ends the sweep as Ctrl-C does, with the way to finish it) is put back."""
    before = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if callable(before) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, before)


def node_capacity() -> tuple[float, float, float]:
    """(most CPUs of one live node, most GPUs of one live node, GPUs of the cluster)."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = max((float(n["Resources"].get("CPU", 0)) for n in nodes), default=0.0)
    gpus = max((float(n["Resources"].get("GPU", 0)) for n in nodes), default=0.0)
    return cpus, gpus, float(ray.cluster_resources().get("GPU", 0))


def task_resources(gpus_per_run: float | None, cpus_per_run: float, device: str) -> tuple[float, float, str]:
    """(CPUs, GPUs, device) of each task, checked against the cluster: a request no node can satisfy would wait
    forever, so it is an error before anything starts."""
    most_cpus, most_gpus, cluster_gpus = node_capacity()
    gpus = (1.0 if cluster_gpus > 0 else 0.0) if gpus_per_run is None else gpus_per_run
    if gpus < 0 or cpus_per_run <= 0:
        raise SweepError(f"--gpus-per-run {gpus:g} --cpus-per-run {cpus_per_run:g}: expected GPUs >= 0 and CPUs > 0")
    if gpus > most_gpus:
        raise SweepError(
            f"--gpus-per-run {gpus:g}: no node of the Ray cluster has {gpus:g} GPU(s) (the most one node has is "
            f"{most_gpus:g}); ask for fewer, or --gpus-per-run 0 to train on CPUs"
        )
    if cpus_per_run > most_cpus:
        raise SweepError(
            f"--cpus-per-run {cpus_per_run:g}: no node of the Ray cluster has that many (most: {most_cpus:g})"
        )
    if device.startswith("cuda") and gpus == 0:
        raise SweepError(f"--device {device}: the tasks reserve no GPU (--gpus-per-run 0); ask for one per run")
    if device == "auto":  # a task without a reserved GPU must not train on a GPU another task holds
        device = "cuda" if gpus > 0 else "cpu"
    return cpus_per_run, gpus, device


def reachable_store(uri: str) -> str:
    """'' when this process reaches the tracking store, else why not (runs on a Ray worker as the probe)."""
    from advbayes.tracking import check_store

    try:
        check_store(uri, write=False)
    except AdvbayesError as exc:
        return f"{socket.gethostname()}: {exc}"
    return ""


def check_workers_reach(uri: str) -> None:
    """A worker of the cluster (not the driver) must reach the tracking store, or every run would fail late."""
    import ray

    try:
        problem = ray.get(ray.remote(num_cpus=0)(reachable_store).remote(uri), timeout=PROBE_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - a timeout or a worker that cannot import advbayes
        raise SweepError(f"the Ray workers could not check the tracking store {uri}: {error_text(exc)}") from None
    if problem:
        raise SweepError(
            f"the Ray workers cannot reach the tracking store {uri} ({problem}); give --tracking-uri a store every "
            "node reaches, e.g. an mlflow server (README: a team store)"
        )


def run_combination(
    experiment: str,
    spec: Mapping[str, Any],
    device: str,
    tracking_uri: str,
    tags: Mapping[str, str],
    earlier: Earlier | None = None,
) -> dict[str, Any]:
    """One combination on a Ray worker: `advbayes run` of the resolved spec, its runs tagged, the `earlier` runs a
    --resume keeps read back or continued; never raises."""
    from advbayes.engine import run
    from advbayes.results import RunGroup
    from advbayes.tracking import headline_columns

    started = time.perf_counter()
    try:
        earlier = earlier or Earlier()
        result = run(
            experiment,
            spec=spec,
            device=device,
            tracking_uri=tracking_uri,
            tags=tags,
            progress=False,
            finished_runs=earlier.finished,
            continued_runs=earlier.continued,
        )
    except BaseException as exc:  # noqa: BLE001 - reported to the driver, which lists it and goes on
        run_id = getattr(exc, "advbayes_run_id", None)
        return {"ok": False, "run_ids": [run_id] if run_id else [], "error": error_text(exc), "seconds": 0.0}
    results = result.results if isinstance(result, RunGroup) else [result]
    return {
        "ok": True,
        "run_ids": [r.run_id for r in results if r.run_id],
        "seconds": time.perf_counter() - started,
        "summary": "; ".join(short_result(r) for r in results),
        "headline": [key for r in results for key in headline_columns(r.records)],
    }


def short_result(result: Any) -> str:
    """A run's accuracies as `attack@eps value`, at most 4."""
    cells = [
        f"{r.attack_label}@{r.eps:g} {r.metrics['accuracy']:.3f}" for r in result.records if "accuracy" in r.metrics
    ]
    return ", ".join(cells[:4]) + (" ..." if len(cells) > 4 else "")


def open_record(client: Any, experiment: str, plan: SweepPlan) -> str:
    """The sweep's record run in the experiment (role `sweep`), holding its plan as sweep.json."""
    from advbayes.tracking import ROLE_TAG

    found = client.search_runs([experiment], filter_string=sweep_runs_filter(plan.sweep_id, SWEEP_ROLE))
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return str(found[0].info.run_id)
    tags = {ROLE_TAG: SWEEP_ROLE, SWEEP_ID_TAG: plan.sweep_id, "advbayes.experiment": plan.experiment}
    created = client.create_run(experiment, run_name=f"sweep {plan.sweep_id}", tags=tags)
    client.log_text(created.info.run_id, json.dumps(plan.manifest(), indent=1), MANIFEST)
    client.log_param(created.info.run_id, "grid", json.dumps(plan.grid)[:6000])
    return str(created.info.run_id)


def find_record(client: Any, sweep_id: str) -> SweepPlan:
    """The plan of sweep `sweep_id` from its record run, for --resume."""
    import tempfile

    ids = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(ids, filter_string=sweep_runs_filter(sweep_id, SWEEP_ROLE)) if ids else []
    if not found:
        raise SweepError(f"--resume {sweep_id}: no sweep with that id in {shown_uri(client.tracking_uri)}")
    run_id = found[0].info.run_id
    with tempfile.TemporaryDirectory() as folder:
        path = client.download_artifacts(run_id, MANIFEST, folder)
        manifest = json.loads(Path(path).read_text())
    return SweepPlan.from_manifest(manifest)


def stop_tasks(
    ray: Any, client: Any, experiment: str, plan: SweepPlan, record: str, pending: Mapping[Any, Combination]
) -> None:
    """An interrupted sweep: its unfinished tasks are ended (their worker processes killed, so none writes on), then
    their runs and the sweep's record run are marked KILLED; --resume continues those runs from their checkpoints."""
    for ref in pending:
        ray.cancel(ref, force=True)
    ray.wait(list(pending), num_returns=len(pending), timeout=STOP_SECONDS)
    for combination in pending.values():
        close_runs(client, experiment, plan, combination.label, "KeyboardInterrupt: the sweep stopped", "KILLED")
    client.set_terminated(record, status="KILLED")


def repair_runs_view(client: Any, experiment: str, outcomes: list[Outcome]) -> None:
    """Add every finished run's headline columns to the experiment's saved view from the driver alone: runs that
    finish at the same moment on a server store may each have overwritten the other's columns."""
    from advbayes.tracking import update_runs_view

    keys = list(dict.fromkeys(key for outcome in outcomes if outcome.ok for key in outcome.headline))
    if keys:
        update_runs_view(client, experiment, keys)


def execute(
    plan: SweepPlan,
    *,
    tracking_uri: str,
    address: str | None = None,
    workers: int | None = None,
    gpus_per_run: float | None = None,
    cpus_per_run: float = 1.0,
    device: str = "auto",
    check: Callable[[Combination, str], None] | None = None,
    resume: bool = False,
    progress: bool | None = None,
    echo: Callable[[str], None] | None = None,
) -> SweepSummary:
    """Run every combination of `plan` not finished yet as a Ray task; `check(combination, device)` runs each
    combination's pre-run checks first. A failed task does not stop the others."""
    from tqdm.auto import tqdm

    from advbayes.tracking import client_for, experiment_id

    echo = echo or (lambda line: print(line, file=sys.stderr))
    progress = sys.stderr.isatty() if progress is None else progress
    started = time.perf_counter()
    tracking_uri = absolute_store(tracking_uri)
    options: dict[str, Any] = {"--tracking-uri": tracking_uri, "--address": address, "--workers": workers}
    options |= {"--gpus-per-run": gpus_per_run, "--cpus-per-run": cpus_per_run, "--device": device}
    earlier = earlier_runs(client_for(tracking_uri, write=False), plan) if resume else {}
    skipped = finished_labels(plan, earlier)
    todo = [c for c in plan.combinations if c.label not in skipped]
    stop_ray = connect(address, workers, cpus_per_run)
    import ray

    try:
        cpus, gpus, task_device = task_resources(gpus_per_run, cpus_per_run, device)
        if check is not None:
            for combination in todo:
                check(combination, "cpu" if task_device.startswith("cuda") and not _has_cuda() else task_device)
        client = client_for(tracking_uri)  # the driver creates a sqlite store before any worker opens it
        check_workers_reach(tracking_uri)
        description = str(plan.combinations[0].spec.get("description", "")) if plan.combinations else ""
        experiment = experiment_id(client, plan.experiment, description)
        record = open_record(client, experiment, plan)
        task = ray.remote(run_combination).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
        pending = {
            task.remote(
                plan.experiment,
                c.spec,
                task_device,
                tracking_uri,
                {SWEEP_ID_TAG: plan.sweep_id, COMBINATION_TAG: c.label},
                earlier.get(c.label, Earlier()),
            ): c
            for c in todo
        }
        echo(
            f"sweep {plan.sweep_id}: {len(todo)} combination(s) of {plan.experiment} as Ray tasks "
            f"({cpus:g} CPU, {gpus:g} GPU each) tracking to {shown_uri(tracking_uri)}"
            + (f"; {len(skipped)} finished before, skipped" if skipped else "")
        )
        for line in resume_lines(plan, earlier, skipped):
            echo(line)
        for line in close_replaced(tracking_uri, plan, earlier):
            echo(line)
        continued = frozenset(run_id for runs in earlier.values() for run_id in runs.continued.values())
        try:
            outcomes = wait_all(ray, pending, client, experiment, plan, progress, echo, tqdm, continued)
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: stop the tasks, mark their runs, say how to finish
            stop_tasks(ray, client, experiment, plan, record, pending)
            exc.advbayes_sweep = (  # type: ignore[attr-defined]  # for the command line's message
                f"sweep {plan.sweep_id} stopped with {len(todo) - len(pending)} of {len(todo)} combination(s) "
                f"finished; finish it with: {resume_command(plan.sweep_id, options)}"
            )
            raise
        repair_runs_view(client, experiment, outcomes)
        client.set_terminated(record, status="FINISHED" if all(o.ok for o in outcomes) else "FAILED")
    finally:
        if stop_ray:
            ray.shutdown()
    seconds = time.perf_counter() - started
    return SweepSummary(plan, outcomes, sorted(skipped), tracking_uri, seconds, resume_command(plan.sweep_id, options))


def wait_all(
    ray: Any,
    pending: dict[Any, Combination],
    client: Any,
    experiment: str,
    plan: SweepPlan,
    progress: bool,
    echo: Any,
    tqdm: Any,
    continued: frozenset[str] = frozenset(),
) -> list[Outcome]:
    """Collect the tasks as they finish: a line per finished combination and a bar over the grid (`continued`: the
    runs a --resume continues, started before this wait)."""
    outcomes: list[Outcome] = []
    total, started, since = len(pending), time.monotonic(), int(time.time() - CLOCK_SKEW) * 1000
    bar = tqdm(total=total, unit="run", desc=f"sweep {plan.sweep_id}", disable=not progress, dynamic_ncols=True)
    write = bar.write if progress else echo
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=PROGRESS_SECONDS)
        if not ready:  # a combination can take an hour: say what each running one is at, from the store
            state = running_state(client, experiment, plan, since, continued)
            if progress:
                bar.set_postfix_str(state)
            else:
                done = f"{len(outcomes)}/{total} finished, {clock_text(time.monotonic() - started)} elapsed"
                echo(f"sweep {plan.sweep_id}: {done}; {state}")
            continue
        combination = pending.pop(ready[0])
        try:
            returned = ray.get(ready[0])
            outcome = Outcome(label=combination.label, **returned)
        except Exception as exc:  # noqa: BLE001 - the worker died (killed, out of memory): the others go on
            outcome = Outcome(
                label=combination.label, ok=False, run_ids=[], error=f"Ray task failed: {error_text(exc)}"
            )
            outcome.run_ids += close_runs(client, experiment, plan, combination.label, outcome.error, "FAILED")
        outcomes.append(outcome)
        state = "finished" if outcome.ok else "FAILED"
        detail = outcome.summary if outcome.ok else outcome.error
        ids = ", ".join(outcome.run_ids) or "no run"
        write(f"[{len(outcomes)}/{total}] {state} {combination.label} ({outcome.seconds:.0f} s, run {ids}): {detail}")
        bar.update(1)
    bar.close()
    return outcomes


def running_state(
    client: Any, experiment: str, plan: SweepPlan, since_ms: int = 0, continued: frozenset[str] = frozenset()
) -> str:
    """Each running combination's epoch (or the attack it evaluates), from the runs the workers started after
    `since_ms` or continue (a killed earlier try of the sweep leaves its runs RUNNING); a store that does not answer is
    said in the line, and the sweep waits on (its runs write to that store and fail on their own)."""
    from mlflow.exceptions import MlflowException

    from advbayes.tracking import PARENT_ROLE
    from advbayes.tracking.runs import attacks_running, progress_text

    running = "attributes.status = 'RUNNING'"
    try:
        found = client.search_runs([experiment], filter_string=sweep_runs_filter(plan.sweep_id, PARENT_ROLE, running))
        parents = [r for r in found if r.info.start_time >= since_ms or r.info.run_id in continued]
        listed = {run.info.run_id for run in parents}
        attacking = {parent: name for parent, name in attacks_running(client, [experiment]).items() if parent in listed}
        parts = [f"{running_label(run)}: {progress_text(client, run, attacking)}" for run in parents]
    except MlflowException as exc:
        return f"the store did not say what runs ({error_text(exc)})"
    return "running: " + ("; ".join(sorted(parts)) if parts else "none started yet")


def running_label(run: Any) -> str:
    """A running run's combination, and its defense where the combination does not name it (a combination of an
    experiment with several defenses runs one run per defense, one after the other)."""
    label = run.data.tags.get(COMBINATION_TAG, run.info.run_name)
    defense = run.data.tags.get("advbayes.defense")
    return f"{label} {defense}" if defense and f"defense={defense}" not in label.split() else label


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())
