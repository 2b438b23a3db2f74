"""`advbayes bench ENTRY --estimate`: a bench's time projected from one measured epoch and timed attacks."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import torch
from click.testing import CliRunner

from advbayes.cli import cli
from advbayes.lab.cost import FULL_BUDGET_SCALE, AttackCost, CostEstimate, estimate_bench
from advbayes.lab.protocol import PROTOCOLS
from advbayes.registry import load_registry
from advbayes.testing import assert_one_clear_error
from helpers import SMALL_ATTACKS, write


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
        every_radius = 2 * protocol.test_examples
        # the high end never below the low (timing noise can put the largest radius above the full budget)
        high = every_radius * max(a.full_budget, a.at_largest)
        assert a.seconds_per_seed == pytest.approx((every_radius * a.at_largest, high))
        assert a.at_largest > 0 and a.full_budget > 0
    assert cost.defense_epoch > 0 and cost.twin_epoch > 0
    training = 300 * (cost.defense_epoch + cost.twin_epoch)
    low, high = (training + sum(a.seconds_per_seed[end] for a in cost.attacks) for end in (0, 1))
    assert cost.total_seconds == pytest.approx((2 * low, 2 * high))
    assert f"{2 * high / 3600:.2f} h for 2 seeds" in cost.lines()[-2]
    # what it is doing while it measures: L_inf's largest radius, and 1e-4 of its smallest, where nothing breaks
    assert "estimate bnn: timing autoattack-rand-linf at the largest radius (eps 0.1) on 8 examples" in lines
    assert "estimate bnn: timing autoattack-rand-linf with the full budget (eps 5e-06) on 8 examples" in lines
    assert not (isolated_cwd / "mlflow.db").exists()  # nothing tracked


def test_every_radius_costs_between_the_largest_radius_and_the_full_budget() -> None:
    """mnist-5k's three radii, hand-computed: at least 3 x the largest radius's time, at most 3 x the full budget."""
    attack = AttackCost("Linf", "autoattack-linf", full_budget=7.5, at_largest=0.25, radii=3, test_examples=1000)
    assert attack.seconds_per_seed == pytest.approx((3 * 1000 * 0.25, 3 * 1000 * 7.5))
    noisy = AttackCost("L2", "x", full_budget=1.0, at_largest=2.0, radii=2, test_examples=10)
    assert noisy.seconds_per_seed == (40.0, 40.0)  # timing noise put the largest radius above the budget
    cost = CostEstimate("standard", "mnist-5k", 1, "cpu", False, 32, 5, 0.9, 100, 6.0, 0.0, (attack,), 3)
    assert cost.lines()[3].endswith(
        "0.2500 s/example at the largest radius, 7.5000 with the full budget -> 12.5-375.0 min per seed"
    )
    assert cost.lines()[-2] == (  # 100 epochs x 6 s = 10 min of training per seed
        "projected card: 22.5-385.0 min per seed (10.0 training, 12.5-375.0 attacks), 1.12-19.25 h for 3 seeds"
    )


class CountingModel(torch.nn.Module):
    """A deterministic sampled model that counts the images its forward passes see: an attack's work, untimed."""

    takes_samples = True

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.images = net, 0

    def forward(self, x: torch.Tensor, samples: int = 1) -> torch.Tensor:
        self.images += len(x)
        return self.net(x).unsqueeze(0)


def test_the_full_budget_is_the_most_work_any_radius_makes_and_does_not_depend_on_the_weights() -> None:
    """What makes the estimate's high end a bound: with nothing broken, autoattack's every sub-attack runs in full on
    every example the network gets right. Counted (not timed) on a weak and a trained MLP of one architecture."""
    from advbayes.attacks import entry as attack_entry

    digits = load_registry().build("datasets", {"name": "digits", "use": "digits"})
    x, y = digits.data("train").tensors
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    small = [  # autoattack's four sub-attacks with small budgets: the property does not depend on them
        {"extends": "apgd-ce", "name": "apgd-ce", "steps": 10},
        {"extends": "apgd-t", "name": "apgd-t", "steps": 10, "targets": 3},
        {"extends": "fab-t", "name": "fab-t", "steps": 10, "targets": 3},
        {"extends": "square", "name": "square", "queries": 100},
    ]
    work_per_right = []
    for steps in (3, 300):  # a barely trained network, then the same trained on
        optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
        for _ in range(steps):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            optimizer.step()
        probe, labels = x[:64], y[:64]
        right = int((net(probe).argmax(-1) == labels).sum())
        assert right > 0
        work = {}
        for eps in (0.05 * FULL_BUDGET_SCALE, 0.05, 0.1, 0.2):  # the full budget, then digits' radii and one beyond
            counting = CountingModel(net.eval())
            torch.manual_seed(1)
            attack_entry("autoattack", eps=eps, attacks=small)(counting, probe, labels)
            work[eps] = counting.images / right
        full = work.pop(0.05 * FULL_BUDGET_SCALE)
        assert all(at_radius <= full for at_radius in work.values()), (full, work)
        work_per_right.append(full)
    weak, trained = work_per_right
    assert trained == pytest.approx(weak, rel=0.05), work_per_right


def test_estimate_on_the_command_line_writes_no_card_and_respects_a_changed_cap_and_registry(
    isolated_cwd: Path,
) -> None:
    """The protocol's sub-attacks at small budgets (--registry): the estimate says a card would be off the protocol."""
    args = ["bench", "standard", "--dataset", "digits", "--estimate", "--examples", "4", "--set", "epochs=7"]
    result = CliRunner().invoke(cli, [*args, "--registry", str(SMALL_ATTACKS)])
    assert result.exit_code == 0, result.output
    assert "x 7 epochs" in result.stdout and "deterministic" in result.stdout and "clean accuracy" in result.stdout
    assert "autoattack-linf" in result.stdout and "transfer" not in result.stdout  # standard is its own twin
    off = f"off the protocol (a card would be marked): {SMALL_ATTACKS} changes the protocol's attack"
    assert f"{off} 'autoattack'\n" in result.stdout  # the one a deterministic network is attacked with
    assert "autoattack-rand" not in result.stdout
    assert not (isolated_cwd / "cards").exists() and not (isolated_cwd / "mlflow.db").exists()


def test_the_estimate_times_the_attacks_its_registry_files_define(isolated_cwd: Path, monkeypatch) -> None:
    """Before, --estimate timed the shipped entries whatever --registry gave, where the bench runs the files' ones:
    here autoattack is APGD-CE alone, so the shipped one's Square must never run."""
    from advbayes_attacks.square import Square

    def shipped_autoattack_ran(*args: object, **kwargs: object) -> None:
        raise AssertionError("the estimate ran the shipped autoattack's Square")

    monkeypatch.setattr(Square, "__call__", shipped_autoattack_ran)
    write(
        isolated_cwd / "mine.toml",
        '[attacks.autoattack]\nuse = "worst-case"\nattacks = [{ extends = "apgd-ce", name = "apgd-ce", steps = 5 }]\n',
    )
    cost = estimate_bench("standard", dataset="digits", examples=4, registry=["mine.toml"], say=lambda line: None)
    assert cost.off_protocol == ("mine.toml changes the protocol's attack 'autoattack'",)
    assert [a.name for a in cost.attacks][::3] == ["autoattack-linf", "autoattack-l2"]


def test_a_timed_network_that_gets_most_examples_wrong_is_a_warning_that_its_times_are_low() -> None:
    """Attacks skip what a network gets wrong: timed on such a network, the projection is a lower bound."""
    attack = AttackCost("Linf", "autoattack-linf", 0.0002, 0.0002, 3, 1000)
    cost = CostEstimate("adversarial-training", "mnist-5k", 1, "cpu", False, 64, 1, 0.1, 100, 12.0, 1.3, (attack,), 3)
    lines = cost.lines()
    assert "clean accuracy 0.100" in lines[1] and "90% of the timed examples wrong" in lines[-3]
    assert "--train-epochs" in lines[-3]
    assert not any(line.startswith("warning") for line in attrs.evolve(cost, clean_accuracy=0.9).lines())


def test_bad_estimate_input_is_one_line_before_any_work() -> None:
    assert_one_clear_error(lambda: estimate_bench("bnn", dataset="digits", examples=361), "--examples", "1 to 360")
    assert_one_clear_error(lambda: estimate_bench("bnnn", dataset="digits"), "ENTRY 'bnnn'", "did you mean 'bnn'")
    assert_one_clear_error(lambda: estimate_bench("bnn", dataset="digits", train_epochs=0), "--train-epochs", "got 0")


def test_a_timed_network_that_gets_every_timed_example_wrong_stops_the_estimate_in_one_line(isolated_cwd: Path) -> None:
    """Trained on one digit (a 3), the network calls every digit a 3, and the first four test digits are not: no
    attack would spend any time on them, so the estimate has nothing to project from and says so."""
    assert_one_clear_error(
        lambda: estimate_bench(
            "standard", dataset="digits", examples=4, train_epochs=20, overrides=[("dataset.n_train", 1)], say=str
        ),
        "gets all 4 timed examples wrong",
        "--train-epochs N",
    )
