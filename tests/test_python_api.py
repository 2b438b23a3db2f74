"""The torchattacks-style Python API: one-call attacks by class name or registry entry, the ELBO helper and the
single-output view for libraries that expect [B, k]; each checked against a hand-written reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import advbayes
import advbayes.attacks
from advbayes.errors import RegistryError
from advbayes.stochastic import frozen, kl, to_bayesian
from advbayes.testing import assert_one_clear_error


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(12, 1, 4, 4, generator=generator), torch.randint(0, 3, (12,), generator=generator)


def test_fgsm_by_class_name_on_a_plain_module_equals_the_hand_written_step() -> None:
    from advbayes.attacks import FGSM

    net, (x, y) = small_net(), batch()
    x_adv = FGSM(eps=0.1)(net, x, y)
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(net(leaf), y), leaf)
    expected = (x + 0.1 * grad.sign()).clamp(0, 1)  # clamped to [0, 1] by default
    assert isinstance(x_adv, torch.Tensor)
    torch.testing.assert_close(x_adv, expected)


def test_pgd_stays_in_the_ball_and_the_value_range_on_a_bayesian_model() -> None:
    from advbayes.attacks import PGD

    bnn, (x, y) = to_bayesian(small_net(), init_sigma=0.05), batch()
    attack = PGD(eps=0.2, attack_samples=10, steps=5)
    x_adv = attack(bnn, x, y)
    assert x_adv.shape == x.shape
    assert float((x_adv - x).abs().amax()) <= 0.2 + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert attack.run(bnn, x, y).delta.shape == x.shape  # the full result is there too
    wide = PGD(eps=0.2, value_range=(-1.0, 2.0))(small_net(), x, y)
    assert float(wide.max()) > 1.0 or float(wide.min()) < 0.0  # another range is honoured, not clamped to [0, 1]


def test_a_registry_entry_with_overrides_and_bad_values_are_one_line_errors() -> None:
    pgd20 = advbayes.attacks.entry("pgd-20", eps=0.25)
    assert pgd20.attack.steps == 20 and pgd20.attack.eps == 0.25
    with pytest.raises(RegistryError, match=r"^advbayes.attacks: unknown key 'stepz'"):
        advbayes.attacks.entry("pgd-20", stepz=3)
    from advbayes.attacks import PGD

    with pytest.raises(RegistryError, match=r"entry PGD: key 'eps': expected a finite number >= 0.0"):
        PGD(eps=-1.0)
    with pytest.raises(AttributeError, match=r"no attack 'Nope'; registered: .*PGD"):
        advbayes.attacks.Nope  # noqa: B018
    assert {"FGSM", "PGD", "APGD", "Square"} <= set(advbayes.attacks.available())


def test_elbo_loss_is_cross_entropy_plus_the_weighted_kl_per_example() -> None:
    bnn, (x, y) = to_bayesian(small_net(), init_sigma=0.05), batch()
    with frozen(bnn):  # both calls see the same draws
        output = advbayes.elbo_loss(bnn, x, y, n_train=500, samples=4, prior_sigma=0.5, kl_weight=0.1)
        logits = bnn(x, samples=4)
    ce = F.cross_entropy(logits.reshape(-1, 3), y.repeat(4))
    torch.testing.assert_close(output.loss, ce + 0.1 / 500 * kl(bnn, 0.5))
    torch.testing.assert_close(output.parts["kl"], kl(bnn, 0.5))
    with pytest.raises(ValueError, match="n_train must be the number of training examples"):
        advbayes.elbo_loss(bnn, x, y, n_train=0)


def test_single_output_view_is_the_log_of_the_averaged_prediction() -> None:
    bnn, (x, _y) = to_bayesian(small_net(), init_sigma=0.3), batch()
    view = advbayes.SingleOutputView(bnn, samples=6)
    with frozen(bnn):
        out = view(x)
        probs = bnn(x, samples=6).softmax(-1).mean(0)
    torch.testing.assert_close(out, probs.log())
    assert out.shape == (12, 3)
    with frozen(bnn):
        mean_logits = advbayes.SingleOutputView(bnn, samples=6, average="logits")(x)
        torch.testing.assert_close(mean_logits, bnn(x, samples=6).mean(0))
    net = small_net()
    torch.testing.assert_close(advbayes.SingleOutputView(net)(x), net(x).log_softmax(-1))
    assert math.isclose(float(advbayes.SingleOutputView(net)(x).detach().exp().sum(-1).mean()), 1.0, rel_tol=1e-5)
    with pytest.raises(ValueError, match="average must be one of"):
        advbayes.SingleOutputView(net, average="median")


def test_single_output_view_lets_a_one_output_attack_run_on_a_bayesian_model() -> None:
    """A torchattacks-style FGSM written for [B, k] models, run through the view, equals advbayes' FGSM on the
    deterministic network (one draw, nothing random)."""
    net, (x, y) = small_net(), batch()
    view = advbayes.SingleOutputView(net)
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.nll_loss(view(leaf), y), leaf)
    from advbayes.attacks import FGSM

    torch.testing.assert_close((x + 0.05 * grad.sign()).clamp(0, 1), FGSM(eps=0.05)(net, x, y))


def test_a_composite_registry_entry_is_bound_to_its_parts_as_the_engine_binds_it() -> None:
    net, (x, y) = small_net(), batch()
    x_adv = advbayes.attacks.entry("autoattack", eps=0.1)(net, x, y)
    assert float((x_adv - x).abs().amax()) <= 0.1 + 1e-6 and 0.0 <= float(x_adv.min()) <= float(x_adv.max()) <= 1.0
    with torch.no_grad():
        clean, attacked = (net(x).argmax(-1) == y).float().mean(), (net(x_adv).argmax(-1) == y).float().mean()
    assert attacked <= clean


def test_inputs_outside_the_value_range_are_refused_in_one_line_not_clamped() -> None:
    from advbayes.attacks import FGSM

    net, (x, y) = small_net(), batch()
    normalized = (x - 0.5) / 0.25  # in [-2, 2]: a clamp to [0, 1] would move inputs by up to 2
    with pytest.raises(
        advbayes.AttackInputError,
        match=r"^advbayes.attacks.FGSM: inputs lie in \[-[\d.]+, [\d.]+\], outside value_range \[0, 1\]",
    ) as caught:
        FGSM(eps=0.01)(net, normalized, y)
    assert isinstance(caught.value, ValueError) and "\n" not in str(caught.value)  # as torchattacks: a ValueError
    x_adv = FGSM(eps=0.01, value_range=(-2.0, 2.0))(net, normalized, y)  # the inputs' own range: honoured
    assert float((x_adv - normalized).abs().amax()) <= 0.01 + 1e-6


def test_a_registry_entry_takes_the_inputs_value_range_as_the_classes_do_and_a_bad_range_is_one_line() -> None:
    """The error above says "pass value_range=(low, high)"; entry() refused the key until 2026-12-07."""
    from advbayes.attacks import FGSM

    net, (x, y) = small_net(), batch()
    normalized = (x - 0.5) / 0.25
    torch.manual_seed(0)
    ten_classes = nn.Sequential(nn.Flatten(), nn.Linear(16, 10))  # APGD-DLR needs 4 classes or more
    for name, model in (("fgsm", net), ("autoattack-rand", ten_classes)):  # composite: its parts take its range
        x_adv = advbayes.attacks.entry(name, eps=0.05, value_range=(-2.0, 2.0))(model, normalized, y)
        assert float((x_adv - normalized).abs().amax()) <= 0.05 + 1e-6
        assert -2.0 <= float(x_adv.min()) and float(x_adv.max()) <= 2.0
    unbounded = advbayes.attacks.entry("fgsm", eps=3.0, value_range=(-math.inf, math.inf))(net, normalized, y)
    assert float((unbounded - normalized).abs().amax()) == pytest.approx(3.0)  # nothing clamps the step
    by_entry = advbayes.attacks.entry("fgsm", eps=0.05, value_range=[-2, 2])(net, normalized, y)
    assert torch.equal(by_entry, FGSM(eps=0.05, value_range=(-2.0, 2.0))(net, normalized, y))  # the same step
    for bad in ((2.0, 1.0), "wide", (0.0, 1.0, 2.0), (0.0, math.nan), (False, 1.0)):
        for make in (lambda: FGSM(eps=0.05, value_range=bad), lambda: advbayes.attacks.entry("fgsm", value_range=bad)):
            assert_one_clear_error(make, "key 'value_range'", "two numbers, low < high", f"got {bad!r}")


def test_an_linf_eps_wider_than_the_value_range_is_refused_and_an_l2_one_is_not() -> None:
    from advbayes.attacks import FGSM, PGD

    net, (x, y) = small_net(), batch()
    with pytest.raises(
        advbayes.AttackInputError, match=r"eps 8 is wider than the data's value range \[0, 1\].*8/255 is 0.0313725"
    ):
        FGSM(eps=8)(net, x, y)
    assert FGSM(eps=1.0)(net, x, y).shape == x.shape  # the whole range is still a radius
    x_adv = PGD(eps=3.0, norm="2", steps=2)(net, x, y)  # L2 adds over 16 inputs: 3 is a sane radius
    assert float((x_adv - x).flatten(1).norm(dim=1).amax()) <= 3.0 + 1e-5


def test_on_a_stochastic_model_the_api_warns_and_refuses_as_the_engine_does() -> None:
    import warnings

    from advbayes.attacks import PGD
    from advbayes.errors import EvaluationWarning

    bnn, (x, y) = to_bayesian(small_net(), init_sigma=0.05), batch()
    with pytest.raises(
        advbayes.AttackInputError,
        match=r"the model is stochastic .* fab-t judges single evaluations; use entry\('autoattack-rand'\)",
    ):
        advbayes.attacks.entry("autoattack", eps=0.1)(bnn, x, y)
    with pytest.warns(EvaluationWarning, match=r"attacks.PGD: the model is stochastic .* averages S_A = 1 draw"):
        PGD(eps=0.1, steps=2)(bnn, x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EvaluationWarning)  # S_A = 10: nothing to warn about
        PGD(eps=0.1, steps=2, attack_samples=10)(bnn, x, y)
        PGD(eps=0.1, steps=2)(small_net(), x, y)  # a deterministic model: S_A = 1 is right


def test_autoattack_rand_takes_s_i_and_warns_when_each_verdict_is_one_draw() -> None:
    from advbayes.errors import EvaluationWarning

    bnn, (x, y) = to_bayesian(small_net(), init_sigma=0.05), batch()
    quick = {"attack_samples": 2, "verdict_repeats": 2, "attacks": [{"extends": "apgd-ce", "steps": 3}]}
    judged = advbayes.attacks.entry("autoattack-rand", eps=0.1, inference_samples=5, **quick)
    assert judged.attack.inference_samples == 5
    x_adv = judged(bnn, x, y)
    assert float((x_adv - x).abs().amax()) <= 0.1 + 1e-6
    with pytest.warns(
        EvaluationWarning, match=r"each of its 2 judging predictions uses S_I = 1 draw; pass inference_samples"
    ):
        advbayes.attacks.entry("autoattack-rand", eps=0.1, **quick)(bnn, x, y)
    with pytest.raises(RegistryError, match=r"key 'inference_samples': expected an integer >= 1 \(S_I\), got 0"):
        advbayes.attacks.entry("autoattack-rand", inference_samples=0)


def test_first_examples_of_a_tensor_split_equal_item_lookups_of_the_same_split_held_otherwise() -> None:
    """The in-memory slice and the item-by-item path give the same tensors; n is capped and checked."""
    from torch.utils.data import Subset, TensorDataset

    generator = torch.Generator().manual_seed(0)
    held = TensorDataset(torch.rand(12, 1, 4, 4, generator=generator, dtype=torch.float64), torch.arange(12) % 3)
    mapped = Subset(held, list(range(12)))  # a map-style data set: item lookups, labels as 0-d tensors
    x, y = advbayes.first_examples(held, 5)
    x_items, y_items = advbayes.first_examples(mapped, 5)
    assert x.dtype == torch.float32 and y.dtype == torch.long and x.shape == (5, 1, 4, 4)
    assert torch.equal(x, x_items) and torch.equal(y, y_items)
    assert torch.equal(x, held.tensors[0][:5].float()) and y.tolist() == [0, 1, 2, 0, 1]
    assert len(advbayes.first_examples(mapped, 50)[1]) == 12  # the whole split when it is shorter
    with pytest.raises(ValueError, match="expected n >= 1, got 0"):
        advbayes.first_examples(held, 0)
