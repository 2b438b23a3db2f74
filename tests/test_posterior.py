"""Training a posterior: width statistics, the convergence verdict, the scale-parameter group, IVON, until_converged,
and the stored-sample ensemble (the HMC entry's sample dimension)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from mlflow import MlflowClient
from torch import nn
from torch.func import functional_call

import advbayes
from advbayes.errors import RunError
from advbayes.posterior import convergence_findings, convergence_verdict, width_statistics
from advbayes.posterior.convergence import LOSS_FLOOR, loss_change, relative_change, relative_trend
from advbayes.posterior.optimizers import IVONSteps, make_optimizer
from advbayes.posterior.width import WIDTH_KEY
from advbayes.registry import load_registry
from advbayes.stochastic import SampleEnsemble, to_bayesian

MOONS_BNN = {"defense": "bnn", "dataset.train_size": 256, "batch_size": 32, "attacks": ["none"]}


def bayesian_mlp() -> nn.Module:
    torch.manual_seed(0)
    return to_bayesian(nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3)), init_sigma=0.1)


def test_width_statistics_match_numpy_over_every_gaussian_weight() -> None:
    model = bayesian_mlp()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.uniform_(-3, 0)  # log sigmas and means alike: the statistics read log sigma only
    sigma2 = np.concatenate(
        [(2 * p.log_sigma.detach().double()).exp().numpy().ravel() for p in model.gaussian_parameters()]
    )
    stats = width_statistics(model)
    assert stats[WIDTH_KEY] == pytest.approx(sigma2.mean(), rel=1e-6)
    for q in (10, 50, 90):
        assert stats[f"posterior/sigma2_q{q}"] == pytest.approx(np.quantile(sigma2, q / 100), rel=1e-6)
    assert stats["posterior/linear/sigma2_mean"] == pytest.approx(sigma2.mean(), rel=1e-6)  # one layer kind here
    assert width_statistics(nn.Linear(2, 2)) == {}


def history(widths: list[float], losses: list[float]) -> list[dict[str, float]]:
    return [{"epoch": i + 1, "loss": loss, WIDTH_KEY: w} for i, (w, loss) in enumerate(zip(widths, losses))]


def test_verdict_compares_the_means_and_the_medians_of_the_last_two_windows() -> None:
    widths = [1e-4, 5e-4, 1.00e-3, 1.01e-3, 1.00e-3, 1.01e-3, 1.00e-3, 1.01e-3]
    settled = history(widths, [3, 2, 1.0, 1.01, 0.99, 1.0, 1.0, 1.0])
    verdict = convergence_verdict(settled, 1e-4, tol=0.02, window=3)
    assert verdict is not None and verdict.converged
    # means (1.01 + 1.00 + 1.01) / 3 vs (1.00 + 1.01 + 1.00) / 3 moved less than medians 1.01 vs 1.00: the larger counts
    assert verdict.width_change == pytest.approx(0.01e-3 / (3.01e-3 / 3))
    assert convergence_findings("r", verdict) == []
    growing = history([1e-4 * 1.1**i for i in range(8)], [1.0] * 8)
    verdict = convergence_verdict(growing, 1e-4, tol=0.02, window=3)
    assert verdict is not None and not verdict.converged
    [finding] = convergence_findings("r", verdict)
    assert finding.tag == "advbayes.check.posterior.unconverged" and "mean sigma^2 changed by 33.1%" in finding.message


def test_a_width_still_at_its_initial_value_never_converges_and_is_named() -> None:
    pinned = history([1.1e-4] * 6, [1.0] * 6)  # width and loss perfectly flat, but x1.1 of the initial width
    verdict = convergence_verdict(pinned, 1e-4, tol=0.02, window=3)
    assert verdict is not None and not verdict.converged and not verdict.left_initial_width
    [finding] = convergence_findings("moons/bnn seed 0", verdict)  # one warning, whatever the reasons
    assert finding.tag == "advbayes.check.posterior.unconverged"
    assert finding.message.startswith("run moons/bnn seed 0, posterior after 6 epochs not converged: mean sigma^2")
    assert "x1.10 of its initial 0.0001" in finding.message and "scale_lr" in finding.message


def test_a_loss_that_settled_above_where_it_started_has_diverged_not_converged() -> None:
    verdict = convergence_verdict(history([1e-4, *[1e-2] * 7], [2.0, *[9.0] * 7]), 1e-4, tol=0.02, window=3)
    assert verdict is not None and verdict.diverged and not verdict.converged
    [finding] = convergence_findings("r", verdict)
    assert "above the first epoch's: training diverged" in finding.message


def test_too_few_epochs_are_not_converged_and_say_how_many_are_needed() -> None:
    verdict = convergence_verdict(history([1e-3] * 5, [1.0] * 5), 1e-4, tol=0.02, window=3)
    assert verdict is not None and not verdict.converged and math.isnan(verdict.width_change)
    [finding] = convergence_findings("r", verdict)
    assert "needs at least 6 epochs" in finding.message
    assert convergence_verdict([{"epoch": 1, "loss": 1.0}], 0.0, tol=0.02, window=3) is None  # no Gaussian weights


def experiment(**settings: object) -> object:
    registry = load_registry()
    spec = registry.resolve_experiment("moons", [("defense", "bnn"), *settings.items()])
    return registry.build("experiments", spec)


def test_scale_lr_puts_exactly_the_log_sigmas_in_a_group_of_their_own() -> None:
    net = bayesian_mlp()
    registry = load_registry()
    defense = registry.build("defenses", registry.resolve("defenses", "bnn", where=("test", "x", "y")))
    steps = make_optimizer(experiment(lr=0.001, scale_lr=0.05), defense, net, n_train=100)
    means, scales = steps.optimizer.param_groups
    log_sigmas = {id(p.log_sigma) for p in net.gaussian_parameters()}
    assert {id(p) for p in scales["params"]} == log_sigmas and scales["lr"] == 0.05
    assert not log_sigmas & {id(p) for p in means["params"]} and means["lr"] == 0.001
    assert defense.default_scale_lr == 0.01  # bnn's own default when the experiment sets none
    _, default = make_optimizer(experiment(lr=0.001), defense, net, n_train=100).optimizer.param_groups
    assert default["lr"] == 0.01
    standard = registry.build("defenses", registry.resolve("defenses", "standard", where=("test", "x", "y")))
    [single] = make_optimizer(experiment(lr=0.001), standard, net, n_train=100).optimizer.param_groups
    assert len(single["params"]) == len(list(net.parameters()))  # no default: one group


def test_adam_moves_log_sigma_by_at_most_about_lr_per_step_and_the_scale_group_lifts_that_cap() -> None:
    # Adam's step is lr * m / (sqrt(v) + eps), and |m / sqrt(v)| stays near 1 for a gradient of steady sign (it can
    # pass 1 a little when the gradient grows): the cap the scale group exists for. Measured on a real BNN loss.
    def trained(**settings: object) -> float:
        result = advbayes.run("moons", track=False, epochs=1, lr=0.001, **{**MOONS_BNN, "batch_size": 5}, **settings)
        model = result.model
        return max(float(p.log_sigma.detach().max()) for p in model.gaussian_parameters()) - math.log(0.01)

    steps = 256 // 5 + 1
    assert 0.001 * steps * 0.5 < trained(scale_lr=0.001) <= 0.001 * steps * 1.25  # one lr for all, as plain Adam
    assert trained(scale_lr=0.01) > 0.001 * steps * 3


def test_ivon_sets_every_sigma_from_its_hessian_and_resumes_its_step_count() -> None:
    net = bayesian_mlp()
    registry = load_registry()
    defense = registry.build("defenses", registry.resolve("defenses", "bnn", where=("test", "x", "y")))
    steps = make_optimizer(experiment(optimizer="ivon", lr=0.1), defense, net, n_train=100)
    assert isinstance(steps, IVONSteps)
    assert steps.ess == pytest.approx(100 / defense.alpha)  # the tempered ELBO's effective sample size
    # the initial width is the defense's init_sigma (hess_init = 1 / (ess sigma0^2))
    assert all(
        torch.allclose(p.log_sigma, torch.full_like(p.log_sigma, math.log(0.1))) for p in net.gaussian_parameters()
    )
    x, y = torch.randn(16, 2), torch.randint(0, 3, (16,))
    for _ in range(3):
        with steps.sampling():
            loss = nn.functional.cross_entropy(net(x, samples=2)[0], y)
            steps.zero_grad()
            loss.backward()
        steps.step()
    hess = steps.optimizer.param_groups[0]["hess"]
    expected = -0.5 * torch.log(steps.ess * hess)
    got = torch.cat([p.log_sigma.flatten() for p in net.gaussian_parameters()])
    assert torch.allclose(got, expected) and not torch.allclose(got, torch.full_like(got, math.log(0.1)))
    state = steps.state_dict()
    again = make_optimizer(experiment(optimizer="ivon", lr=0.1), defense, bayesian_mlp(), n_train=100)
    again.load_state_dict(state)
    assert again.optimizer.current_step == 3  # type: ignore[attr-defined]  # IVON's bias correction continues


def test_ivon_inside_sampling_draws_no_noise_of_the_layers_own() -> None:
    net = bayesian_mlp()
    x = torch.randn(4, 2)
    net.noise_off = True
    out = net(x, samples=3)
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def test_ivon_on_a_deterministic_defense_is_refused_before_any_work() -> None:
    with pytest.raises(RunError, match=r"experiments.moons: key 'optimizer': optimizer 'ivon' learns a posterior: "):
        advbayes.run("moons", track=False, optimizer="ivon")


def test_until_converged_stops_at_the_first_converged_epoch_and_logs_the_verdict(store: str) -> None:
    settings = {"epochs": 60, "until_converged": True, "convergence_tol": 0.05, "convergence_window": 2}
    result = advbayes.run("moons", tracking_uri=store, lr=0.01, scale_lr=0.05, **MOONS_BNN, **settings)
    epochs = len(result.history)
    assert 4 <= epochs < 60
    initial = 0.01**2
    assert convergence_verdict(result.history, initial, tol=0.05, window=2).converged  # type: ignore[union-attr]
    earlier = convergence_verdict(result.history[:-1], initial, tol=0.05, window=2)
    assert earlier is not None and not earlier.converged  # the first such epoch
    assert result.model_metrics["posterior/converged"] == 1.0
    run = MlflowClient(store).get_run(result.run_id)
    assert run.data.tags["posterior.converged"] == "true"
    width = MlflowClient(store).get_metric_history(result.run_id, "train/posterior/sigma2_mean")
    assert [m.step for m in width] == list(range(1, epochs + 1))
    assert "train/posterior/linear/sigma2_q90" in run.data.metrics


def test_an_unconverged_posterior_is_warned_and_tagged(store: str) -> None:
    settings = {**MOONS_BNN, "batch_size": 256, "epochs": 2}  # two steps: the width cannot move
    with pytest.warns(advbayes.EvaluationWarning) as warned:
        result = advbayes.run("moons", tracking_uri=store, **settings)
    [message] = [str(w.message) for w in warned if "posterior" in str(w.message)]
    assert message.startswith("run moons/bnn seed 0, posterior after 2 epochs not converged: mean sigma^2 ")
    tags = MlflowClient(store).get_run(result.run_id).data.tags
    assert tags["posterior.converged"] == "false"
    assert tags["advbayes.check.posterior.unconverged"] == message
    assert "never left its initialization" in message and "needs at least 10 epochs" in message


def test_sample_ensemble_matches_a_loop_over_its_stored_samples() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    ensemble = SampleEnsemble(net, 6, seed=1)
    x = torch.randn(4, 3)
    assert ensemble(x, samples=3).shape == (1, 4, 2)  # nothing stored yet: the network itself
    count = sum(p.numel() for p in net.parameters())
    stored = torch.randn(6, count)
    ensemble.store(stored)
    with ensemble.frozen():
        out = ensemble(x, samples=4)
        index = ensemble._frozen
    assert index is not None and len(set(index.tolist())) == 4  # S <= N: without replacement
    for s, i in enumerate(index.tolist()):  # a second implementation: functional_call per sample
        params = ensemble.unflatten(stored[i : i + 1])
        expected = functional_call(net, {k: v[0] for k, v in params.items()}, (x,))
        assert torch.allclose(out[s], expected, atol=1e-6)
    draws = {tuple(ensemble._choose(2).tolist()) for _ in range(30)}
    assert len(draws) > 5  # fresh samples at every call
    assert ensemble(x, samples=20).shape == (20, 4, 2)  # S > N: with replacement
    with pytest.raises(ValueError, match="expected at most 6 x"):
        ensemble.store(torch.zeros(7, count))


def test_until_converged_stops_a_deterministic_network_once_its_loss_settles() -> None:
    settings = {"epochs": 80, "until_converged": True, "convergence_tol": 0.05, "convergence_window": 2}
    result = advbayes.run("moons", track=False, **{"dataset.train_size": 256}, **settings)
    losses = [h["loss"] for h in result.history]
    assert 4 <= len(losses) < 80
    assert "posterior/converged" not in result.model_metrics  # no posterior, no posterior verdict

    def change(values: list[float]) -> float:  # window means; a loss below 0.01 nats moves relative to 0.01
        before, now = sum(values[-4:-2]) / 2, sum(values[-2:]) / 2
        return abs(now - before) / max(abs(before), 0.01)

    assert change(losses) < 0.05 and change(losses[:-1]) >= 0.05


def test_a_loss_falling_toward_zero_settles_once_it_moves_less_than_tol_of_the_floor() -> None:
    # a network that fits its training set: the loss halves every epoch toward 0, so its relative change stays 97 %
    losses = [2.0 * 0.5**i for i in range(40)]
    assert relative_change(losses, 5) == pytest.approx(1 - 0.5**5)  # never below any tol: it would never stop
    settled = loss_change(losses, 5)
    before, now = sum(losses[-10:-5]) / 5, sum(losses[-5:]) / 5
    assert settled == pytest.approx((before - now) / LOSS_FLOOR) and settled < 0.02
    above = [3.0, 2.0, 1.0, 1.5]  # window means above the floor: judged as before
    assert loss_change(above, 2) == relative_change(above, 2)
    widths = [1e-4 * 0.5**i for i in range(40)]  # a width is never floored: sigma^2 lives far below 0.01
    verdict = convergence_verdict(history(widths, losses), 1.0, tol=0.02, window=5)
    assert verdict is not None and verdict.loss_change == pytest.approx(settled) and not verdict.converged


def test_the_digits_bench_stops_a_network_that_fits_its_training_set_before_the_cap() -> None:
    result = advbayes.run("bench-digits", track=False)  # standard: its loss reaches 5e-6 nats if trained to the cap
    losses = [h["loss"] for h in result.history]
    assert len(losses) < 100 and losses[-1] < 0.01  # 300 epochs before the floor
    assert loss_change(losses, 5) < 0.02 <= loss_change(losses[:-1], 5)  # the first epoch the rule allows
    assert relative_change(losses, 5) > 0.02  # relative to itself the loss is still moving


def test_one_noisy_epoch_cannot_make_a_falling_loss_look_settled() -> None:
    """gradient-limit-mnist-5k's seed 1: an ELBO spike lifted the last window's mean to the one before (6.35 ->
    6.42 nats, 1.1 %) while the loss fell from ~6.3 to 5.0; the window medians (6.26 -> 5.87) show the fall."""
    losses = [7.009, 6.639, 6.262, 5.753, 6.098, 8.806, 6.984, 5.874, 5.414, 5.03]
    by_mean = abs(sum(losses[5:]) / 5 - sum(losses[:5]) / 5) / (sum(losses[:5]) / 5)
    assert by_mean < 0.02  # the means alone would have stopped here
    assert loss_change(losses, 5) == pytest.approx((6.262 - 5.874) / (sum(losses[:5]) / 5))
    assert loss_change(losses, 5) > 0.06
    flat = [3.0, 3.1, 2.9, 3.05, 2.95, 3.0, 2.98, 3.02, 9.0, 3.01]  # settled but for a spike: its mean still counts
    assert relative_change(flat, 5) == pytest.approx(abs(sum(flat[5:]) - sum(flat[:5])) / sum(flat[:5]))
    rising = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.1, 1.1, 1.1]  # a step up: both move
    assert relative_change(rising, 5) == pytest.approx(0.1)


def test_relative_trend_is_the_theil_sen_slope_over_the_last_span_relative_to_their_median() -> None:
    rng = np.random.default_rng(0)
    values = [float(v) for v in 3.0 - 0.01 * np.arange(14) + rng.normal(0, 0.02, 14)]
    values[9] = 9.0  # one noisy epoch: the median of the pairwise slopes barely notices it
    last = values[-10:]
    expected = scipy.stats.theilslopes(last)[0] / float(np.median(last))  # a second implementation
    assert relative_trend(values, 10) == pytest.approx(expected, rel=1e-12)
    assert -0.006 < relative_trend(values, 10) < -0.002  # falling by ~0.01 / 3 per step despite the spike
    assert relative_trend([5.0 - 0.1 * i for i in range(6)], 4) == pytest.approx(-0.1 / 4.65)  # exact on a line
    assert relative_trend([2e-4, 4e-4, 6e-4], 3) == pytest.approx(2e-4 / 4e-4)  # sigma^2 is never floored
    assert relative_trend([0.0, 0.001], 2, floor=LOSS_FLOOR) == pytest.approx(0.001 / LOSS_FLOOR)
    assert math.isnan(relative_trend(values, 15)) and math.isnan(relative_trend(values, 1))


def test_a_converged_verdict_logs_how_fast_width_and_loss_still_moved() -> None:
    # the rule compares two windows against tol: a loss falling 0.3 % per epoch moves ~1.5 % per 5-epoch window
    losses = [3.0 * (1 - 0.003 * i) for i in range(20)]
    widths = [1e-2] * 20
    verdict = convergence_verdict(history(widths, losses), 1e-4, tol=0.02, window=5)
    assert verdict is not None and verdict.converged
    metrics = verdict.metrics()
    last = losses[-10:]
    assert metrics["posterior/loss_trend"] == pytest.approx(-3.0 * 0.003 / float(np.median(last)))
    assert metrics["posterior/width_trend"] == 0.0
    short = convergence_verdict(history(widths[:6], losses[:6]), 1e-4, tol=0.02, window=5)
    assert short is not None and math.isnan(short.metrics()["posterior/loss_trend"])
