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
    for a in cost.attacks:  # the full test split at both radii of its threat model (digits has two)
        assert a.radii == 2 and a.test_examples == protocol.test_examples
        exact = (a.at_smallest + a.at_largest) * protocol.test_examples
        assert a.seconds_per_seed == pytest.approx((exact, exact))
        assert a.at_smallest > 0 and a.at_largest > 0
    assert cost.defense_epoch > 0 and cost.twin_epoch > 0
    per_seed = 300 * (cost.defense_epoch + cost.twin_epoch) + sum(a.seconds_per_seed[0] for a in cost.attacks)
    assert cost.total_seconds == pytest.approx((2 * per_seed, 2 * per_seed))
    assert f"{2 * per_seed / 3600:.2f} h for 2 seeds" in cost.lines()[-1]
    for radius in (0.05, 0.1):  # what it is doing while it measures: both radii of L_inf
        assert f"estimate bnn: timing autoattack-rand-linf at eps {radius:g} on 8 examples" in lines
    assert not (isolated_cwd / "mlflow.db").exists()  # nothing tracked


def test_a_radius_between_the_measured_two_is_projected_as_a_range_between_their_times() -> None:
    """mnist-5k's three radii: the middle one costs at least the faster and at most the slower measured radius."""
    attack = AttackCost("Linf", "autoattack-linf", at_smallest=7.5, at_largest=0.25, radii=3, test_examples=1000)
    assert attack.seconds_per_seed == pytest.approx((1000 * (7.5 + 0.25 + 0.25), 1000 * (7.5 + 0.25 + 7.5)))
    assert AttackCost("L2", "x", 1.0, 1.0, 1, 10).seconds_per_seed == (10.0, 10.0)  # one radius, measured once
    cost = CostEstimate("standard", "mnist-5k", 1, "cpu", False, 32, 5, 0.9, 100, 6.0, 0.0, (attack,), 3)
    assert cost.lines()[3].endswith(
        "7.5000 s/example at the smallest radius, 0.2500 at the largest -> 133.3-254.2 min per seed"
    )
    assert cost.lines()[-1] == (
        "projected card: 143.3-264.2 min per seed (10.0 training, 133.3-254.2 attacks), 7.17-13.21 h for 3 seeds"
    )


def test_estimate_on_the_command_line_writes_no_card_and_respects_a_changed_cap(isolated_cwd: Path) -> None:
    args = ["bench", "standard", "--dataset", "digits", "--estimate", "--examples", "4", "--set", "epochs=7"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "x 7 epochs" in result.stdout and "deterministic" in result.stdout and "clean accuracy" in result.stdout
    assert "autoattack-linf" in result.stdout and "transfer" not in result.stdout  # standard is its own twin
    assert not (isolated_cwd / "cards").exists() and not (isolated_cwd / "mlflow.db").exists()


def test_a_timed_network_that_gets_most_examples_wrong_is_a_warning_that_its_times_are_low() -> None:
    """Attacks skip what a network gets wrong: timed on such a network, the projection is a lower bound."""
    attack = AttackCost("Linf", "autoattack-linf", 0.0002, 0.0002, 3, 1000)
    cost = CostEstimate("adversarial-training", "mnist-5k", 1, "cpu", False, 64, 1, 0.1, 100, 12.0, 1.3, (attack,), 3)
    lines = cost.lines()
    assert "clean accuracy 0.100" in lines[1] and "90% of the timed examples wrong" in lines[-2]
    assert "--train-epochs" in lines[-2]
    assert not any(line.startswith("warning") for line in attrs.evolve(cost, clean_accuracy=0.9).lines())


def test_bad_estimate_input_is_one_line_before_any_work() -> None:
    assert_one_clear_error(lambda: estimate_bench("bnn", dataset="digits", examples=361), "--examples", "1 to 360")
    assert_one_clear_error(lambda: estimate_bench("bnnn", dataset="digits"), "ENTRY 'bnnn'", "did you mean 'bnn'")
    assert_one_clear_error(lambda: estimate_bench("bnn", dataset="digits", train_epochs=0), "--train-epochs", "got 0")
