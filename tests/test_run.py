"""The run engine and MLflow tracking, end to end on the built-ins, read back from the MLflow store."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from mlflow import MlflowClient

import advbayes
from advbayes.cli import cli
from advbayes.errors import RunError
from advbayes.hookspecs import hookimpl
from advbayes.plugins import PluginInfo, create_plugin_manager
from advbayes.registry import load_registry, tomllib
from helpers import InterruptAfterEpoch, TestComponents, write

FAST = {"epochs": 2, "dataset.train_size": 300, "dataset.test_size": 200}


def plugin_manager_with_test_components():
    pm = create_plugin_manager(entry_points=False)
    pm.register_plugin(TestComponents(), PluginInfo("test-components", "tests", "0", builtin=False))
    return pm


def children_of(client: MlflowClient, run) -> list:
    return client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'"
    )


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_quickstart_tracked_run_reads_back_from_mlflow(store: str) -> None:
    result = advbayes.run("moons", tracking_uri=store, **FAST)
    client = MlflowClient(store)
    parent = client.get_run(result.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["advbayes.dataset"] == "half-moons"
    assert parent.data.tags["advbayes.defense"] == "standard"
    assert parent.data.tags["advbayes.plugin.advbayes.builtins"] == advbayes.__version__
    assert parent.data.params["epochs"] == "2"
    assert parent.data.params["model.widths"] == "[32, 32]"
    assert parent.data.params["attacks.none.use"] == "none"
    loss_history = client.get_metric_history(result.run_id, "train/loss")
    assert [m.step for m in loss_history] == [1, 2]
    assert loss_history[1].value == pytest.approx(result.history[1]["loss"])
    children = children_of(client, parent)
    assert [c.info.run_name for c in children] == ["none"]
    child = children[0]
    assert child.info.status == "FINISHED"
    assert child.data.params["inference_samples"] == "1" and child.data.params["attack_samples"] == "1"
    assert child.data.metrics["accuracy/eps_0.0000"] == pytest.approx(result.table()["none"][0.0])
    assert parent.data.metrics["none/accuracy/eps_0.0000"] == pytest.approx(result.table()["none"][0.0])
    artifacts = artifact_paths(client, result.run_id)
    assert {
        "experiment.toml",
        "results.csv",
        "results.txt",
        "accuracy_vs_eps.png",
        "checkpoints/checkpoint.pt",
    } <= artifacts
    stored = client.download_artifacts(result.run_id, "experiment.toml")
    assert 'use = "half-moons"' in Path(stored).read_text()
    assert {"model/weights.pt", "model/entry.toml"} <= artifacts


def test_logged_model_reproduces_the_reported_accuracy(store: str) -> None:
    from advbayes.tracking import load_model

    result = advbayes.run("moons", tracking_uri=store, **FAST)
    model = load_model(result.run_id, store)
    dataset = load_registry().build("datasets", result.spec["dataset"])
    x, y = dataset.data("test").tensors
    with torch.no_grad():
        accuracy = (model(x, samples=1).softmax(-1).mean(0).argmax(-1) == y).float().mean().item()
    assert accuracy == pytest.approx(result.table()["none"][0.0])


def test_accuracy_metric_equals_an_independent_count() -> None:
    result = advbayes.run("moons", track=False, **FAST)
    dataset = load_registry().build("datasets", result.spec["dataset"])
    x, y = dataset.data("test").tensors
    with torch.no_grad():
        predictions = result.model(x, samples=1)[0].argmax(-1)
    # exactly the count over n, as a double: a float32 step would print 0.996 as 0.9959999918937683
    assert result.table()["none"][0.0] == int((predictions == y).sum()) / len(y)


def test_a_gradient_attacks_zero_gradient_share_is_kept_in_the_store(store: str) -> None:
    # what the zero-gradients check reads, so that a record shows whether an attack's gradient was masked
    result = advbayes.run("moons", tracking_uri=store, attacks=["none", "fgsm"], eps=[0.1], **FAST)
    shares = {r.attack_label: r.diagnostics.get("zero_grad_share") for r in result.records}
    assert shares["none"] is None and 0.0 <= shares["fgsm"] <= 1.0  # `none` has no gradient to report
    client = MlflowClient(store)
    children = {c.info.run_name: c.data.metrics for c in children_of(client, client.get_run(result.run_id))}
    assert children["fgsm"]["zero_grad_share/eps_0.1000"] == pytest.approx(shares["fgsm"])
    assert not any(key.startswith("zero_grad_share") for key in children["none"])
    parent = client.get_run(result.run_id).data.metrics
    assert parent["fgsm/zero_grad_share/eps_0.1000"] == pytest.approx(shares["fgsm"])


def test_same_seed_same_run_other_seed_other_run() -> None:
    first = advbayes.run("moons", track=False, **FAST)
    second = advbayes.run("moons", track=False, **FAST)
    other = advbayes.run("moons", track=False, seed=1, **FAST)
    assert [h["loss"] for h in first.history] == [h["loss"] for h in second.history]
    assert first.table() == second.table()
    for a, b in zip(first.model.parameters(), second.model.parameters()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(first.model.parameters(), other.model.parameters()))


def test_attack_at_every_eps_is_a_metric_per_eps_in_one_child_run(store: str) -> None:
    pm = plugin_manager_with_test_components()
    result = advbayes.run("moons", tracking_uri=store, pm=pm, attacks=["none", "shift"], eps=[0.0, 0.5, 2.0], **FAST)
    table = result.table()
    assert set(table) == {"none", "shift"}
    assert table["shift"][0.0] == table["none"][0.0]  # a zero shift is the clean input
    assert table["none"][0.5] == table["none"][0.0] == table["none"][2.0]  # `none` is measured once
    shift_records = [r for r in result.records if r.attack_label == "shift"]
    assert [r.max_linf for r in shift_records] == pytest.approx([0.0, 0.5, 2.0])
    assert [r.mean_l2 for r in shift_records] == pytest.approx([0.0, 0.5 * 2**0.5, 2.0 * 2**0.5], rel=1e-5)
    client = MlflowClient(store)
    children = {c.info.run_name: c for c in children_of(client, client.get_run(result.run_id))}
    assert set(children) == {"none", "shift"}
    shift = children["shift"].data.metrics
    for eps in (0.0, 0.5, 2.0):
        assert shift[f"accuracy/eps_{eps:.4f}"] == pytest.approx(table["shift"][eps])
        assert shift[f"max_linf/eps_{eps:.4f}"] == pytest.approx(eps)
    from advbayes.tracking.compare import compare_table

    header = compare_table(store, ["moons"], "accuracy").splitlines()[0].split()
    assert header.count("none") == 1 and "eps=0.5" in header  # `none` collapsed to one column, shift per eps
    series = client.get_metric_history(children["shift"].info.run_id, "accuracy")
    assert [m.value for m in sorted(series, key=lambda m: m.step)] == pytest.approx(
        [table["shift"][e] for e in (0.0, 0.5, 2.0)]
    )


def test_a_defense_that_raises_ends_the_run_failed_with_the_error_tag(store: str) -> None:
    pm = plugin_manager_with_test_components()
    with pytest.raises(RuntimeError, match="exploded"):
        advbayes.run("moons", tracking_uri=store, pm=pm, defense="failing")
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("moons").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: defense exploded on purpose"


def test_ctrl_c_ends_the_run_killed(store: str) -> None:
    pm = plugin_manager_with_test_components()
    with pytest.raises(KeyboardInterrupt):
        advbayes.run("moons", tracking_uri=store, pm=pm, defense={"use": "failing", "interrupt": True})
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("moons").experiment_id])
    assert run.info.status == "KILLED"


def test_ctrl_c_on_the_command_line_names_the_run_to_resume(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pm = plugin_manager_with_test_components()
    # the CLI's runs see the test defense (a dotted path: monkeypatch imports the module, whatever ran before)
    monkeypatch.setattr("advbayes.engine.lifecycle.get_plugin_manager", lambda: pm)
    result = CliRunner().invoke(
        cli, ["run", "moons", "--tracking-uri", store, "--set", 'defense={use="failing", interrupt=true}']
    )
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("moons").experiment_id])
    assert result.exit_code == 130
    # the defense interrupts its first batch: no checkpoint, so the message says how to start again, not resume
    assert f"tracked run {run.info.run_id} is marked KILLED before its first checkpoint, so there is nothing" in (
        result.output
    )
    assert "run it again: advbayes run moons --tracking-uri " in result.output and "--resume" not in result.output
    result = CliRunner().invoke(cli, ["run", "moons", "--no-track", "--set", 'defense={use="failing", interrupt=true}'])
    assert result.exit_code == 130 and "no tracked run was open" in result.output


def test_a_diverging_loss_stops_the_run_with_a_clear_error() -> None:
    pm = plugin_manager_with_test_components()
    with pytest.raises(RunError, match=r"training diverged: loss is nan at epoch 1, step 1"):
        advbayes.run("moons", track=False, pm=pm, defense="diverging")


def test_an_interrupted_experiment_of_several_runs_says_how_to_run_those_that_had_not_started(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seeds 0-1 x two defenses, stopped in the first run: the message names the run to resume and the commands that
    run the three others (seed 0's other defense, then seed 1 whole); those commands, as printed, and the resume
    leave each of the four (seed, defense) pairs FINISHED once."""
    import shlex

    pm = create_plugin_manager()
    pm.register(InterruptAfterEpoch(2, defense="bnn"), name="interrupt")
    monkeypatch.setattr("advbayes.engine.lifecycle.get_plugin_manager", lambda: pm)
    given = [
        "run",
        "moons",
        "--tracking-uri",
        store,
        "--set",
        "seeds=[0, 1]",
        "--set",
        'defenses=["bnn", "standard"]',
    ]
    given += ["--set", "epochs=3", "--set", "until_converged=false", "--set", "dataset.train_size=300"]
    result = CliRunner().invoke(cli, given)
    assert result.exit_code == 130, result.output
    client = MlflowClient(store)
    (killed,) = client.search_runs([client.get_experiment_by_name("moons").experiment_id])
    again = shlex.join(["advbayes", *given])
    assert result.output.splitlines()[-4:] == [
        f"Interrupted: tracked run {killed.info.run_id} is marked KILLED; resume it with --resume {killed.info.run_id}",
        "3 run(s) of the experiment had not started; run them with:",
        f"  {again} --set 'seeds=[0]' --set defense=standard",
        f"  {again} --set 'seeds=[1]'",
    ]
    monkeypatch.setattr("advbayes.engine.lifecycle.get_plugin_manager", create_plugin_manager)
    for line in result.output.splitlines()[-2:]:
        assert CliRunner().invoke(cli, shlex.split(line)[1:]).exit_code == 0
    assert CliRunner().invoke(cli, ["run", "--resume", killed.info.run_id, "--tracking-uri", store]).exit_code == 0
    parents = "tags.`advbayes.role` = 'parent'"
    runs = client.search_runs([client.get_experiment_by_name("moons").experiment_id], filter_string=parents)
    assert {r.info.status for r in runs} == {"FINISHED"}
    pairs = sorted((int(r.data.tags["advbayes.seed"]), r.data.tags["advbayes.defense"]) for r in runs)
    assert pairs == [(seed, defense) for seed in (0, 1) for defense in ("bnn", "standard")]


def test_resume_continues_bit_for_bit_like_an_uninterrupted_run(store: str) -> None:
    whole = advbayes.run("moons", tracking_uri=store, epochs=4, **{"dataset.train_size": 300})
    pm = create_plugin_manager()
    pm.register(InterruptAfterEpoch(2), name="interrupt")
    with pytest.raises(KeyboardInterrupt) as raised:
        advbayes.run("moons", tracking_uri=store, epochs=4, pm=pm, **{"dataset.train_size": 300})
    interrupted = raised.value.advbayes_run_id
    client = MlflowClient(store)
    assert client.get_run(interrupted).info.status == "KILLED"
    assert client.get_run(interrupted).data.tags["error"] == "KeyboardInterrupt"
    resumed = advbayes.run(tracking_uri=store, resume=interrupted)
    assert resumed.run_id == interrupted
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    for a, b in zip(whole.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    assert resumed.table() == whole.table()
    run = client.get_run(interrupted)
    assert run.info.status == "FINISHED" and "error" not in run.data.tags  # the interruption is over
    assert [m.step for m in client.get_metric_history(interrupted, "train/loss")] == [1, 2, 3, 4]


def test_a_bayesian_run_resumes_with_its_draws_where_they_stopped(store: str) -> None:
    """A stochastic model draws from its own generators: a checkpoint keeps them, so the resumed epochs see the
    draws an uninterrupted run sees (a new stream of draws, as resumes had before, gave other weights and accuracies)."""
    settings = {"defense": "bnn", "epochs": 4, "until_converged": False, "dataset.train_size": 300}
    whole = advbayes.run("moons", tracking_uri=store, **settings)
    pm = create_plugin_manager()
    pm.register(InterruptAfterEpoch(2), name="interrupt")
    with pytest.raises(KeyboardInterrupt) as raised:
        advbayes.run("moons", tracking_uri=store, pm=pm, **settings)
    resumed = advbayes.run(tracking_uri=store, resume=raised.value.advbayes_run_id)
    assert isinstance(whole, advbayes.RunResult) and isinstance(resumed, advbayes.RunResult)
    for a, b in zip(whole.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert resumed.table() == whole.table()


def test_resume_with_changed_settings_is_a_new_run_that_records_them(store: str) -> None:
    whole = advbayes.run("moons", tracking_uri=store, epochs=4, **{"dataset.train_size": 300})
    first = advbayes.run("moons", tracking_uri=store, epochs=2, **{"dataset.train_size": 300})
    resumed = advbayes.run(tracking_uri=store, resume=first.run_id, epochs=4)
    assert resumed.run_id != first.run_id
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    for a, b in zip(whole.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    client = MlflowClient(store)
    new = client.get_run(resumed.run_id)
    assert new.data.tags["advbayes.resumed_from"] == first.run_id
    assert new.data.params["epochs"] == "4"
    stored = tomllib.loads((Path(client.download_artifacts(resumed.run_id, "experiment.toml"))).read_text())
    assert stored["experiments"]["moons"]["epochs"] == 4
    old = client.get_run(first.run_id)  # the first run is left as it finished
    assert old.info.status == "FINISHED" and old.data.params["epochs"] == "2"
    assert [m.step for m in client.get_metric_history(first.run_id, "train/loss")] == [1, 2]
    # the new run carries the first run's epochs, so its training curves are whole: those of the run never stopped
    for key in ("train/loss", "train/acc"):
        carried = [(m.step, m.value) for m in client.get_metric_history(resumed.run_id, key)]
        assert carried == [(m.step, m.value) for m in client.get_metric_history(whole.run_id, key)]
        assert carried[:2] == [(m.step, m.value) for m in client.get_metric_history(first.run_id, key)]


def test_resuming_a_finished_run_unchanged_is_refused_and_leaves_it_finished(store: str) -> None:
    first = advbayes.run("moons", tracking_uri=store, epochs=1)
    with pytest.raises(RunError, match=r"the run FINISHED; there is nothing to resume"):
        advbayes.run(tracking_uri=store, resume=first.run_id)
    client = MlflowClient(store)
    assert client.get_run(first.run_id).info.status == "FINISHED"
    experiment = client.get_experiment_by_name("moons").experiment_id
    assert len(client.search_runs([experiment], filter_string="tags.`advbayes.role` = 'parent'")) == 1


def test_resume_errors(isolated_cwd: Path, store: str) -> None:
    with pytest.raises(RunError, match="--resume needs tracking"):
        advbayes.run(resume="abc", track=False)
    with pytest.raises(RunError, match=r"no tracking store .*mlflow.db \(nothing was tracked here\)"):
        advbayes.run(resume="0123456789abcdef")
    assert not (isolated_cwd / "mlflow.db").exists()  # a failed resume leaves no store behind
    advbayes.run("moons", tracking_uri=store, epochs=0)
    with pytest.raises(RunError, match="no such run"):
        advbayes.run(resume="0123456789abcdef", tracking_uri=store)


def test_a_run_leaves_mlflow_global_tracking_state_as_it_was(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    advbayes.run("moons", tracking_uri=store, epochs=1)
    assert "MLFLOW_TRACKING_URI" not in os.environ
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    advbayes.run("moons", epochs=1)
    assert os.environ["MLFLOW_TRACKING_URI"] == store


def test_no_track_writes_no_store(isolated_cwd: Path) -> None:
    result = CliRunner().invoke(cli, ["run", "moons", "--no-track", "--set", "epochs=1"])
    assert result.exit_code == 0, result.output
    assert "none" in result.output and "eps=0" in result.output
    assert not (isolated_cwd / "mlflow.db").exists()


def test_cli_run_uses_the_embedded_store_in_the_working_directory_and_compare_reads_it(isolated_cwd: Path) -> None:
    runner = CliRunner()
    created = f"advbayes: created the MLflow store {isolated_cwd / 'mlflow.db'} ("
    for first in (True, False):
        result = runner.invoke(cli, ["run", "moons", "--set", "epochs=1"])
        assert result.exit_code == 0, result.output
        assert (created in result.output) == first  # said once, when the store appears
    assert (isolated_cwd / "mlflow.db").exists()
    compared = runner.invoke(cli, ["compare", "moons"])
    assert compared.exit_code == 0, compared.output
    lines = compared.output.strip().splitlines()
    assert "none eps=0" in lines[0]
    assert len(lines) == 4 and all("FINISHED" in line for line in lines[2:])
    missing = runner.invoke(cli, ["compare", "nothing-here"])
    assert missing.exit_code == 2 and "no tracked runs of experiment 'nothing-here'" in missing.output


def test_dry_run_checks_everything_prints_what_would_run_and_writes_nothing(isolated_cwd: Path) -> None:
    result = CliRunner().invoke(cli, ["run", "moons", "--dry-run", "--set", "seeds=[0, 1]", "--set", "epochs=3"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "experiment moons on cpu: 2 run(s), each checked"
    assert lines[1].startswith("  1. defense standard, model mlp-small, data half-moons, seed 0, 3 epochs x batch ")
    assert lines[3].startswith("  2. defense standard, model mlp-small, data half-moons, seed 1, 3 epochs")
    assert lines[-2] == f"tracking: sqlite:///{isolated_cwd / 'mlflow.db'} (would be created)"
    assert lines[-1] == "nothing was run (--dry-run)"
    assert list(isolated_cwd.iterdir()) == []
    refused = CliRunner().invoke(cli, ["run", "moons", "--dry-run", "--set", "model=mnist-cnn"])
    assert refused.exit_code == 2 and "model 'mnist-cnn' with defense 'standard'" in refused.output  # checks ran


def test_an_experiment_of_a_plugin_left_out_names_the_plugin(
    isolated_cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADVBAYES_DISABLE_PLUGINS", "advbayes-d3")
    result = CliRunner().invoke(cli, ["run", "d3-mnist-5k", "--dry-run"])
    assert result.exit_code == 2
    assert result.output == (
        "Error: unknown experiment 'd3-mnist-5k'; the installed plugin 'advbayes-d3' has it, but "
        "ADVBAYES_DISABLE_PLUGINS leaves that plugin out\n"
    )


def test_device_cuda_without_a_gpu_is_an_error_before_any_work(isolated_cwd: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    result = CliRunner().invoke(cli, ["run", "moons", "--device", "cuda"])
    assert result.exit_code == 2
    assert "no CUDA device is available" in result.output
    assert not (isolated_cwd / "mlflow.db").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_quickstart_on_cuda(store: str) -> None:
    result = advbayes.run("moons", tracking_uri=store, device="cuda", **FAST)
    assert result.device.startswith("cuda") and result.table()["none"][0.0] > 0.9
    tags = MlflowClient(store).get_run(result.run_id).data.tags  # the GPU its floats came from
    assert tags["advbayes.gpu"] == torch.cuda.get_device_name(torch.device(result.device))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_bayesian_run_on_cuda_resumes_with_its_draws_where_they_stopped(store: str) -> None:
    """The draw generators a checkpoint keeps are CUDA generators here (draw_state.py)."""
    settings = {"defense": "bnn", "epochs": 4, "until_converged": False, "dataset.train_size": 300, "device": "cuda"}
    whole = advbayes.run("moons", tracking_uri=store, **settings)
    pm = create_plugin_manager()
    pm.register(InterruptAfterEpoch(2), name="interrupt")
    with pytest.raises(KeyboardInterrupt) as raised:
        advbayes.run("moons", tracking_uri=store, pm=pm, **settings)
    resumed = advbayes.run(tracking_uri=store, resume=raised.value.advbayes_run_id, device="cuda")
    assert isinstance(whole, advbayes.RunResult) and isinstance(resumed, advbayes.RunResult)
    for a, b in zip(whole.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # cuBLAS may sum in another order; other draws: far


def test_user_experiment_file_runs_through_the_cli(isolated_cwd: Path) -> None:
    user = write(
        isolated_cwd / "mine.toml",
        '[experiments.mine]\ndataset = { use = "half-moons", train_size = 100, test_size = 50 }\nmodel = "mlp"\nepochs = 1\n',
    )
    result = CliRunner().invoke(cli, ["run", "mine", "--registry", str(user), "--no-track"])
    assert result.exit_code == 0, result.output


def test_api_example_script_runs_and_reads_back(store: str) -> None:
    import subprocess
    import sys

    script = Path(__file__).parents[1] / "examples" / "api_quickstart.py"
    done = subprocess.run(
        [sys.executable, str(script), "--experiment", "moons", "--tracking-uri", store, "--epochs", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "parent run" in done.stdout and "FINISHED" in done.stdout
    assert "child run none: {" in done.stdout and "accuracy/eps_0.0000" in done.stdout
    assert "results.csv" in done.stdout


def test_an_experiment_with_several_defenses_tracks_one_run_per_defense(store: str) -> None:
    from advbayes.results import RunGroup

    group = advbayes.run(
        "moons",
        tracking_uri=store,
        defense=None,
        defenses=["standard", {"use": "standard", "name": "two-draws", "train_samples": 2}],
        **FAST,
    )
    assert isinstance(group, RunGroup)
    assert [r.spec["defense"]["name"] for r in group.results] == ["standard", "two-draws"]
    assert [r.history[0]["loss"] for r in group.results][0] == pytest.approx(group.results[1].history[0]["loss"])
    client = MlflowClient(store)
    runs = {
        r.info.run_name: r
        for r in client.search_runs(
            [client.get_experiment_by_name("moons").experiment_id], filter_string="tags.`advbayes.role` = 'parent'"
        )
    }
    assert set(runs) == {"standard", "two-draws"} and all(r.info.status == "FINISHED" for r in runs.values())
    assert set(group.run_ids) == {r.info.run_id for r in runs.values()}
    assert "== two-draws ==" in group.format()
    assert set(group.table()) == {"standard", "two-draws"}


def test_defense_and_defenses_together_in_an_entry_are_an_error_and_an_override_of_one_replaces_the_other(
    tmp_path: Path,
) -> None:
    both = write(tmp_path / "both.toml", '[experiments.both]\nextends = "moons"\ndefenses = ["standard"]\n')
    with pytest.raises(
        advbayes.RegistryError, match=r"key 'defenses': expected either `defense` or `defenses`, not both"
    ):
        load_registry([both]).resolve_experiment("both")
    registry = load_registry()
    spec = registry.resolve_experiment("moons", [("defenses", ["standard", "bnn"])])
    assert "defense" not in spec and [d["name"] for d in spec["defenses"]] == ["standard", "bnn"]
    back = registry.with_overrides(spec, [("defense", "bnn")], source="--set")
    assert back["defense"]["name"] == "bnn" and not back.get("defenses")


def test_sample_sweeps_become_one_child_run_per_combination(store: str) -> None:
    result = advbayes.run(
        "moons", tracking_uri=store, pm=create_plugin_manager(), attack_samples=[1, 3], inference_samples=[2, 5]
    )
    combos = {(r.attack_label, r.attack_samples, r.inference_samples, r.entry) for r in result.records}
    assert combos == {(f"none:sa{a}:si{i}", a, i, "none") for a in (1, 3) for i in (2, 5)}
    client = MlflowClient(store)
    (parent,) = client.search_runs(
        [client.get_experiment_by_name("moons").experiment_id], filter_string="tags.`advbayes.role` = 'parent'"
    )
    children = {c.info.run_name: c.data.params for c in children_of(client, parent)}
    assert children["none:sa3:si5"]["attack_samples"] == "3"
    assert children["none:sa3:si5"]["inference_samples"] == "5"
    assert len(children) == 4


def test_a_tampered_logged_model_runs_no_code(store: str, tmp_path: Path) -> None:
    from advbayes.tracking import load_model

    result = advbayes.run("moons", tracking_uri=store, **FAST)
    marker = tmp_path / "marker"
    torch.save({"payload": _WritesMarker(marker)}, tmp_path / "weights.pt")
    MlflowClient(store).log_artifact(result.run_id, str(tmp_path / "weights.pt"), "model")
    with pytest.raises(RunError, match=r"its model is not one advbayes wrote"):
        load_model(result.run_id, store)
    assert not marker.exists()


class _WritesMarker:
    """A tampered checkpoint's payload: unpickling it would write a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_a_tampered_checkpoint_runs_no_code_on_resume(store: str, tmp_path: Path) -> None:
    first = advbayes.run("moons", tracking_uri=store, epochs=1, **{"dataset.train_size": 200})
    marker = tmp_path / "marker"
    tampered = tmp_path / "checkpoint.pt"
    torch.save({"experiment": "moons", "payload": _WritesMarker(marker)}, tampered)
    MlflowClient(store).log_artifact(first.run_id, str(tampered), "checkpoints")  # replaces the real one
    with pytest.raises(RunError, match=r"--resume .*: the checkpoint is not one advbayes wrote"):
        advbayes.run(tracking_uri=store, resume=first.run_id, epochs=2)
    assert not marker.exists()
    torch.load(tampered, weights_only=False)  # the payload is live: an unrestricted load runs it
    assert marker.read_text() == "code ran"


@pytest.mark.slow
@pytest.mark.usefixtures("batched_draws")  # four processes end to end: no timing race per model
def test_four_runs_started_at_once_in_a_fresh_directory_all_finish(isolated_cwd: Path) -> None:
    """The embedded store is created and migrated once, under a file lock; the others wait for it."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "advbayes.cli", "run", "moons", "--set", "epochs=1"]
    processes = [
        subprocess.Popen(command, cwd=isolated_cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0], outputs
    client = MlflowClient(f"sqlite:///{isolated_cwd / 'mlflow.db'}")
    runs = client.search_runs(
        [client.get_experiment_by_name("moons").experiment_id], filter_string="tags.`advbayes.role` = 'parent'"
    )
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    tags = client.get_experiment_by_name("moons").tags  # four runs tagging one new experiment at once
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert "metrics.`none/accuracy/eps_0.0000`" in tags["mlflow.sharedViewState.advbayes"]
    assert all("none/accuracy/eps_0.0000" in r.data.metrics for r in runs)


def test_a_failed_start_leaves_no_run_marked_running(isolated_cwd: Path) -> None:
    (isolated_cwd / "mlartifacts").write_text("a file where the artifact folder belongs")
    result = CliRunner().invoke(cli, ["run", "moons", "--set", "epochs=1"])
    assert result.exit_code != 0
    client = MlflowClient(f"sqlite:///{isolated_cwd / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs and all(r.info.status == "FAILED" for r in runs)


class InterruptAfterAttacks:
    """A plugin that presses Ctrl-C once `count` attacks' evaluations are checkpointed."""

    def __init__(self, count: int) -> None:
        self.count = count

    @hookimpl(trylast=True)  # after the tracking plugin has uploaded the checkpoint
    def checkpoint_saved(self, run, checkpoint) -> None:
        evaluated = torch.load(checkpoint, weights_only=True).get("evaluated", [])
        if len(evaluated) == self.count:
            raise KeyboardInterrupt


def test_a_run_resumed_with_other_attacks_and_interrupted_resumes_with_its_own_attacks(store: str) -> None:
    """Its checkpoints hold its own settings, not those of the run it started from (whose attacks were only
    "none": resumed again, it went back to them and dropped the attacks it was started for)."""
    first = advbayes.run("moons", tracking_uri=store, epochs=1, attacks=["none"], **{"dataset.test_size": 100})
    attacks = {"attacks": ["none", "fgsm", "pgd-20"], "eps": [0.1]}
    whole = advbayes.run(tracking_uri=store, resume=first.run_id, **attacks)
    pm = create_plugin_manager()
    pm.register(InterruptAfterAttacks(2), name="interrupt")
    with pytest.raises(KeyboardInterrupt) as raised:
        advbayes.run(tracking_uri=store, resume=first.run_id, pm=pm, **attacks)
    resumed = advbayes.run(tracking_uri=store, resume=raised.value.advbayes_run_id)
    assert isinstance(resumed, advbayes.RunResult)
    assert [a["name"] for a in resumed.spec["attacks"]] == attacks["attacks"]
    assert resumed.table() == whole.table() and set(resumed.table()) == {"none", "fgsm", "pgd-20"}


def test_a_run_interrupted_during_evaluation_resumes_without_rerunning_or_duplicating_attacks(store: str) -> None:
    settings = {"epochs": 1, "attacks": ["none", "fgsm", "pgd-20"], "eps": [0.1], "dataset.test_size": 100}
    whole = advbayes.run("moons", tracking_uri=store, **settings)
    pm = create_plugin_manager()
    pm.register(InterruptAfterAttacks(2), name="interrupt")
    with pytest.raises(KeyboardInterrupt) as raised:
        advbayes.run("moons", tracking_uri=store, pm=pm, **settings)
    interrupted = raised.value.advbayes_run_id
    assert [r.attack_label for r in raised.value.advbayes_records] == ["none", "fgsm"]  # what finished is kept
    evaluated: list[str] = []
    counting = create_plugin_manager()

    class Count:
        @hookimpl
        def evaluation_finished(self, run, attack, records, figures) -> None:
            evaluated.append(attack)

    counting.register(Count(), name="count")
    resumed = advbayes.run(tracking_uri=store, pm=counting, resume=interrupted)
    assert evaluated == ["pgd-20"]  # the finished attacks are not run again
    assert resumed.table() == whole.table()  # and the rest continues bit for bit
    client = MlflowClient(store)
    children = children_of(client, client.get_run(interrupted))
    assert sorted(c.data.tags["advbayes.attack"] for c in children) == ["fgsm", "none", "pgd-20"]  # one each
    assert client.get_run(interrupted).info.status == "FINISHED"


def test_ctrl_c_without_tracking_prints_the_attacks_that_finished(monkeypatch: pytest.MonkeyPatch) -> None:
    pm = create_plugin_manager()
    pm.register(InterruptAfterAttacks(1), name="interrupt")
    monkeypatch.setattr("advbayes.engine.lifecycle.get_plugin_manager", lambda: pm)
    result = CliRunner().invoke(
        cli, ["run", "moons", "--no-track", "--set", "epochs=0", "--set", 'attacks=["none", "fgsm"]']
    )
    assert result.exit_code == 130
    table, message = result.output.split("Interrupted: ")
    assert "accuracy" in table and "none" in table and "fgsm" not in table
    assert message.startswith("no tracked run was open")


def test_progress_names_the_defense_and_eps_and_keeps_the_postfix_short(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import advbayes.progress
    from advbayes.engine.training import short_postfix

    monkeypatch.setattr(advbayes.progress, "on_terminal", lambda: True)  # bars as a terminal shows them

    sums = {
        "loss": torch.tensor(20.0),
        "ce": torch.tensor(18.0),
        "kl_per_param": torch.tensor(3.0),
        "acc": torch.tensor(5.0),
    }
    assert short_postfix(sums, 10, 2345.6) == "loss 2, acc 0.500, 2346 img/s"
    advbayes.run(
        "moons", track=False, progress=True, pm=create_plugin_manager(), epochs=1, attacks=["fgsm"], eps=[0.1, 0.2]
    )
    bars = capsys.readouterr().err
    assert "moons/standard seed 0 epoch 1/1" in bars
    assert "moons/standard seed 0 fgsm eps 0.1" in bars and "moons/standard seed 0 fgsm eps 0.2" in bars
    assert " img/s]" in bars and "ce=" not in bars


def test_without_a_terminal_every_epoch_line_of_a_multi_defense_run_names_its_defense(
    capsys: pytest.CaptureFixture[str],
) -> None:
    advbayes.run(
        "moons", track=False, pm=create_plugin_manager(), epochs=2, defenses=["standard", "bnn"], attacks=["none"]
    )
    lines = [line for line in capsys.readouterr().err.splitlines() if " epoch " in line]
    assert [line.split(":")[0] for line in lines] == [
        "moons/standard seed 0 epoch 1/2",
        "moons/standard seed 0 epoch 2/2",
        "moons/bnn seed 0 epoch 1/2",
        "moons/bnn seed 0 epoch 2/2",
    ]


def test_params_record_what_ran_not_an_attack_entrys_replaced_eps() -> None:
    from advbayes.tracking import run_params

    spec = load_registry().resolve_experiment("quickstart")
    assert spec["attacks"][1]["eps"] == 0.3 and spec["eps"] == [0.0, 0.1, 0.2, 0.3]  # fgsm's own eps is unused
    params = run_params(spec)
    assert params["eps"] == "[0.0, 0.1, 0.2, 0.3]" and "attacks.pgd-20.steps" in params
    assert not [k for k in params if k.startswith("attacks.") and k.endswith(".eps")]
    kept = run_params({**spec, "eps": []})  # without an eps list the entry's eps is what runs, and is logged
    assert kept["attacks.fgsm.eps"] == "0.3"
