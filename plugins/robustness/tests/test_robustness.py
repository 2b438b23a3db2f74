"""advbayes-robustness against closed forms, per-class / per-count loops and mathematical properties."""

from __future__ import annotations

import copy

import attrs
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import advbayes
from advbayes import AttackResult, EvalBatch, as_sampled, frozen, predict, to_bayesian
from advbayes.testing import create_plugin_manager, plugin_registry
from advbayes_robustness.condition import discriminant_jacobian, robustness_conditions
from advbayes_robustness.models import MCDropoutModel, Smoothed

CPU = torch.device("cpu")


def build(kind: str, spec):
    registry = plugin_registry()
    return registry.build(kind, registry.resolve(kind, spec, where=("test", "test", kind)))


def eval_batch(model, x, y, delta, samples: int = 5) -> EvalBatch:
    x_adv = x + delta
    with torch.no_grad():
        probs, _ = predict(model, x_adv, samples)
    attack = build("attacks", "none")
    return EvalBatch(
        model=model,
        x=x,
        y=y,
        result=AttackResult(x_adv=x_adv, delta=delta),
        probs=probs,
        attack=attack,
        eps=0.0,
        inference_samples=samples,
        device=CPU,
    )


def linear_bnn(dims: int = 6, classes: int = 4, sigma: float = 0.3) -> nn.Module:
    torch.manual_seed(0)
    return to_bayesian(nn.Linear(dims, classes), init_sigma=sigma, seed=1)


# ------------------------------------------------------------------------------------------- conditions


def test_linear_condition_predicts_the_attack_example_by_example() -> None:
    """Theorem 3.2: with linear discriminants (logits of a linear model with random weights) it is exact."""
    model = linear_bnn()
    torch.manual_seed(2)
    x, y = torch.randn(300, 6), torch.randint(0, 4, (300,))
    delta = torch.randn(300, 6) * torch.rand(300, 1) * 2  # lengths from 0 to ~5: both outcomes occur
    with frozen(model):
        f, jacobian = discriminant_jacobian(model, x, samples=7, on="logits")
        f_adv = model(x + delta, samples=7).mean(0)
    conditions = robustness_conditions(f, jacobian, y, delta, smoothness=1.0)
    survived = conditions.correct & (f_adv.argmax(-1) == y)
    assert 20 < int(survived.sum()) < int(conditions.correct.sum())  # not a trivial case
    assert torch.equal(conditions.linear_robust, survived)
    # through the metric: the linear fraction equals the accuracy on the same draws
    state = build("metrics", "condition-on-logits").create()
    state.update(eval_batch(model, x, y, delta, samples=7))
    values = state.compute()
    assert float(values["linear_fraction"]) == pytest.approx(float(values["same_draws_accuracy"]))


def test_the_smooth_condition_is_never_looser_than_the_linear_one() -> None:
    torch.manual_seed(3)
    f = torch.randn(200, 5).softmax(-1)
    y = f.argmax(-1)
    jacobian, delta = torch.randn(200, 5, 12), torch.randn(200, 12)
    linear = robustness_conditions(f, jacobian, y, delta, smoothness=0.5)
    for smoothness in (1e-3, 0.5, 20.0):
        smooth = robustness_conditions(f, jacobian, y, delta, smoothness=smoothness)
        assert (smooth.r_smooth <= linear.r_linear).all()
        assert (smooth.smooth_robust <= linear.linear_robust).all()


def test_batched_jacobian_equals_per_class_gradients() -> None:
    torch.manual_seed(4)
    model = to_bayesian(nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)), init_sigma=0.2, seed=5)
    x = torch.randn(6, 5)
    with frozen(model):
        f, jacobian = discriminant_jacobian(model, x, samples=4, on="probs")
        for c in range(3):
            xc = x.clone().requires_grad_(True)
            (expected,) = torch.autograd.grad(model(xc, samples=4).softmax(-1).mean(0)[:, c].sum(), xc)
            torch.testing.assert_close(jacobian[:, c], expected, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(f, model(x, samples=4).softmax(-1).mean(0).detach(), rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------- gradient limit / variance


def test_expected_gradient_of_a_deterministic_model_does_not_depend_on_the_sample_count() -> None:
    torch.manual_seed(6)
    model = as_sampled(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)))
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    spec = {"use": "gradient-limit", "sample_counts": [1, 3, 10], "examples": 20, "max_draws": 4}  # 7 = 4 + 3
    state = build("metrics", spec).create()
    state.update(eval_batch(model, x, y, torch.zeros_like(x)))
    values = state.compute()
    xr = x.clone().requires_grad_(True)
    (reference,) = torch.autograd.grad(F.cross_entropy(model(xr)[0], y, reduction="sum"), xr)
    for count in (1, 3, 10):
        assert float(values[f"expected_gradient_abs/s{count}_mean"]) == pytest.approx(
            float(reference.abs().mean()), rel=1e-5
        )


def test_expected_gradient_of_a_bnn_equals_the_loop_over_its_draws_in_every_repeat() -> None:
    model = to_bayesian(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)), init_sigma=0.3, seed=7)
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    state = build("metrics", {"use": "gradient-limit", "sample_counts": [2, 6], "examples": 5, "repeats": 2}).create()
    batch = eval_batch(model, x, y, torch.zeros_like(x))
    model.seed(11)
    state.update(batch)
    model.seed(11)  # the same draws again: per repeat 2 then 4 more, as the metric took them
    means = []
    for _ in range(2):
        total = torch.zeros_like(x)
        for n in (2, 4):
            xr = x.clone().requires_grad_(True)
            logits = model(xr, samples=n)
            (g,) = torch.autograd.grad(F.cross_entropy(logits.flatten(0, 1), y.repeat(n), reduction="sum"), xr)
            total += g
        means.append(float((total / 6).abs().mean()))
    values = state.compute()
    assert means[0] != pytest.approx(means[1], rel=1e-3)  # the repeats drew different weights
    assert float(values["expected_gradient_abs/s6_mean"]) == pytest.approx(sum(means) / 2, rel=1e-5)
    assert float(values["expected_gradient_abs/s6_repeat_sd"]) == pytest.approx(
        abs(means[0] - means[1]) / 2**0.5, rel=1e-4
    )


def test_prediction_variance_is_zero_for_deterministic_and_positive_for_bayesian_models() -> None:
    torch.manual_seed(8)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    metric = build("metrics", {"use": "prediction-variance", "draws": 200, "chunk": 64})
    deterministic = metric.create()
    deterministic.update(eval_batch(as_sampled(copy.deepcopy(net)), x, y, torch.zeros_like(x)))
    assert float(deterministic.compute()["prediction_variance_mean"]) == 0.0
    bayesian = metric.create()
    model = to_bayesian(net, init_sigma=0.3, seed=9)
    batch = eval_batch(model, x, y, torch.zeros_like(x))
    model.seed(9)
    bayesian.update(batch)
    values = bayesian.compute()
    assert float(values["prediction_variance_q05"]) > 0
    model.seed(9)  # against a direct estimate from the same draws, taken in the same chunks
    with torch.no_grad():
        p_y = torch.cat([model(x, samples=n).softmax(-1)[:, range(10), y] for n in (64, 64, 64, 8)])
    expected = p_y.double().var(dim=0, unbiased=False).mean()
    assert float(values["prediction_variance_mean"]) == pytest.approx(float(expected), rel=1e-6)


def test_extreme_predictions_are_counted() -> None:
    model = as_sampled(nn.Linear(2, 3))
    with torch.no_grad():
        model.net.weight.copy_(torch.tensor([[1000.0, 0.0], [0.0, 0.0], [-1000.0, 0.0]]))
        model.net.bias.zero_()
    x, y = torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([0, 1])
    state = build("metrics", {"use": "prediction-variance", "draws": 10}).create()
    state.update(eval_batch(model, x, y, torch.zeros_like(x)))
    values = state.compute()
    assert float(values["extreme_predictions"]) == 10  # the first example, every draw: softmax is exactly 1
    assert float(values["extreme_fraction"]) == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------- softmax robustness


def test_softmax_robustness_against_a_direct_computation() -> None:
    torch.manual_seed(10)
    model = as_sampled(nn.Linear(3, 4))
    x, y = torch.rand(30, 3), torch.randint(0, 4, (30,))
    delta = 0.3 * torch.randn(30, 3)
    state = build("metrics", "softmax-robustness").create()
    state.update(eval_batch(model, x, y, delta, samples=1))
    with torch.no_grad():
        expected = 1 - (model.net(x).softmax(-1) - model.net(x + delta).softmax(-1)).abs().amax(-1).mean()
    assert float(state.compute()["softmax_robustness"]) == pytest.approx(float(expected), rel=1e-6)


# ------------------------------------------------------------------------------------------- models


def test_mc_dropout_keeps_dropout_on_at_prediction_with_the_right_rate() -> None:
    model = MCDropoutModel(nn.Sequential(nn.Identity(), nn.Dropout(0.25), nn.Identity()), seed=0).eval()
    out = model(torch.ones(50, 40), samples=30)
    assert out.shape == (30, 50, 40)
    torch.testing.assert_close(out.unique(), torch.tensor([0.0, 1 / 0.75]))  # inverted dropout
    assert float((out == 0).float().mean()) == pytest.approx(0.25, abs=0.01)
    with model.frozen():  # frozen: the same masks on every call
        torch.testing.assert_close(model(torch.ones(50, 40), samples=3), model(torch.ones(50, 40), samples=3))
    with pytest.raises(ValueError, match="no dropout layer"):
        MCDropoutModel(nn.Sequential(nn.Linear(2, 2)))


def test_mc_dropout_runs_the_trunk_before_the_first_dropout_once() -> None:
    calls = []
    trunk = nn.Linear(4, 8)
    trunk.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    model = MCDropoutModel(nn.Sequential(trunk, nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3)))
    assert model(torch.randn(5, 4), samples=20).shape == (20, 5, 3)
    assert calls == [5]


def test_smoothing_adds_noise_of_the_given_variance() -> None:
    linear = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 2.0, -2.0]]))
    model = Smoothed(as_sampled(linear), noise_variance=0.04, seed=0)
    with torch.no_grad():
        out = model(torch.zeros(1, 3), samples=20000)
    assert float(out.var()) == pytest.approx(0.04 * 9.0, rel=0.05)  # Var(w . n) = s2 ||w||^2
    assert float(out.mean()) == pytest.approx(0.0, abs=0.02)


def test_the_condition_metric_takes_l_from_a_smoothed_model() -> None:
    model = Smoothed(as_sampled(nn.Linear(3, 2)), noise_variance=0.1, seed=0)
    x, y = torch.rand(4, 3), torch.randint(0, 2, (4,))
    state = build("metrics", "robustness-condition").create()
    state.update(eval_batch(model, x, y, 0.1 * torch.ones_like(x)))
    assert float(state.compute()["smoothness_L"]) == pytest.approx(20.0)


# ------------------------------------------------------------------------------------------- through the engine

FAST = {"epochs": 1, "eps": [0.3], "track": False}


def test_transfer_correlation_matrix_through_the_engine() -> None:
    group = advbayes.run(
        "moons",
        pm=create_plugin_manager(),
        defense=None,
        defenses=["standard", {"use": "standard", "name": "other"}],
        model={"use": "mlp", "widths": [16]},
        attacks=["fgsm"],
        metrics=["accuracy", "transfer-correlation"],
        seed=1,
        **FAST,
    )
    standard, other = group.results
    (record,) = other.records
    assert record.metrics["rho_standard_to_standard"] == pytest.approx(1.0)
    assert record.metrics["rho_other_to_other"] == pytest.approx(1.0)
    # independent recomputation of rho(standard -> other) from eq. 14
    dataset = build("datasets", other.spec["dataset"])
    x, y = dataset.data("test").tensors
    fgsm = attrs.evolve(build("attacks", "fgsm"), eps=0.3, value_range=dataset.value_range)
    accuracy = lambda m, inputs: float((m(inputs).argmax(-1) == y).float().mean())  # noqa: E731
    source, target = standard.model.net.cpu(), other.model.net.cpu()
    clean = accuracy(target, x)
    under_source = accuracy(target, fgsm(as_sampled(source), x, y).x_adv)
    under_self = accuracy(target, fgsm(as_sampled(target), x, y).x_adv)
    assert record.metrics["rho_standard_to_other"] == pytest.approx(
        (clean - under_source) / (clean - under_self), abs=1e-6
    )


@pytest.mark.slow
@pytest.mark.usefixtures("batched_draws")  # runs end to end: the auto strategy's timing race adds seconds
def test_sampling_fashion_style_runs_on_a_subset_with_sweeps_as_child_runs(store: str) -> None:
    group = advbayes.run(
        "sampling-fashion-style",
        tracking_uri=store,
        pm=create_plugin_manager(),
        epochs=1,
        seeds=[0],
        attack_samples=[1, 5],
        inference_samples=[1, 5],
        eps=[0.5, 1.5],
        **{
            "dataset.n_train": 128,
            "dataset.n_test": 32,
            "metrics": ["accuracy", "robustness-condition", {"use": "prediction-variance", "draws": 50}],
        },
    )
    assert [r.spec["defense"]["name"] for r in group.results] == ["bnn", "mc-dropout-0.3", "mc-dropout-0.6"]
    for result in group.results:
        labels = {r.attack_label for r in result.records}
        assert labels == {f"fgm:sa{a}:si{i}" for a in (1, 5) for i in (1, 5)}
        assert {
            "fgm/accuracy_vs_attack_samples.png",
            "fgm/accuracy_vs_inference_samples.png",
            "fgm/cos_alpha_by_attack_samples.png",
            "fgm:sa5:si5/condition_fractions_vs_eps.png",
        } <= set(result.figures)
        assert result.model_metrics["prediction_variance_mean"] > 0
        for record in result.records:
            assert record.metrics["smooth_fraction"] <= record.metrics["linear_fraction"] + 1e-9


@pytest.mark.slow
def test_smoothing_condition_experiment_uses_the_smoothing_models_l_on_a_subset() -> None:
    group = advbayes.run(
        "smoothing-condition-mnist-5k",
        track=False,
        pm=create_plugin_manager(),
        epochs=1,
        seeds=[0],
        **{"dataset.n_train": 128, "dataset.n_test": 32},
    )
    (result,) = group.results
    assert result.spec["defense"]["name"] == "smoothing-0.1" and result.spec["attack_samples"] == [10]
    assert {r.eps for r in result.records} == {0.05, 0.1, 0.2, 0.5, 1.0, 1.5, 3.0}
    for record in result.records:
        assert record.attack_label == "fgm" and record.attack_samples == 10
        assert record.metrics["smoothness_L"] == pytest.approx(2 / 0.1)  # the paper's L for noise variance 0.1
        assert record.metrics["smooth_fraction"] <= record.metrics["linear_fraction"] + 1e-9


def test_mc_dropout_and_smoothing_continue_their_draws_from_a_saved_draw_state() -> None:
    """A checkpoint keeps their generators (draw_state.py): a resumed run's masks and noise go on, no new stream."""
    from advbayes.engine.checkpoints import rng_state, set_rng_state

    x = torch.rand(4, 8)
    for build in (
        lambda seed: MCDropoutModel(nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.Linear(8, 3)), seed=seed),
        lambda seed: Smoothed(as_sampled(nn.Linear(8, 3)), noise_variance=0.04, seed=seed),
    ):
        torch.manual_seed(0)
        model = build(0).eval()
        model(x, samples=5)
        saved = rng_state(model)
        expected = model(x, samples=5)
        torch.manual_seed(0)
        rebuilt = build(7).eval()
        set_rng_state(saved, rebuilt)
        assert torch.equal(rebuilt(x, samples=5), expected)
