"""Attacks against closed forms, independent per-draw references and mathematical properties."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import advbayes
from advbayes import as_sampled, frozen, to_bayesian
from advbayes.testing import assert_one_clear_error, build_entry, create_plugin_manager, draw_network


def attack(spec: dict, value_range=(-math.inf, math.inf)):
    """Build an attack through the real plugin manager and the registry's validation."""
    import attrs

    return attrs.evolve(build_entry("attacks", spec), value_range=value_range)


def linear_model(classes: int = 2, dims: int = 6) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(dims, classes))


@pytest.mark.parametrize(
    "spec",
    [{"use": "fgsm", "eps": 0.25}, {"use": "pgd", "eps": 0.25, "steps": 1, "step_size": 0.25, "random_start": False}],
)
def test_linf_one_step_is_the_closed_form_optimum_on_a_linear_model(spec) -> None:
    net = linear_model()
    x = torch.randn(8, 6)
    y = torch.randint(0, 2, (8,))
    result = attack(spec)(as_sampled(net), x, y)
    weight = net[1].weight.detach()
    direction = weight[1 - y] - weight[y]  # the margin z_other - z_true grows fastest along sign(w_other - w_true)
    torch.testing.assert_close(result.delta, 0.25 * direction.sign())
    margin = lambda z: (z.gather(1, (1 - y).view(-1, 1)) - z.gather(1, y.view(-1, 1))).squeeze(1)  # noqa: E731
    gain = margin(net(result.x_adv)) - margin(net(x))
    torch.testing.assert_close(gain, 0.25 * direction.abs().sum(1), rtol=1e-5, atol=1e-5)  # eps * ||w||_1


@pytest.mark.parametrize(
    "spec",
    [
        {"use": "fgm", "eps": 0.5},
        {"use": "pgd", "norm": "2", "eps": 0.5, "steps": 1, "step_size": 0.5, "random_start": False},
    ],
)
def test_l2_one_step_is_the_closed_form_optimum_on_a_linear_model(spec) -> None:
    net = linear_model()
    x = torch.randn(8, 6)
    y = torch.randint(0, 2, (8,))
    result = attack(spec)(as_sampled(net), x, y)
    weight = net[1].weight.detach()
    direction = weight[1 - y] - weight[y]
    torch.testing.assert_close(result.delta, 0.5 * direction / direction.norm(dim=1, keepdim=True))
    torch.testing.assert_close(result.diagnostics["l2"], torch.full((8,), 0.5))


def test_fgsm_on_a_deterministic_model_matches_an_independent_reference_bit_for_bit() -> None:
    torch.manual_seed(7)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    x, y = torch.rand(16, 1, 6, 6), torch.randint(0, 5, (16,))
    x_ref = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(F.cross_entropy(net(x_ref), y), x_ref)
    reference = (x + 0.1 * gradient.sign()).clamp(0, 1)
    assert torch.equal(attack({"use": "fgsm", "eps": 0.1}, (0.0, 1.0))(as_sampled(net), x, y).x_adv, reference)


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_pgd_stays_in_the_ball_and_the_value_range(norm: str) -> None:
    torch.manual_seed(1)
    model = to_bayesian(
        nn.Sequential(nn.Flatten(), nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4)), init_sigma=0.3, seed=0
    )
    x = torch.rand(32, 20)
    y = torch.randint(0, 4, (32,))
    eps = 0.2 if norm == "inf" else 1.5
    result = attack(
        {"use": "pgd", "norm": norm, "eps": eps, "steps": 15, "step_size": eps / 2, "attack_samples": 3}, (0.0, 1.0)
    )(model, x, y)
    assert float(result.x_adv.min()) >= 0.0 and float(result.x_adv.max()) <= 1.0
    delta = result.x_adv - x
    if norm == "inf":
        assert float(delta.abs().max()) <= eps + 1e-6
    else:
        assert float(delta.flatten(1).norm(dim=1).max()) <= eps + 1e-5
    torch.testing.assert_close(result.diagnostics["linf"], delta.abs().flatten(1).amax(1))
    assert 0.0 <= result.diagnostics["zero_grad_share"] <= 1.0
    assert result.diagnostics["loss_history"].shape == (1, 16)


def test_eot_on_a_deterministic_model_equals_plain_pgd_bit_for_bit() -> None:
    net = as_sampled(nn.Sequential(nn.Flatten(), nn.Linear(20, 10), nn.ReLU(), nn.Linear(10, 3)))
    x, y = torch.rand(16, 20), torch.randint(0, 3, (16,))
    results = []
    for samples in (1, 7, 30):
        torch.manual_seed(5)
        results.append(
            attack({"use": "pgd", "eps": 0.1, "steps": 10, "attack_samples": samples}, (0.0, 1.0))(net, x, y).x_adv
        )
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


@pytest.mark.parametrize("expectation", ["probs", "logits", "loss"])
def test_vectorized_eot_gradient_equals_the_loop_over_per_draw_networks(expectation: str) -> None:
    torch.manual_seed(2)
    original = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4))
    model = to_bayesian(copy.deepcopy(original), init_sigma=0.2, seed=3)
    x, y = torch.rand(5, 1, 6, 6), torch.randint(0, 4, (5,))
    pgd = attack({"use": "pgd", "eps": 0.1, "attack_samples": 6, "expectation": expectation})
    with frozen(model):
        _, vectorized = pgd.loss_and_gradient(model, x, y)
        x_ref = x.clone().requires_grad_(True)
        logits = torch.stack([draw_network(original, model, s)(x_ref) for s in range(6)])
    if expectation == "probs":
        loss = -torch.log(logits.softmax(-1).mean(0).gather(1, y.view(-1, 1))).sum()
    elif expectation == "logits":
        loss = F.cross_entropy(logits.mean(0), y, reduction="sum")
    else:
        loss = sum(F.cross_entropy(logits[s], y, reduction="sum") for s in range(6)) / 6
    (reference,) = torch.autograd.grad(loss, x_ref)
    if expectation != "loss":  # rescaled per example (example_scaled): equal up to a positive factor per example
        factor = reference.flatten(1).norm(dim=1) / vectorized.flatten(1).norm(dim=1)
        assert (factor > 0).all()
        vectorized = vectorized * factor.view(-1, 1, 1, 1)
    torch.testing.assert_close(vectorized, reference, rtol=1e-4, atol=1e-6)


def test_same_seed_same_adversarial_examples() -> None:
    x, y = torch.rand(8, 1, 6, 6), torch.randint(0, 4, (8,))
    base = nn.Sequential(nn.Flatten(), nn.Linear(36, 4))
    outputs = []
    for _ in range(2):
        torch.manual_seed(3)
        model = to_bayesian(base, init_sigma=0.2, seed=9)
        outputs.append(attack({"use": "pgd", "eps": 0.1, "attack_samples": 2})(model, x, y).x_adv)
    assert torch.equal(outputs[0], outputs[1])


def test_restarts_and_best_iterate_never_lower_the_attack_score() -> None:
    """On a deterministic model `best` ranks iterates by (misclassified, loss), recomputed here independently."""
    torch.manual_seed(4)
    net = as_sampled(nn.Sequential(nn.Flatten(), nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 5)))
    x, y = torch.rand(64, 20), torch.randint(0, 5, (64,))
    spec = {"use": "pgd", "eps": 0.3, "steps": 5, "step_size": 0.2}

    def score(x_adv: torch.Tensor) -> torch.Tensor:
        logits = net(x_adv)[0]
        return F.cross_entropy(logits, y, reduction="none").double() + 1e6 * (logits.argmax(-1) != y).double()

    torch.manual_seed(0)
    last = attack(spec)(net, x, y)
    torch.manual_seed(0)
    best = attack({**spec, "keep": "best"})(net, x, y)
    torch.manual_seed(0)
    restarted = attack({**spec, "keep": "best", "restarts": 4})(net, x, y)
    assert attack(spec).keep == "last"
    with torch.no_grad():
        assert bool((score(best.x_adv) >= score(last.x_adv) - 1e-5).all())
        assert bool((score(restarted.x_adv) >= score(best.x_adv) - 1e-5).all())
        assert float(score(restarted.x_adv).mean()) > float(score(last.x_adv).mean())
    torch.testing.assert_close(
        best.diagnostics["attack_loss"], F.cross_entropy(net(best.x_adv)[0], y, reduction="none")
    )


def test_resample_attack_freezes_one_set_of_draws() -> None:
    model = to_bayesian(nn.Sequential(nn.Flatten(), nn.Linear(20, 3)), init_sigma=0.5, seed=0, strategy="batched")
    x, y = torch.rand(4, 20), torch.randint(0, 3, (4,))
    frozen_attack = attack({"use": "pgd", "eps": 0.1, "steps": 3, "resample": "attack", "attack_samples": 2})
    seen = []
    hook = model.net[1].register_forward_hook(lambda module, args, out: seen.append(module.weight.noise.clone()))
    frozen_attack(model, x, y)
    hook.remove()
    assert len(seen) == 4 and all(torch.equal(seen[0], e) for e in seen)
    fresh = attack({"use": "pgd", "eps": 0.1, "steps": 3, "attack_samples": 2})
    seen.clear()
    model.net[1].register_forward_hook(lambda module, args, out: seen.append(module.weight.noise.clone()))
    fresh(model, x, y)
    assert not torch.equal(seen[0], seen[1])


def test_random_sign_moves_every_component_by_eps() -> None:
    x = torch.full((4, 10), 0.5)
    result = attack({"use": "random-sign", "eps": 0.1}, (0.0, 1.0))(
        as_sampled(nn.Linear(10, 2)), x, torch.zeros(4, dtype=torch.long)
    )
    torch.testing.assert_close(result.delta.abs(), torch.full((4, 10), 0.1))
    assert_one_clear_error(lambda: attack({"use": "random-sign", "norm": "2"}), "key 'norm'", "expected 'inf'")


def test_cw_and_margin_losses() -> None:
    from advbayes_attacks.losses import attack_loss

    logits = torch.tensor([[[2.0, 1.0, -1.0]], [[0.0, 3.0, 0.0]]])  # two draws, one example, true class 0
    y = torch.tensor([0])
    assert attack_loss(logits, y, "cw", "probs").item() == pytest.approx(2.0 - 1.0)  # on averaged logits [1, 2, -0.5]
    assert attack_loss(logits, y, "cw", "loss").item() == pytest.approx(
        (max(1 - 2, 0) + (3 - 0)) / 2
    )  # clamped at -kappa
    assert attack_loss(logits, y, "cw", "probs", kappa=0.5).item() == pytest.approx(1.0)
    probs = logits.softmax(-1).mean(0)[0]
    assert attack_loss(logits, y, "margin", "probs").item() == pytest.approx(float(probs[1] - probs[0]), rel=1e-5)


@pytest.mark.slow
def test_undefended_mnist_cnn_accuracy_falls_with_eps_and_pgd_is_at_least_as_strong_as_fgsm() -> None:
    result = advbayes.run(
        "quickstart",
        track=False,
        pm=create_plugin_manager(),
        attacks=["fgsm", "pgd-20"],
        eps=[0.0, 0.1, 0.2, 0.3],
        **{"dataset.n_test": 100},  # FGSM 0.97, 0.78, 0.27, 0.02 and PGD-20 0.97, 0.68, 0.09, 0.0 (seed 0)
    )
    fgsm, pgd = result.table()["fgsm"], result.table()["pgd-20"]
    eps = [0.0, 0.1, 0.2, 0.3]
    assert fgsm[0.0] > 0.9 and fgsm[0.0] == pgd[0.0]
    assert all(fgsm[a] > fgsm[b] for a, b in zip(eps, eps[1:]))
    assert all(pgd[a] > pgd[b] for a, b in zip(eps[:-1], eps[1:-1])) and pgd[0.3] <= pgd[0.2]
    assert all(pgd[e] <= fgsm[e] for e in eps)


@pytest.mark.parametrize(
    "attack_entry, fragment",
    [
        ("square", "attack 'square' cannot run on data set 'half-moons': it perturbs square windows of images "),
        ("fab-t", "attack 'fab-t' cannot run on data set 'half-moons': the official FAB works in [0, 1]; the data's "),
        ("autoattack", "attack 'autoattack' cannot run on data set 'half-moons': its sub-attack 'fab-t': the official"),
    ],
)
def test_an_attack_that_cannot_run_on_the_data_fails_before_training(attack_entry: str, fragment: str) -> None:
    """Square needs images and the official FAB [0, 1]; half-moons are unbounded points in the plane: refused in
    the pre-run checks, which prepare_run makes without training anything."""
    from advbayes.engine.lifecycle import prepare_run

    with pytest.raises(advbayes.RunError) as raised:
        prepare_run("moons", track=False, pm=create_plugin_manager(), overrides=[("attacks", [attack_entry])])
    assert str(raised.value).startswith(f"experiments.moons: {fragment}"), str(raised.value)
    assert "[2]" in str(raised.value) or "[-inf, inf]" in str(raised.value)


@pytest.mark.parametrize(
    "attack_entry, fragment",
    [
        (
            "autoattack-rand",
            "its sub-attack 'apgd-dlr': its DLR loss needs at least 3 classes, the data set has 2 (use loss 'ce')",
        ),
        ("apgd-t", "its targeted DLR loss needs at least 4 classes, the data set has 2 (use loss 'ce')"),
    ],
)
def test_a_dlr_attack_on_two_classes_fails_before_training(attack_entry: str, fragment: str) -> None:
    """The DLR loss divides by the gap to the third largest logit (targeted: the fourth): on two moons it was an
    IndexError in the middle of the evaluation, after training."""
    from advbayes.engine.lifecycle import prepare_run

    with pytest.raises(advbayes.RunError) as raised:
        prepare_run("moons", track=False, pm=create_plugin_manager(), overrides=[("attacks", [attack_entry])])
    assert (
        str(raised.value)
        == f"experiments.moons: attack '{attack_entry}' cannot run on data set 'half-moons': {fragment}"
    )
    prepare_run("moons", track=False, pm=create_plugin_manager(), overrides=[("attacks", ["apgd-ce"])])  # CE is fine


def test_a_saturated_softmax_still_gives_the_cross_entropy_gradient_direction() -> None:
    # Logits a few hundred apart: softmax - onehot is exactly 0 in float32, not in float64 (exp underflows there only
    # past ~745). The attack's gradient must point where float64's does, though the network runs in float32.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 4))
    with torch.no_grad():
        net[1].weight.mul_(2000.0)
    x = torch.rand(64, 1, 6, 6)
    with torch.no_grad():
        top2 = net(x).topk(2, dim=-1).values
    gap = top2[:, 0] - top2[:, 1]
    keep = (gap > 120) & (gap < 600)
    x, y = x[keep], net(x[keep]).argmax(-1)
    assert len(x) >= 5
    inputs = x.clone().requires_grad_(True)
    (float32,) = torch.autograd.grad(F.cross_entropy(net(inputs), y, reduction="sum"), inputs)
    assert (float32 == 0).all()  # what an attack following autograd in float32 steps along: nothing
    inputs64 = x.double().requires_grad_(True)
    (float64,) = torch.autograd.grad(
        F.cross_entropy(copy.deepcopy(net).double()(inputs64), y, reduction="sum"), inputs64
    )
    _, gradient = attack({"use": "pgd", "eps": 0.1}).loss_and_gradient(as_sampled(net), x, y)
    assert gradient.dtype == torch.float32 and (gradient.flatten(1).abs().amax(dim=1) > 0).all()
    reference = float64.flatten(1) / float64.flatten(1).abs().amax(dim=1, keepdim=True)  # norms of 1e-200: rescaled
    cosine = F.cosine_similarity(gradient.flatten(1).double(), reference, dim=1)
    assert (cosine > 1 - 1e-5).all()
    # and PGD moves these examples where a float32 gradient left them: the sign steps of float64's gradient
    result = attack({"use": "pgd", "eps": 0.05, "steps": 3, "random_start": False})(as_sampled(net), x, y)
    assert (result.x_adv != x).flatten(1).any(dim=1).all()
