"""`advbayes bench --resume`: an interrupted bench continues from its runs (finished ones read back from their
checkpoints, the interrupted one resumed), and its card equals that of a bench that was never interrupted."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from advbayes import hookimpl
from advbayes.cli import cli
from advbayes.errors import RunError
from advbayes.lab.bench import bench
from advbayes.lab.bench_steps import ID_TAG, SECONDS_TAG, STEP_TAG, BenchSteps, bench_key
from advbayes.lab.protocol import PROTOCOLS, registry_changes
from advbayes.plugins import get_plugin_manager
from advbayes.registry import load_registry
from helpers import SMALL_ATTACKS

SETTINGS = [("epochs", 2), ("dataset.n_test", 48)]  # a small bench of a stochastic defense, with its twin
REGISTRY = [SMALL_ATTACKS]  # its attacks at small budgets: what is resumed here is the bench, not their strength


def small_bench_key() -> str:
    """The key of the bench below: its entry and settings, and the protocol's attacks as REGISTRY changes them."""
    protocol = PROTOCOLS["digits"]
    return bench_key("bnn", protocol, SETTINGS, registry_changes(protocol, load_registry(REGISTRY)))


class InterruptLinf:
    """Ctrl-C after the first attack of a Linf evaluation: that attack is checkpointed, the others are not run."""

    fired = False

    @hookimpl
    def evaluation_finished(self, run: Any, attack_label: str) -> None:
        if not self.fired and run.tags.get(STEP_TAG, "").endswith("/Linf") and attack_label != "none":
            self.fired = True
            raise KeyboardInterrupt


def small_bench(store: str, out: Path, **kwargs: Any) -> dict[str, Any]:
    return bench(
        "bnn", dataset="digits", seeds=[0], overrides=SETTINGS, registry=REGISTRY, tracking_uri=store, out=out, **kwargs
    )


def runs_of(store: str) -> list[Any]:
    client = MlflowClient(store)
    return client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.`advbayes.role` = 'parent'")


@pytest.fixture
def interrupted(tmp_path: Path) -> tuple[str, Path]:
    """A store holding a bench stopped by Ctrl-C in its Linf attacks (train and twin finished, L2 never started),
    on the command line, which says how to go on."""
    folder = tmp_path / "interrupted"
    folder.mkdir()
    store = f"sqlite:///{folder / 'mlflow.db'}"
    args = ["bench", "bnn", "--dataset", "digits", "--seeds", "0", "--set", "epochs=2", "--set", "dataset.n_test=48"]
    args += ["--registry", str(SMALL_ATTACKS), "--tracking-uri", store, "--out", str(folder / "cards")]
    pm = get_plugin_manager()
    pm.register(InterruptLinf(), name="test-interrupt-linf")
    try:
        result = CliRunner().invoke(cli, args)
    finally:
        pm.unregister(name="test-interrupt-linf")
    assert result.exit_code == 130, result.output
    hint = "Interrupted: the bench's finished runs and checkpoints are kept; go on: "
    assert f"{hint}advbayes {shlex.join(args)} --resume" in result.stderr
    return store, folder


@pytest.mark.slow
def test_a_resumed_bench_reads_back_what_finished_resumes_what_stopped_and_gives_the_uninterrupted_card(
    interrupted: tuple[str, Path], tmp_path: Path
) -> None:
    store, folder = interrupted
    before = {r.data.tags[STEP_TAG]: r for r in runs_of(store)}
    assert {step: r.info.status for step, r in before.items()} == {
        "0/train": "FINISHED", "0/twin": "FINISHED", "0/Linf": "KILLED"
    }  # fmt: skip
    assert float(before["0/Linf"].data.tags[SECONDS_TAG]) > 0  # Ctrl-C: the time it ran is kept for the card
    said: list[str] = []
    protocol = PROTOCOLS["digits"]
    assert small_bench_key() != bench_key("bnn", protocol, SETTINGS)  # a bench with the shipped attacks is another
    BenchSteps(protocol.experiment, small_bench_key(), "bnn", store, said.append).start_new()
    assert said == [
        f"bench bnn: an earlier bench of these settings stopped before its card (run {before['0/Linf'].info.run_id}, "
        "step 0/Linf, KILLED); --resume continues it. This one starts over."
    ]  # what a bench without --resume says first
    said.clear()
    card = small_bench(store, folder / "cards", resume=True, say=said.append)
    seeds = card["runs"]["seeds"]["0"]
    assert [seeds[s] for s in ("train", "twin", "Linf")] == [
        before[f"0/{s}"].info.run_id for s in ("train", "twin", "Linf")
    ]
    assert f"bench bnn: seed 0: train: run {seeds['train']} finished earlier: read back" in said
    assert f"bench bnn: seed 0: Linf: resuming run {seeds['Linf']} (KILLED)" in said
    after = runs_of(store)
    assert {r.info.status for r in after} == {"FINISHED"} and len(after) == 4  # one new run: L2
    assert len({r.data.tags[ID_TAG] for r in after}) == 1  # the new run belongs to the same bench
    assert card["seconds"] >= sum(float(r.data.tags[SECONDS_TAG]) for r in after) > 0
    # the same bench, never interrupted, in a store of its own: every number of the card is the same
    reference = small_bench(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "cards")
    for part in ("clean", "threat_models", "checks", "stochastic", "defense", "deviations"):
        assert card[part] == reference[part], part
    assert not card["conforms"]
    assert f"{SMALL_ATTACKS} changes the protocol's attack 'autoattack-rand'" in card["deviations"]
    assert not [d for d in card["deviations"] if d.endswith("'autoattack'")]  # a stochastic network's bench ran none


@pytest.fixture
def recorded(tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A store holding the runs of a bench as --resume finds them (its tags: key, id, step, this code), and
    nothing else: what --resume checks before any work needs no trained network."""
    from advbayes.lab.bench_steps import KEY_TAG
    from advbayes.tracking.runs import provenance

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, protocol = MlflowClient(store), PROTOCOLS["digits"]
    experiment = client.create_experiment(protocol.experiment)
    tags = {KEY_TAG: small_bench_key(), ID_TAG: "0123456789ab", **provenance()}
    ids = {}
    for step in ("0/train", "0/twin"):
        ids[step] = client.create_run(experiment, tags={**tags, STEP_TAG: step}).info.run_id
        client.set_terminated(ids[step])
    return store, ids


def test_resume_refuses_runs_made_by_other_code_before_any_work(
    recorded: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    store, ids = recorded
    client = MlflowClient(store)
    client.set_tag(ids["0/twin"], "advbayes.git_commit", "0" * 40)
    with pytest.raises(
        RunError, match=f"--resume: run {ids['0/twin']} \\(step 0/twin\\) has advbayes.git_commit='0000"
    ):
        small_bench(store, tmp_path / "cards", resume=True)
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert len(client.search_runs(experiments)) == 2  # nothing started


def test_resume_with_nothing_to_continue_is_one_line_naming_the_store(isolated_cwd: Path) -> None:
    result = CliRunner().invoke(cli, ["bench", "standard", "--dataset", "digits", "--resume"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: --resume: no earlier bench of standard with these settings")
    assert "run it without --resume" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    both = CliRunner().invoke(cli, ["bench", "standard", "--dataset", "digits", "--resume", "--estimate"])
    assert both.exit_code == 2 and "--resume continues a bench, and --estimate runs none" in both.stderr


def test_resume_says_when_uncommitted_changes_cannot_be_compared(
    recorded: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import advbayes.tracking.runs as tracking_runs

    store, ids = recorded
    for run_id in ids.values():
        MlflowClient(store).set_tag(run_id, "advbayes.git_dirty", "true")
    real = tracking_runs.provenance
    monkeypatch.setattr(tracking_runs, "provenance", lambda where=None: {**real(where), "advbayes.git_dirty": "true"})
    protocol, said = PROTOCOLS["digits"], []
    steps = BenchSteps(protocol.experiment, small_bench_key(), "bnn", store, said.append)
    steps.continue_earlier()
    assert len(said) == 1 and "was made by a checkout with uncommitted changes, as this one is" in said[0]
    assert steps.bench_id == "0123456789ab" and set(steps.earlier) == {"0/train", "0/twin"}
