"""AutoAttack-grade evaluation: APGD / Square against the official AutoAttack, fresh-draw iterate selection on a
Bayesian network, the worst case per example, attack hygiene (labels, modes, value range)."""

from __future__ import annotations

import math
from typing import ClassVar

import attrs
import pytest
import torch
from torch import nn

import advbayes
from advbayes import as_sampled, predict, to_bayesian
from advbayes.testing import assert_one_clear_error, create_plugin_manager, plugin_registry

REGISTRY = plugin_registry()


def attack(spec: dict | str, **changes):
    """An attack entry built through the real plugin manager and the registry's validation."""
    built = REGISTRY.build("attacks", REGISTRY.resolve("attacks", spec, where=("test", "test", "attack")))
    return attrs.evolve(built, **changes)


@pytest.fixture(scope="module")
def mnist() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A 784-256-256-10 MLP trained 2 epochs on 4,000 real digits (offline, 91 % clean), and 500 test digits.

    An MLP, not mnist-cnn: the comparisons with the official attacks test the algorithms, which see the network only
    through its logits and gradients, and an MLP's forward is ~50x cheaper (square: 4 s instead of 60 s)."""
    result = advbayes.run(
        "quickstart",
        track=False,
        pm=create_plugin_manager(),
        attacks=["none"],
        eps=[0.0],
        model={"use": "mlp", "widths": [256, 256]},
        **{"dataset.n_test": 500},
    )
    dataset = REGISTRY.build(
        "datasets", REGISTRY.resolve("datasets", {"use": "mnist-5k", "n_test": 500}, where=("t", "t", "t"))
    )
    x, y = dataset.data("test").tensors
    return result.model.net.eval(), x, y


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, samples: int = 1) -> float:
    with torch.no_grad():
        return float((predict(model, x, samples)[0].argmax(-1) == y).float().mean())


# ------------------------------------------------------------------------------------------- hygiene


@pytest.mark.parametrize("loss", ["ce", "cw", "margin", "dlr"])
def test_every_loss_accepts_int32_labels(loss: str) -> None:
    from advbayes_attacks.losses import attack_loss

    logits = torch.randn(3, 8, 5)
    y = torch.randint(0, 5, (8,))
    torch.testing.assert_close(attack_loss(logits, y.int(), loss), attack_loss(logits, y, loss))
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    result = attack({"use": "pgd", "loss": loss, "eps": 0.1, "steps": 2})(as_sampled(net), torch.rand(8, 12), y.int())
    assert result.x_adv.shape == (8, 12)


def test_attacks_craft_in_eval_mode_and_restore_the_callers_modes() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    )
    net[1].running_mean.normal_()
    net.train()
    net[3].eval()  # a module the caller set differently stays as it was
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 3, (16,))
    before = net[1].running_mean.clone(), net[1].num_batches_tracked.clone()
    crafted = attack({"use": "pgd", "eps": 0.1, "steps": 3, "random_start": False})(as_sampled(net), x, y).x_adv
    torch.testing.assert_close(net[1].running_mean, before[0])
    assert int(net[1].num_batches_tracked) == int(before[1])
    assert net.training and net[1].training and not net[3].training
    reference = attack({"use": "pgd", "eps": 0.1, "steps": 3, "random_start": False})(
        as_sampled(net.eval()), x, y
    ).x_adv
    assert torch.equal(crafted, reference)  # crafted on running statistics, exactly as in eval mode


def test_a_registry_attack_called_from_python_clamps_to_the_unit_interval() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(20, 4))
    x = torch.rand(64, 20)
    for name in ("fgsm", "pgd-20", "apgd-ce"):
        x_adv = attack(name, eps=0.3, **({"steps": 5} if name != "fgsm" else {}))(
            as_sampled(net), x, torch.zeros(64, dtype=torch.long)
        ).x_adv
        assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0, name


def test_resample_attack_cannot_pick_iterates_on_its_own_frozen_draws() -> None:
    assert_one_clear_error(lambda: attack({"use": "pgd", "resample": "attack", "keep": "best"}), "key 'keep'")
    assert_one_clear_error(lambda: attack({"use": "pgd", "resample": "attack", "restarts": 3}), "key 'restarts'")


# ------------------------------------------------------------------------------------------- stochastic selection


def own_draws_best_iterate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int) -> torch.Tensor:
    """The flaw this package had: PGD keeping each example's iterate of highest loss on that step's own draw."""
    alpha = 2.5 * eps / steps
    x_adv = (x + (torch.rand_like(x) * 2 - 1) * eps).clamp(0, 1)
    best_x, best_loss = x_adv.clone(), torch.full((len(x),), -math.inf)
    for _ in range(steps + 1):
        x_adv.requires_grad_(True)
        losses = torch.nn.functional.cross_entropy(model(x_adv, samples=1)[0], y, reduction="none")
        (gradient,) = torch.autograd.grad(losses.sum(), x_adv)
        better = losses.detach() > best_loss
        best_x[better], best_loss[better] = x_adv.detach()[better], losses.detach()[better]
        x_adv = (x + (x_adv.detach() + alpha * gradient.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    return best_x


@pytest.mark.slow
def test_on_a_bayesian_network_no_iterate_is_chosen_by_lucky_draws(mnist) -> None:
    """Default entries keep the last iterate; keep = "best" compares iterates on fresh draws and is no longer
    inflated the way scoring on each step's own draw was (all three judged on the same fresh draws)."""
    net, x, y = mnist
    bnn = to_bayesian(net, which=0.5, init_sigma=0.1, seed=0)
    for name in ("pgd-20", "pgd-30", "pgd-40", "eot-pgd-10"):
        assert attack(name).keep == "last", name

    def robust_accuracy(x_adv: torch.Tensor) -> float:
        bnn.seed(12345)  # the same evaluation draws for every attack, independent of the attacks' draws
        return sum(accuracy(bnn, x_adv, y, 10) for _ in range(5)) / 5

    torch.manual_seed(0)
    flawed = robust_accuracy(own_draws_best_iterate(bnn, x, y, 0.1, 20))
    torch.manual_seed(0)
    last = robust_accuracy(attack("pgd-20", eps=0.1)(bnn, x, y).x_adv)
    torch.manual_seed(0)
    best = robust_accuracy(attack("pgd-20", eps=0.1, keep="best")(bnn, x, y).x_adv)
    assert last < robust_accuracy(x) - 0.1  # the attack works at all
    assert flawed > last + 0.02, (flawed, last)  # the old selection overstated robustness on this network
    assert best < flawed and best <= last + 0.03, (best, last, flawed)


def test_keep_best_on_a_stochastic_model_scores_candidate_and_incumbent_in_one_fresh_call() -> None:
    """Every selection call holds [candidates; incumbents] (2B inputs, selection_samples draws) without gradient."""
    calls: list[tuple[int, int, bool]] = []

    class Recorded(nn.Module):
        takes_samples = True

        def __init__(self) -> None:
            super().__init__()
            self.inner = to_bayesian(nn.Sequential(nn.Flatten(), nn.Linear(10, 3)), init_sigma=0.5, seed=0)

        def forward(self, x: torch.Tensor, samples: int = 1) -> torch.Tensor:
            calls.append((len(x), samples, torch.is_grad_enabled() and x.requires_grad))
            return self.inner(x, samples=samples)

    x, y = torch.rand(6, 10), torch.randint(0, 3, (6,))
    attack({"use": "pgd", "eps": 0.2, "steps": 4, "keep": "best", "selection_samples": 7, "attack_samples": 3})(
        Recorded(), x, y
    )
    gradient_calls = [c for c in calls if c[2]]
    selection_calls = [c for c in calls if c[:2] == (12, 7)]
    assert len(gradient_calls) == 4 and all(c[:2] == (6, 3) for c in gradient_calls)
    assert len(selection_calls) == 4 and not any(c[2] for c in selection_calls)  # steps 2..4 and the final iterate


# ------------------------------------------------------------------------------------------- official AutoAttack


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_matches_the_official_implementation_on_500_digits(mnist, loss: str) -> None:
    from pyautoattack.autopgd_base import APGDAttack

    net, x, y = mnist
    torch.manual_seed(0)
    ours = attack({"use": "apgd", "loss": loss, "eps": 0.05, "steps": 25})(as_sampled(net), x, y).x_adv
    official = APGDAttack(net, n_iter=25, eps=0.05, loss=loss, seed=0).perturb(x, y)
    assert float((ours - x).abs().max()) <= 0.05 + 1e-6
    ours_accuracy, official_accuracy = accuracy(net, ours, y), accuracy(net, official, y)
    assert ours_accuracy < accuracy(net, x, y) - 0.2
    assert abs(ours_accuracy - official_accuracy) <= 0.01, (ours_accuracy, official_accuracy)


@pytest.mark.slow
def test_apgd_t_matches_the_official_implementation_on_500_digits(mnist) -> None:
    from pyautoattack.autopgd_base import APGDAttack_targeted

    net, x, y = mnist
    torch.manual_seed(0)
    ours = attack("apgd-t", eps=0.05, steps=25, targets=3)(as_sampled(net), x, y).x_adv
    official = APGDAttack_targeted(net, n_iter=25, eps=0.05, n_target_classes=3, seed=0).perturb(x, y)
    ours_accuracy, official_accuracy = accuracy(net, ours, y), accuracy(net, official, y)
    assert abs(ours_accuracy - official_accuracy) <= 0.01, (ours_accuracy, official_accuracy)


@pytest.mark.slow
@pytest.mark.parametrize("norm, eps", [("inf", 0.08), ("2", 1.5)])
def test_square_matches_the_official_implementation_on_500_digits(mnist, norm: str, eps: float) -> None:
    from pyautoattack.square import SquareAttack

    net, x, y = mnist
    torch.manual_seed(0)
    ours = attack({"use": "square", "norm": norm, "eps": eps, "queries": 1000})(as_sampled(net), x, y).x_adv
    official = SquareAttack(
        net, norm="Linf" if norm == "inf" else "L2", eps=eps, n_queries=1000, resc_schedule=False, seed=0
    ).perturb(x, y)
    delta = (ours - x).flatten(1)
    assert float(delta.abs().max() if norm == "inf" else delta.norm(dim=1).max()) <= eps + 1e-4
    ours_accuracy, official_accuracy = accuracy(net, ours, y), accuracy(net, official, y)
    assert ours_accuracy < accuracy(net, x, y) - 0.1
    assert abs(ours_accuracy - official_accuracy) <= SQUARE_TOLERANCE, (ours_accuracy, official_accuracy)


def test_the_cached_l2_square_keeps_unit_norm_and_signed_halves_through_an_l2_attack() -> None:
    """Square's L2 block is built once per side and reused at every query: the attack must never write into it."""
    from advbayes_attacks.square import l2_square

    blocks = {
        (side, flip): l2_square(side, torch.device("cpu"), flip).clone()
        for side in range(2, 9)
        for flip in (False, True)
    }
    hits = l2_square.cache_info().hits
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    x = torch.rand(8, 1, 8, 8)
    attack({"use": "square", "norm": "2", "eps": 0.5, "queries": 200})(as_sampled(net), x, net(x).argmax(-1))
    assert l2_square.cache_info().hits > hits + 100  # one block per query (and the initial grid's)
    for (side, flip), before in blocks.items():
        block = l2_square(side, torch.device("cpu"), flip)
        torch.testing.assert_close(block, before, rtol=0, atol=0)
        assert float(block.square().sum()) == pytest.approx(1.0)
        halves = (block.t() if flip else block).split([side // 2, side - side // 2])
        assert bool((halves[0] >= 0).all()) and bool((halves[1] <= 0).all())


class SharedNoiseMargin(nn.Module):
    """Two classes; class 1 wins a draw when x[:, 0] + noise > 0, the noise drawn once per draw for the whole batch
    (as a Bayesian layer draws its weights), so two inputs judged in one call are judged on the same draws. x[:, 1:]
    is ignored."""

    takes_samples = True

    def forward(self, x: torch.Tensor, samples: int = 1) -> torch.Tensor:
        margin = x[:, 0] + torch.randn(samples, 1)
        return torch.stack([torch.zeros_like(margin), margin], dim=-1)


@attrs.frozen(kw_only=True)
class Shift(advbayes.Attack):
    """A stand-in sub-attack with a known outcome: feature 0 moved by `by`, feature 1 (which the model ignores) by
    0.5, so the returned point always differs from the clean input."""

    name: ClassVar[str] = "shift"
    by: float = 0.0

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> advbayes.AttackResult:
        x_adv = x + torch.tensor([self.by, 0.5])
        return advbayes.AttackResult(x_adv=x_adv, delta=x_adv - x)


def worst_case_of(*shifts: float, repeats: int) -> advbayes.Attack:
    """worst-case (R = `repeats`) over Shift sub-attacks, built through the registry and bound to the stand-ins."""
    from advbayes.components import EvalContext

    names = [f"shift-{i}" for i in range(len(shifts))]
    entries = [{"extends": "fgsm", "name": name} for name in names]
    ensemble = attack({"use": "worst-case", "attacks": entries, "verdict_repeats": repeats}, eps=1.0)
    stand_ins = {name: Shift(by=by) for name, by in zip(names, shifts)}
    return ensemble.bind(EvalContext(build_attack=lambda entry: stand_ins[entry["name"]], device=torch.device("cpu")))


def margins(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """400 inputs of class 1 whose feature 0 spans [1, 3]: right on a draw with probability Phi(1) to Phi(3)."""
    torch.manual_seed(seed)
    return torch.stack([torch.linspace(1.0, 3.0, 400), torch.zeros(400)], dim=1), torch.ones(400, dtype=torch.long)


@pytest.mark.parametrize("seed", range(3))
def test_worst_case_keeps_an_attack_point_that_ties_the_clean_input_on_a_stochastic_model(seed: int) -> None:
    """An attack point the model cannot tell from the clean input is right on exactly the same of the same draws:
    it is kept (a tie is no evidence the attack failed). Kept only when strictly better, the clean input stays
    everywhere; judged on separate draws, on some examples in two of these three seeds. The strict rule kept it on
    69 of 200 digits of a noisy Bayesian network after APGD-CE (benchmarks/README.md, apgd_step_rule.py)."""
    x, y = margins(seed)
    result = worst_case_of(0.0, repeats=20)(SharedNoiseMargin(), x, y)
    assert torch.equal(result.x_adv, Shift()(SharedNoiseMargin(), x, y).x_adv)


@pytest.mark.parametrize("seed", range(3))
def test_worst_case_never_trades_an_attack_point_for_one_right_on_more_of_the_same_draws(seed: int) -> None:
    """The second sub-attack's point (feature 0 lowered by 0.4) is right on every draw where the first's (lowered
    by 0.8) is, so judged on the same draws it never wins; judged on separate draws it wins on some examples in two
    of these three seeds."""
    x, y = margins(seed)
    result = worst_case_of(-0.8, -0.4, repeats=20)(SharedNoiseMargin(), x, y)
    assert torch.equal(result.x_adv, Shift(by=-0.8)(SharedNoiseMargin(), x, y).x_adv)
    assert float(result.diagnostics["robust_after_shift-1"]) == 1.0  # 20 draws all below -2.2: never here


# 1,000 queries of random search on this MLP, seeds 0-2: ours 0.402-0.410 vs official 0.404-0.414 (Linf 0.08) and
# 0.380-0.388 vs 0.390-0.396 (L2 1.5); a seed moves either implementation by about a point.
SQUARE_TOLERANCE = 0.03


# ------------------------------------------------------------------------------------------- worst case


def test_worst_case_breaks_exactly_the_examples_some_attack_breaks() -> None:
    """With deterministic sub-attacks on a deterministic model the verdict is the OR of the attacks' successes."""
    torch.manual_seed(3)
    net = as_sampled(nn.Sequential(nn.Flatten(), nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 4)).eval())
    x, y = torch.rand(256, 30), torch.randint(0, 4, (256,))
    subs = [
        {"use": "fgsm", "name": "fgsm"},
        {"use": "pgd", "name": "pgd-fixed", "steps": 5, "random_start": False, "loss": "cw"},
    ]
    ensemble = attack({"use": "worst-case", "attacks": subs, "verdict_repeats": 5}, eps=0.05)
    from advbayes.components import EvalContext

    said: list[str] = []
    context = EvalContext(build_attack=lambda entry: attack(entry), device=torch.device("cpu"), status=said.append)
    combined = ensemble.bind(context)(net, x, y).x_adv
    robust = [predict(net, attrs.evolve(attack(s), eps=0.05)(net, x, y).x_adv)[0].argmax(-1) == y for s in subs]
    expected = predict(net, x)[0].argmax(-1) == y
    clean_right = int(expected.sum())
    for mask in robust:
        expected &= mask
    assert torch.equal(predict(net, combined)[0].argmax(-1) == y, expected)
    assert float((combined - x).abs().max()) <= 0.05 + 1e-6
    assert torch.equal(combined[expected], x[expected])  # a failed attack leaves the clean input, as official AA does
    # what it says while it works: each sub-attack and the examples it gets (those every earlier one left robust)
    assert said[0] == f"fgsm (1/2) on the {clean_right} of 256 examples still robust"
    left = int(((predict(net, x)[0].argmax(-1) == y) & robust[0]).sum())
    assert said[1:] == ([f"pgd-fixed (2/2) on the {left} of 256 examples still robust"] if left else [])
