"""advbayes sweep: the grid and its checks (no Ray), then real local Ray sweeps against the embedded sqlite store
(4 concurrent runs, --resume) and against a real mlflow server over a real PostgreSQL."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from servers import free_port, mlflow_server_process, postgres_server, stop

from advbayes.cli import cli
from advbayes.errors import RegistryError
from advbayes.registry import load_registry
from advbayes.sweep import COMBINATION_TAG, SWEEP_ID_TAG, SweepError, parse_grid_option, plan_sweep, split_values
from helpers import InterruptAfterEpoch

pytestmark = pytest.mark.usefixtures("batched_draws")  # end-to-end runs: no timing race per model


def sweep(args: list[str]) -> tuple[int, str, str]:
    """The CLI in this process: (exit code, stdout, stderr)."""
    result = CliRunner().invoke(cli, ["sweep", *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def parent_runs(uri: str, experiment: str, sweep_id: str) -> list:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`{SWEEP_ID_TAG}` = '{sweep_id}' and tags.`advbayes.role` = 'parent'",
    )


def sweep_id_of(stdout: str) -> str:
    assert stdout.startswith("sweep "), stdout  # the summary is the first thing on stdout
    return stdout.split()[1]  # "sweep ID of EXPERIMENT: ..."


def test_grid_values_split_at_top_level_commas_and_read_as_toml() -> None:
    assert split_values("[0.1,0.2],[0.3], 'a,b'") == ["[0.1,0.2]", "[0.3]", "'a,b'"]
    assert parse_grid_option("eps=[0.1,0.2],[0.3]") == ("eps", [[0.1, 0.2], [0.3]])
    assert parse_grid_option("defense=bnn,adv-bnn") == ("defense", ["bnn", "adv-bnn"])
    assert parse_grid_option("seed=0, 1,2") == ("seed", [0, 1, 2])
    for bad in ("seed", "seed=", "=1,2", "seed=1,,2"):
        with pytest.raises(SweepError):
            parse_grid_option(bad)


def test_plan_is_the_product_of_the_grid_with_every_seed_its_own_combination() -> None:
    registry = load_registry()
    plan = plan_sweep(
        registry, "moons", [("defense", ["standard", "bnn"]), ("batch_size", [32, 64])], [("seeds", [3, 4])]
    )
    assert len(plan.combinations) == 2 * 2 * 2  # defense x batch_size x the experiment's two seeds
    assert len({c.label for c in plan.combinations}) == 8
    for combination in plan.combinations:
        settings = dict(combination.overrides)
        assert combination.spec["seed"] == settings["seed"] and combination.spec["seeds"] == []
        assert combination.spec["defense"]["name"] == settings["defense"]
        assert combination.spec["batch_size"] == settings["batch_size"]
        assert combination.runs == 1
    assert sorted(plan.grid["seed"]) == [3, 4]


def test_a_sweeps_table_is_planned_and_the_command_line_grid_replaces_its_keys(tmp_path: Path) -> None:
    file = tmp_path / "sweeps.toml"
    file.write_text('[sweeps.grid]\nexperiment = "moons"\ngrid = { seed = [0, 1], defense = ["standard", "bnn"] }\n')
    registry = load_registry([file])
    assert len(plan_sweep(registry, "grid").combinations) == 4
    plan = plan_sweep(registry, "grid", [("seed", [7])], [("epochs", 1)])
    assert [c.spec["seed"] for c in plan.combinations] == [7, 7]
    assert all(c.spec["epochs"] == 1 for c in plan.combinations)


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ('experiment = "moons"\ngrids = {}', "grids"),
        ("experiment = 3", "experiment"),
        ('experiment = "moons"\ngrid = { seed = 1 }', "grid.seed"),
        ('experiment = "moons"\nset = [1]', "set"),
    ],
)
def test_a_malformed_sweeps_table_names_file_entry_and_key(tmp_path: Path, body: str, key: str) -> None:
    file = tmp_path / "bad.toml"
    file.write_text(f"[sweeps.s]\n{body}\n")
    with pytest.raises(RegistryError) as caught:
        plan_sweep(load_registry([file]), "s")
    assert caught.value.entry == "sweeps.s" and caught.value.key == key and caught.value.file.endswith("bad.toml")


def test_every_bad_combination_is_one_line_and_nothing_starts(isolated_cwd: Path) -> None:
    code, out, err = sweep(["moons", "--grid", "defense=standard,nosuch", "--grid", "seed=0,1", "--grid", "epochs=1"])
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert lines[0] == "Error: 2 of 4 grid combinations are invalid"
    assert len(lines) == 3 and all(
        "defense=nosuch" in line and "unknown defense 'nosuch'" in line for line in lines[1:]
    )
    code, _out, err = sweep(["moons", "--grid", "defens=standard"])
    assert code == 2 and "key 'defens': unknown key; did you mean 'defense'" in err
    assert not (isolated_cwd / "mlflow.db").exists()  # nothing was started, not even the store


def test_an_unreachable_cluster_address_is_one_line_within_seconds(isolated_cwd: Path) -> None:
    port = free_port()  # nobody listens there
    started = time.monotonic()
    code, _out, err = sweep(["moons", "--set", "epochs=1", "--address", f"ray://127.0.0.1:{port}"])
    assert code == 2 and time.monotonic() - started < 20
    assert err.strip().splitlines() == [
        f"Error: --address ray://127.0.0.1:{port}: no Ray cluster answers at 127.0.0.1:{port} (Connection refused)"
    ]
    assert not (isolated_cwd / "mlflow.db").exists()


def test_a_resume_of_an_unknown_sweep_is_one_line(isolated_cwd: Path) -> None:
    from advbayes.tracking import client_for

    client_for("sqlite:///mlflow.db")  # a store without that sweep
    code, _out, err = sweep(["--resume", "0123abcd"])
    assert code == 2 and err.strip().splitlines() == [
        f"Error: --resume 0123abcd: no sweep with that id in sqlite:///{isolated_cwd / 'mlflow.db'}"
    ]
    code, _out, err = sweep(["moons", "--resume", "0123abcd"])
    assert code == 2 and "give no NAME, --grid or --set" in err


class OneSilentWait:
    """Ray's wait and get for one task that finishes after one PROGRESS_SECONDS timeout with nothing ready."""

    def __init__(self) -> None:
        self.timeouts: list[float | None] = []

    def wait(self, refs: list[str], num_returns: int, timeout: float | None = None) -> tuple[list[str], list[str]]:
        self.timeouts.append(timeout)
        return ([], refs) if len(self.timeouts) == 1 else (refs[:1], refs[1:])

    def get(self, ref: str) -> dict[str, object]:
        return {"ok": True, "run_ids": ["r"], "seconds": 1.0, "summary": "clean 0.9"}


def test_a_sweep_says_what_each_running_combination_is_at_while_none_finishes(tmp_path: Path) -> None:
    """Without a terminal, each silent wait prints each running run's epoch or attack, read from the store; a
    finished run, another sweep's and one a killed earlier try left RUNNING are not in it (one a --resume continues
    is), and a store that fails to answer is said in the line."""
    from mlflow.exceptions import MlflowException
    from tqdm.auto import tqdm  # what execute() passes; wait_all disables it without a terminal

    from advbayes.progress import PROGRESS_SECONDS
    from advbayes.sweep.runner import wait_all
    from advbayes.tracking import client_for

    client = client_for(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("grid")

    def parent(
        label: str, sweep_id: str = "s1", epochs: int = 0, status: str = "RUNNING", age: float = 0, defense: str = ""
    ) -> str:
        tags = {"advbayes.role": "parent", SWEEP_ID_TAG: sweep_id, COMBINATION_TAG: label}
        tags["advbayes.defense"] = defense or label.split()[0].removeprefix("defense=")
        start = int((time.time() - age) * 1000)
        run_id = client.create_run(experiment, tags=tags, start_time=start).info.run_id
        client.log_param(run_id, "epochs", 100)
        for epoch in range(1, epochs + 1):
            client.log_metric(run_id, "train/loss", 1.0 / epoch, step=epoch)
        if status != "RUNNING":
            client.set_terminated(run_id, status=status)
        return run_id

    parent("defense=bnn seed=1", epochs=3)
    attacked = parent("defense=standard seed=1", epochs=39)
    client.create_run(experiment, tags={"advbayes.role": "attack", "mlflow.parentRunId": attacked}, run_name="pgd-20")
    parent("defense=bnn seed=0", epochs=5, status="FINISHED")
    parent("defense=bnn seed=2", sweep_id="other", epochs=7)
    parent("defense=bnn seed=3")
    parent("defense=bnn seed=4", epochs=9, age=3600)  # left RUNNING an hour ago by a killed earlier try
    continued = parent("defense=bnn seed=5", epochs=11, age=3600)  # started an hour ago, continued by this --resume
    parent("seed=6", epochs=2, defense="adv-hvi")  # a combination of several defenses: its label names none
    lines: list[str] = []
    ray, plan = OneSilentWait(), SimpleNamespace(sweep_id="s1")
    combination = SimpleNamespace(label="defense=bnn seed=0")
    outcomes = wait_all(
        ray, {"task": combination}, client, experiment, plan, False, lines.append, tqdm, frozenset({continued})
    )
    assert ray.timeouts == [PROGRESS_SECONDS, PROGRESS_SECONDS] and [o.ok for o in outcomes] == [True]
    assert lines[0] == (
        "sweep s1: 0/1 finished, 0:00 elapsed; running: defense=bnn seed=1: epoch 3/100; "
        "defense=bnn seed=3: no epoch logged yet; defense=bnn seed=5: epoch 11/100; "
        "defense=standard seed=1: attack pgd-20; seed=6 adv-hvi: epoch 2/100"
    )
    assert lines[1].startswith("[1/1] finished defense=bnn seed=0 (1 s, run r): clean 0.9") and len(lines) == 2

    class DownStore:
        def search_runs(self, *args: object, **kwargs: object) -> list[object]:
            raise MlflowException("connection refused")

    lines.clear()
    wait_all(OneSilentWait(), {"task": combination}, DownStore(), experiment, plan, False, lines.append, tqdm)
    assert (
        lines[0]
        == "sweep s1: 0/1 finished, 0:00 elapsed; the store did not say what runs (MlflowException: connection refused)"
    )


def test_a_resumed_sweep_continues_unfinished_runs_from_their_checkpoints_and_reads_back_finished_ones(
    tmp_path: Path,
) -> None:
    """A combination of two defenses whose second run was stopped after epoch 2 of 4 (a preempted node): --resume
    keeps the first run, continues the second from its checkpoint, and the continued run is the run that was never
    stopped (every epoch's loss, every accuracy). A later try a killed process left RUNNING without a checkpoint is
    closed; a run another process still writes stops the resume before any work. Driver and worker functions as the
    Ray task calls them (the Ray path: the slow tests below)."""
    import advbayes
    from advbayes.engine.lifecycle import continued_checkpoint, expand_variants
    from advbayes.errors import RunError
    from advbayes.plugins import create_plugin_manager
    from advbayes.sweep.resume import close_replaced, earlier_runs, finished_labels, resume_lines
    from advbayes.sweep.runner import run_combination
    from advbayes.tracking import client_for
    from advbayes.tracking.lease import claim
    from advbayes.tracking.runs import next_step

    settings = [("defenses", ["standard", "bnn"]), ("epochs", 4), ("until_converged", False)]
    plan = plan_sweep(load_registry(), "moons", [("seed", [0])], [*settings, ("dataset.train_size", 300)])
    (combination,) = plan.combinations
    uri, label = f"sqlite:///{tmp_path / 'mlflow.db'}", combination.label
    tags = {SWEEP_ID_TAG: plan.sweep_id, COMBINATION_TAG: label}
    pm = create_plugin_manager()
    pm.register(InterruptAfterEpoch(2, defense="bnn"), name="interrupt")
    with pytest.raises(KeyboardInterrupt) as raised:
        advbayes.run(plan.experiment, spec=combination.spec, tracking_uri=uri, tags=tags, pm=pm)
    stopped = raised.value.advbayes_run_id
    client = client_for(uri)
    (standard,) = [r.info.run_id for r in parent_runs(uri, "moons", plan.sweep_id) if r.info.status == "FINISHED"]

    assert next_step(client, client.get_run(stopped)) == f"advbayes sweep --resume {plan.sweep_id}"  # `runs` offers
    # a later try of bnn that a killed process left RUNNING before its first checkpoint: closed, not continued
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    process = {"advbayes.host": socket.gethostname(), "advbayes.pid": dead.stdout.strip()}
    leftover_tags = {
        **tags,
        "advbayes.role": "parent",
        "advbayes.defense": "bnn",
        "advbayes.experiment": "moons",
        **process,
    }
    leftover = client.create_run(client.get_run(stopped).info.experiment_id, tags=leftover_tags).info.run_id
    earlier = earlier_runs(client, plan)
    assert earlier[label].finished == {"standard": standard} and earlier[label].continued == {"bnn": stopped}
    assert earlier[label].replaced == [leftover]
    assert close_replaced(uri, plan, earlier) == [
        f"sweep {plan.sweep_id}: {label}: run {leftover} (moons) marked FAILED (left RUNNING, not continued)"
    ]
    assert client.get_run(leftover).info.status == "FAILED" and next_step(client, client.get_run(leftover)) == ""
    assert finished_labels(plan, earlier) == set()
    assert resume_lines(plan, earlier, set()) == [
        f"sweep {plan.sweep_id}: {label}: standard FINISHED in run {standard}, read back, not rerun",
        f"sweep {plan.sweep_id}: {label}: bnn continues run {stopped} from its checkpoint (epoch 2)",
    ]
    bnn = expand_variants(combination.spec)[1]  # a run of other settings is not continued as this one
    with pytest.raises(
        RunError, match=rf"run {stopped}: its checkpoint was written with other settings .*keys epochs\)"
    ):
        continued_checkpoint(pm, stopped, uri, {**bnn, "epochs": 9})
    outcome = run_combination(plan.experiment, combination.spec, "cpu", uri, tags, earlier[label])
    assert outcome["ok"] and outcome["run_ids"] == [standard, stopped], outcome
    assert len(parent_runs(uri, "moons", plan.sweep_id)) == 3  # the two and the closed leftover: none started again
    stopped_run = client.get_run(stopped)
    assert stopped_run.info.status == "FINISHED" and next_step(client, stopped_run) == ""
    assert finished_labels(plan, earlier_runs(client, plan)) == {label}
    older = client.create_run(stopped_run.info.experiment_id, tags=dict(stopped_run.data.tags))  # an earlier try's
    client.set_terminated(older.info.run_id, status="KILLED")
    assert next_step(client, client.get_run(older.info.run_id)) == f"finished since in run {stopped}"

    whole = advbayes.run(plan.experiment, spec=combination.spec, tracking_uri=f"sqlite:///{tmp_path / 'whole.db'}")
    never_stopped = MlflowClient(f"sqlite:///{tmp_path / 'whole.db'}")
    for result, run_id in zip(whole.results, [standard, stopped], strict=True):
        for key in ("train/loss", "train/acc"):
            continued = [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
            assert continued == [(m.step, m.value) for m in never_stopped.get_metric_history(result.run_id, key)]
        accuracy = "none/accuracy/eps_0.0000"
        assert (
            client.get_run(run_id).data.metrics[accuracy] == never_stopped.get_run(result.run_id).data.metrics[accuracy]
        )

    writing = client.create_run(
        client.get_experiment_by_name("moons").experiment_id, tags={"advbayes.role": "parent", **tags}
    )
    lease = claim(client, writing.info.run_id, purpose="a test").start()  # this process writes it
    try:
        with pytest.raises(SweepError, match=rf"run {writing.info.run_id} \({label}, defense .*\) is being written by"):
            earlier_runs(client, plan)
    finally:
        lease.stop()


class StoppableTasks:
    """Ray's cancel and wait as an interrupted sweep calls them, recorded."""

    def __init__(self) -> None:
        self.cancelled: list[tuple[str, bool]] = []
        self.waited: list[tuple[list[str], int, float | None]] = []

    def cancel(self, ref: str, force: bool = False) -> None:
        self.cancelled.append((ref, force))

    def wait(self, refs: list[str], num_returns: int, timeout: float | None = None) -> tuple[list[str], list[str]]:
        self.waited.append((refs, num_returns, timeout))
        return refs, []


def test_an_interrupted_sweep_kills_its_tasks_and_then_marks_their_runs_and_its_record_killed(tmp_path: Path) -> None:
    """Ctrl-C or SIGTERM in the driver: every unfinished task is force-cancelled (its worker process killed) and
    waited for before its runs are marked KILLED with the reason, so no worker writes after the mark; finished runs
    and other sweeps' runs are left as they are. The command line then says how to finish the sweep."""
    from advbayes.cli_output import interruption_lines
    from advbayes.sweep.runner import stop_tasks
    from advbayes.tracking import client_for

    client = client_for(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("grid")
    record = client.create_run(experiment, tags={SWEEP_ID_TAG: "s1", "advbayes.role": "sweep"}).info.run_id

    def parent(label: str, sweep_id: str = "s1", status: str = "RUNNING") -> str:
        tags = {"advbayes.role": "parent", SWEEP_ID_TAG: sweep_id, COMBINATION_TAG: label}
        run_id = client.create_run(experiment, tags=tags).info.run_id
        if status != "RUNNING":
            client.set_terminated(run_id, status=status)
        return run_id

    running, queued_done, finished, other = (
        parent("seed=1"),
        parent("seed=0"),
        parent("seed=2", status="FINISHED"),
        parent("seed=1", sweep_id="s2"),
    )
    ray = StoppableTasks()
    pending = {"ref1": SimpleNamespace(label="seed=1"), "ref0": SimpleNamespace(label="seed=0")}
    stop_tasks(ray, client, experiment, SimpleNamespace(sweep_id="s1"), record, pending)
    assert ray.cancelled == [("ref1", True), ("ref0", True)] and ray.waited == [(["ref1", "ref0"], 2, 30)]
    status = {run_id: client.get_run(run_id) for run_id in (running, queued_done, finished, other, record)}
    assert [status[r].info.status for r in (running, queued_done, finished, other, record)] == [
        "KILLED", "KILLED", "FINISHED", "RUNNING", "KILLED"
    ]  # fmt: skip
    assert status[running].data.tags["error"] == "KeyboardInterrupt: the sweep stopped"
    stopped = KeyboardInterrupt()
    stopped.advbayes_sweep = "sweep s1 stopped with 0 of 2 combination(s) finished; finish it with: ..."  # type: ignore[attr-defined]
    assert interruption_lines(stopped, ["sweep", "grid"]) == [f"Interrupted: {stopped.advbayes_sweep}"]  # type: ignore[attr-defined]


def test_the_command_that_finishes_a_sweep_repeats_the_options_it_ran_with() -> None:
    """Options at `advbayes sweep`'s own defaults are left out, the others repeated (quoted for a shell); the defaults
    the command leaves out are those the CLI has."""
    import shlex

    from advbayes.sweep.resume import OPTION_DEFAULTS, resume_command

    defaults = {f"--{p.name.replace('_', '-')}": p.default for p in cli.commands["sweep"].params}
    assert {option: defaults[option] for option in OPTION_DEFAULTS} == OPTION_DEFAULTS
    uri = "sqlite:////runs of x/mlflow.db"
    assert resume_command("s1", {"--tracking-uri": uri, **OPTION_DEFAULTS, "--workers": 2}) == (
        f"advbayes sweep --resume s1 --tracking-uri {shlex.quote(uri)} --workers 2"
    )
    changed = {"--gpus-per-run": 0.0, "--cpus-per-run": 0.5, "--device": "cpu", "--address": "10.0.0.1:6379"}
    assert shlex.split(resume_command("s1", changed))[4:] == [
        "--gpus-per-run", "0", "--cpus-per-run", "0.5", "--device", "cpu", "--address", "10.0.0.1:6379"
    ]  # fmt: skip


@pytest.fixture(scope="module")
def ray_stopped_after_the_module() -> Iterator[None]:
    yield
    import ray

    ray.shutdown()


@pytest.fixture
def warm_ray(ray_stopped_after_the_module: None) -> None:
    """A local Ray of 4 CPUs, started on first use as a notebook would and left running for this module's next
    sweeps, whose tasks find its workers warm (every new Ray's workers import torch and MLflow again, ~10 s of the 2
    cores per sweep). Its workers keep the environment it starts in, so the batched strategy is set here, and so is
    their niceness: Ray starts workers at nice 15, and beside two busy processes at nice 0 on the 2 cores each got
    about 4 % of a core: the sqlite sweep below took 118 and 205 s so, and 27 s at nice 0 (2026-12-07)."""
    import ray

    if not ray.is_initialized():
        with pytest.MonkeyPatch.context() as env:
            env.setenv("ADVBAYES_STRATEGY", "batched")
            env.setenv("RAY_worker_niceness", "0")
            ray.init(num_cpus=4, include_dashboard=False, object_store_memory=256 * 2**20, log_to_driver=False)


@pytest.fixture
def no_ray() -> None:
    """No Ray in this process: a warm one an earlier test left is stopped (the next `warm_ray` starts another)."""
    import ray

    ray.shutdown()


@pytest.mark.slow
def test_a_sweep_asking_for_a_gpu_no_node_has_starts_and_stops_its_own_ray_and_runs_nothing(
    isolated_cwd: Path, no_ray: None
) -> None:
    import ray

    code, out, err = sweep(["moons", "--grid", "seed=0,1", "--workers", "1", "--gpus-per-run", "1"])
    assert code == 2 and "--gpus-per-run 1: no node of the Ray cluster has 1 GPU(s)" in err, err
    assert out == "" and not ray.is_initialized()  # the Ray it started is stopped again


@pytest.mark.xdist_group("warm-ray")  # conftest.py deals these to one worker: one Ray for the four
@pytest.mark.slow
def test_the_ray_cluster_refuses_what_it_cannot_give_before_any_run(warm_ray: None) -> None:
    """On a real local Ray: a GPU request no node has, a CUDA device without a GPU, a store the workers miss."""
    from advbayes.sweep.runner import check_workers_reach, connect, task_resources

    assert connect(None, None, 1.0) is False  # a Ray this process runs already is used, and not the sweep's to stop
    with pytest.raises(SweepError, match=r"--gpus-per-run 1: no node of the Ray cluster has 1 GPU\(s\)"):
        task_resources(1.0, 1.0, "auto")
    with pytest.raises(SweepError, match="--device cuda: the tasks reserve no GPU"):
        task_resources(None, 1.0, "cuda")
    assert task_resources(None, 1.0, "auto") == (1.0, 0.0, "cpu")  # no GPU in the cluster: 0 per run, on CPU
    with pytest.raises(SweepError, match="the Ray workers cannot reach the tracking store sqlite:////nonexistent"):
        check_workers_reach("sqlite:////nonexistent/mlflow.db")


@pytest.mark.xdist_group("warm-ray")  # conftest.py deals these to one worker: one Ray for the four
@pytest.mark.slow
def test_four_concurrent_runs_on_the_sqlite_store_lose_nothing_and_resume_reruns_only_failures(
    isolated_cwd: Path, warm_ray: None
) -> None:
    """4 Ray workers write to one sqlite file at once: every run, metric and saved-view column arrives. The grid's
    lr=1e6 cells diverge, are listed as failed, and --resume reruns those alone, on the same warm Ray."""
    import ray

    check_four_runs_and_resume(isolated_cwd)
    code, _out, err = sweep(["moons", "--grid", "seed=0,1", "--workers", "2"])
    assert code == 2 and "--workers 2: this process's Ray is running already with 4 CPUs" in err
    assert ray.is_initialized()  # a Ray the sweep did not start is not stopped by it


def check_four_runs_and_resume(isolated_cwd: Path) -> None:
    grid = ["--grid", "seed=0,1", "--grid", "lr=0.01,1000000.0", "--set", "optimizer=sgd", "--set", "epochs=1"]
    code, out, err = sweep(["moons", *grid, "--workers", "4"])
    assert code == 1, err
    uri = f"sqlite:///{isolated_cwd / 'mlflow.db'}"
    sweep_id = sweep_id_of(out)
    runs = parent_runs(uri, "moons", sweep_id)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert sorted(int(r.data.tags["advbayes.seed"]) for r in finished) == [0, 1]
    for run in finished:
        assert {"none/accuracy/eps_0.0000", "train/loss"} <= set(run.data.metrics)
        assert run.data.tags[COMBINATION_TAG] == f"lr=0.01 seed={run.data.tags['advbayes.seed']}"
    assert err.count("] finished lr=0.01 seed=") == 2
    assert out.count("  FAILED lr=1000000.0 seed=") == 2 and "training diverged" in out
    assert f"finish it (stopped runs go on from their checkpoints): advbayes sweep --resume {sweep_id} " in out
    assert f" --tracking-uri {uri} --workers 4\n" in out  # the store and options it ran with
    before = {r.info.run_id: r.info.status for r in runs}
    assert sorted(before.values()) == ["FAILED"] * 2 + ["FINISHED"] * 2
    code, out, err = sweep(["--resume", sweep_id])  # on the same Ray, 4 CPUs
    assert code == 1 and "(2 had finished before --resume)" in out
    after = parent_runs(uri, "moons", sweep_id)
    new = [r for r in after if r.info.run_id not in before]
    assert len(new) == 2 and all(r.data.tags[COMBINATION_TAG].startswith("lr=1000000.0") for r in new)


@pytest.mark.xdist_group("warm-ray")  # conftest.py deals these to one worker: one Ray for the four
@pytest.mark.slow
@pytest.mark.server
def test_a_sweep_on_ray_workers_tracks_to_an_mlflow_server_over_postgresql(tmp_path: Path, warm_ray: None) -> None:
    """The team store: PostgreSQL, `mlflow server` over it with an artifact root, 4 runs from 4 Ray workers at once."""
    with postgres_server() as database:
        server, url = mlflow_server_process(database, tmp_path / "artifacts", tmp_path)
        try:
            code, out, err = sweep(
                ["moons", "--grid", "defense=standard,bnn", "--grid", "seed=0,1", "--set", "epochs=2"]
                + ["--workers", "4", "--tracking-uri", url]
            )
            assert code == 0, err
            runs = parent_runs(url, "moons", sweep_id_of(out))
            client = MlflowClient(url)
            assert sorted((r.data.tags["advbayes.defense"], r.data.tags["advbayes.seed"]) for r in runs) == [
                ("bnn", "0"), ("bnn", "1"), ("standard", "0"), ("standard", "1")
            ]  # fmt: skip
            for run in runs:
                assert run.info.status == "FINISHED"
                assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2]
                assert "none/accuracy/eps_0.0000" in run.data.metrics
                assert {"results.csv", "model"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
            assert len(list((tmp_path / "artifacts").rglob("results.csv"))) == 4  # through the server's root
            view = client.get_experiment_by_name("moons").tags["mlflow.sharedViewState.advbayes"]
            assert "metrics.`none/accuracy/eps_0.0000`" in view
        finally:
            stop(server)


@pytest.mark.parametrize("address", ["localhost:0", "localhost", "ray://127.0.0.1"])
def test_a_cluster_address_without_a_port_is_one_line_before_ray_starts(isolated_cwd: Path, address: str) -> None:
    started = time.monotonic()
    code, _out, err = sweep(["moons", "--grid", "seed=0,1", "--address", address])
    assert code == 2 and time.monotonic() - started < 20
    assert err.strip().splitlines() == [
        f"Error: --address {address}: expected HOST:PORT with a port from 1 to 65535, or 'auto'"
    ]


@pytest.mark.xdist_group("warm-ray")  # conftest.py deals these to one worker: one Ray for the four
@pytest.mark.slow  # a driver process joining the warm Ray, last of the group, its workers warm: ~8 s
def test_a_sigtermed_sweep_stops_its_runs_killed_and_says_how_to_finish_it(tmp_path: Path, warm_ray: None) -> None:
    """A scheduler's SIGTERM to the driver: Ray's own handler printed a stack and ended the process at once, the
    runs left RUNNING; the sweep now stops as on Ctrl-C (exit status 143), its task killed, its run KILLED, and the
    last line is the command that finishes it. The driver joins this module's warm Ray as a cluster (--address):
    its own local Ray would cost ~10 s more of the suite's time, and ray.init installs its handler either way."""
    import signal

    import ray

    address = ray.get_runtime_context().gcs_address
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = [sys.executable, "-m", "advbayes.cli", "sweep", "moons", "--grid", "seed=0", "--set", "defense=bnn"]
    command += ["--set", "epochs=100000", "--set", "until_converged=false", "--address", address, "--tracking-uri", uri]
    driver = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and driver.poll() is None:  # until the run has logged an epoch
            time.sleep(1)
            found = MlflowClient(uri).search_experiments() if (tmp_path / "mlflow.db").exists() else []
            runs = [r for e in found for r in MlflowClient(uri).search_runs([e.experiment_id])]
            if any("train/loss" in r.data.metrics for r in runs):
                break
        driver.send_signal(signal.SIGTERM)
        out, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 143, err
    (run,) = [r for r in parent_runs(uri, "moons", run_sweep_id(err)) if r.data.tags.get("advbayes.role") == "parent"]
    assert run.info.status == "KILLED" and run.data.tags["error"] == "KeyboardInterrupt: the sweep stopped"
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"Interrupted: sweep {run_sweep_id(err)} stopped with 0 of 1 combination(s) finished; "), err
    assert last.endswith(
        f"finish it with: advbayes sweep --resume {run_sweep_id(err)} --tracking-uri {uri} --address {address}"
    )
    assert "SIGTERM received" not in err  # Ray's handler did not take over


def run_sweep_id(err: str) -> str:
    """The sweep id in the driver's first `sweep ID: ...` line."""
    return next(line.split()[1].rstrip(":") for line in err.splitlines() if line.startswith("sweep "))
