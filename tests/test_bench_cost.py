"""`advbayes bench ENTRY --estimate`: a bench's time projected from one measured epoch and timed attacks."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
from click.testing import CliRunner

from advbayes.cli import cli
from advbayes.lab.cost import AttackCost, CostEstimate, estimate_bench
from advbayes.lab.protocol import PROTOCOLS
from advbayes.testing import assert_one_clear_error


def test_the_projection_is_the_measured_times_scaled_to_the_protocol(isolated_cwd: Path) -> None:
    protocol = PROTOCOLS["digits"]
    lines: list[str] = []
    cost = estimate_bench(
        "bnn", dataset="digits", examples=8, seeds=[0, 1], device="cpu", train_epochs=2, say=lines.append
    )
    assert cost.stochastic and cost.seeds == 2 and cost.epochs == 300  # the bench experiment's cap
    assert cost.trained_epochs == 2 and 0 <= cost.clean_accuracy <= 1
    expected = [
        (t.name, a["name"]) for t in protocol.threat_models for a in protocol.attacks(t, stochastic=True, twin_run="x")
    ]
    assert [(a.threat, a.name) for a in cost.attacks] == expected  # every attack the bench runs, twin's transfer too
    for a in cost.attacks:  # the full test split at every radius of its threat model
        radii = len(protocol.threat_model(a.threat).radii)
        assert a.seconds_per_seed == pytest.approx(a.seconds_per_example * protocol.test_examples * radii)
        assert a.seconds_per_example > 0
    assert cost.defense_epoch > 0 and cost.twin_epoch > 0
    per_seed = 300 * (cost.defense_epoch + cost.twin_epoch) + sum(a.seconds_per_seed for a in cost.attacks)
    assert cost.total_seconds == pytest.approx(2 * per_seed)
    assert f"{cost.total_seconds / 3600:.2f} h for 2 seeds" in cost.lines()[-1]
    assert any("timing autoattack-rand-linf" in line for line in lines)  # what it is doing while it measures
    assert not (isolated_cwd / "mlflow.db").exists()  # nothing tracked


def test_estimate_on_the_command_line_writes_no_card_and_respects_a_changed_cap(isolated_cwd: Path) -> None:
    args = ["bench", "standard", "--dataset", "digits", "--estimate", "--examples", "4", "--set", "epochs=7"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "x 7 epochs" in result.stdout and "deterministic" in result.stdout and "clean accuracy" in result.stdout
    assert "autoattack-linf" in result.stdout and "transfer" not in result.stdout  # standard is its own twin
    assert not (isolated_cwd / "cards").exists() and not (isolated_cwd / "mlflow.db").exists()


def test_a_timed_network_that_gets_most_examples_wrong_is_a_warning_that_its_times_are_low() -> None:
    """Attacks skip what a network gets wrong: timed on such a network, the projection is a lower bound."""
    attack = AttackCost("Linf", "autoattack-linf", 0.0002, 0.4)
    cost = CostEstimate("adversarial-training", "mnist-5k", 1, "cpu", False, 64, 1, 0.1, 100, 12.0, 1.3, (attack,), 3)
    lines = cost.lines()
    assert "clean accuracy 0.100" in lines[1] and "90% of the timed examples wrong" in lines[-2]
    assert "--train-epochs" in lines[-2]
    assert not any(line.startswith("warning") for line in attrs.evolve(cost, clean_accuracy=0.9).lines())


def test_bad_estimate_input_is_one_line_before_any_work() -> None:
    assert_one_clear_error(lambda: estimate_bench("bnn", dataset="digits", examples=361), "--examples", "1 to 360")
    assert_one_clear_error(lambda: estimate_bench("bnnn", dataset="digits"), "ENTRY 'bnnn'", "did you mean 'bnn'")
    assert_one_clear_error(lambda: estimate_bench("bnn", dataset="digits", train_epochs=0), "--train-epochs", "got 0")
