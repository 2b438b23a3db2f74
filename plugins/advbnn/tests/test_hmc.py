"""The hmc entry: its sampler against a posterior known in closed form, and the defense through the real plugin
manager (stored samples as the sample dimension, diagnostics, a resume that does not sample again)."""

from __future__ import annotations

import math

import pytest
import torch
from mlflow import MlflowClient
from torch import nn
from torch.func import functional_call

import advbayes
from advbayes import SampleEnsemble, hookimpl
from advbayes.testing import create_plugin_manager
from advbayes_advbnn.hmc import (
    chain_diagnostics,
    jittered_steps_hmc,
    prior_only_check,
    prior_only_weights,
    sample_posterior,
)

MOONS_HMC = {
    "defense": "hmc",
    "defense.num_samples": 20,
    "defense.warmup": 50,  # 20 left some machines' chains at acceptance 0 (step size still unadapted)
    "defense.num_steps": 5,
    "defense.max_train": 200,
    "dataset.train_size": 200,
    "dataset.test_size": 100,
    "epochs": 1,
}


# Both must mix well on a 3-d Gaussian. HMC draws its step count from 5 to 10 per iteration: a fixed 10 steps of the
# adapted step size (0.66) is one period of the mass-adapted posterior, and the chains stood still (ESS 2 of 1,200,
# split R-hat 1.50); drawn, ESS 1,053 and R-hat 1.002 on seed 0.
@pytest.mark.parametrize(("nuts", "num_samples", "r_hat_limit"), [(True, 300, 1.05), (False, 600, 1.05)])
def test_hmc_recovers_bayesian_linear_regression_within_its_monte_carlo_error(
    nuts: bool, num_samples: int, r_hat_limit: float
) -> None:
    torch.manual_seed(0)
    n, d, noise, tau = 40, 3, 0.5, 1.0
    x = torch.randn(n, d)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + noise * torch.randn(n)
    net = nn.Linear(d, 1, bias=False)

    def log_likelihood(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return -((y - functional_call(net, params, (x,)).squeeze(-1)) ** 2).sum() / (2 * noise**2)

    drawn = sample_posterior(
        net,
        log_likelihood,
        prior_sigma=tau,
        num_samples=num_samples,
        warmup=200,
        chains=2,
        num_steps=10,
        step_size=0.05,
        nuts=nuts,
        init_jitter=0.5,
        seed=0,
    )
    # closed form: Sigma = (X'X / s^2 + I / tau^2)^-1, m = Sigma X'y / s^2
    covariance = torch.linalg.inv(x.T @ x / noise**2 + torch.eye(d) / tau**2).double()
    mean = covariance @ x.T.double() @ y.double() / noise**2
    samples = drawn.samples.reshape(-1, d).double()
    diagnostics = chain_diagnostics(drawn.samples)
    assert diagnostics["r_hat_max"] < r_hat_limit
    standard_error = covariance.diagonal().sqrt() / diagnostics["ess_min"] ** 0.5
    assert ((samples.mean(0) - mean).abs() < 4 * standard_error).all()
    # the covariance's entries, within a generous relative error of a sample covariance at this ESS
    error = (torch.cov(samples.T) - covariance).abs().max() / covariance.diagonal().max()
    assert error < 0.3
    assert 0.5 < drawn.accept_rate <= 1.0


def test_the_acceptance_rate_is_the_share_of_kept_iterations_that_moved() -> None:
    # A rejected HMC proposal repeats the sample before it, so the share of kept samples that differ from their
    # predecessor is the acceptance rate, up to the first kept iteration (compared with an unkept sample). The rate
    # is read off the kernel's counts, not pyro's MCMC.diagnostics(), which also computes every weight's ESS.
    torch.manual_seed(0)
    x, y = torch.randn(30, 4), torch.randn(30)
    net = nn.Linear(4, 1)

    def log_likelihood(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return -((y - functional_call(net, params, (x,)).squeeze(-1)) ** 2).sum() / 2

    kept = 60
    drawn = sample_posterior(
        net, log_likelihood, prior_sigma=1.0, num_samples=kept, warmup=20, chains=2, num_steps=40, step_size=0.5,
        nuts=False, init_jitter=0.1, seed=0,
    )  # fmt: skip
    moved = (drawn.samples[:, 1:] != drawn.samples[:, :-1]).any(dim=-1).double().mean()
    assert 0.0 < float(moved) < 1.0  # some proposals were rejected: the check can tell the two apart
    assert abs(drawn.accept_rate - float(moved)) <= 1 / kept


def test_hmc_defense_stores_its_samples_as_the_sample_dimension_with_diagnostics() -> None:
    result = advbayes.run("moons", track=False, **MOONS_HMC, **{"attacks": ["none"]})
    model = result.model
    assert isinstance(model, SampleEnsemble) and model.sample_count == 2 * 20
    metrics = result.model_metrics
    for key in ("hmc_r_hat_max", "hmc_ess_min", "hmc_weight_r_hat_max", "hmc_accept_rate", "hmc_samples_per_s"):
        assert torch.isfinite(torch.tensor(metrics[f"posterior/{key}"]))
    assert 3 <= metrics["posterior/hmc_leapfrog_steps"] <= MOONS_HMC["defense.num_steps"]
    assert metrics["posterior/hmc_step_size"] > 0
    assert metrics["posterior/converged"] == float(metrics["posterior/hmc_r_hat_max"] < 1.1)
    # the parts: the log-likelihood is one of the quantities the verdict's maximum runs over (computed alone it may
    # differ in the last bits from its value inside the batched reduction: 2.61597827907139 vs 2.6159782790713897)
    loglik, r_hat_max = metrics["posterior/hmc_loglik_r_hat"], metrics["posterior/hmc_r_hat_max"]
    assert loglik <= r_hat_max or loglik == pytest.approx(r_hat_max, rel=1e-12)
    norms = model.stored[:40].double().norm(dim=-1).view(2, 20, 1)  # the kept samples, chain after chain
    assert metrics["posterior/hmc_norm_r_hat"] == pytest.approx(chain_diagnostics(norms)["r_hat_max"], rel=1e-5)
    assert metrics["posterior/hmc_prior_only_weights"] == 0  # two dense inputs: no weight the data cannot reach
    assert "posterior/hmc_prior_only_variance_ratio" not in metrics
    x = torch.randn(5, 2)
    with torch.no_grad():
        first, second = model(x, samples=10), model(x, samples=10)
    assert first.shape == (10, 5, 2) and not torch.equal(first, second)  # fresh stored samples per call
    # the stored samples moved away from the warm start: they are the chains, not copies of the MAP
    assert model.stored[:40].std(dim=0).mean() > 0


def test_on_digits_the_verdict_also_needs_the_prior_scale_on_the_weights_of_pixels_never_inked() -> None:
    # scikit-learn's 8x8 digits have pixels that are 0 in every training image: their first-layer weights' posterior
    # is the prior. 20 short iterations from the MAP start cannot spread them to it, whatever R-hat says.
    settings = {"defense": "hmc", "model": "mlp-small", "attacks": ["none"], "eps": [0.0], "epochs": 1}
    settings["until_converged"] = False  # no validation split: the chains see the first 300 training digits
    sampler = {"num_samples": 20, "warmup": 20, "num_steps": 4, "max_train": 300}
    result = advbayes.run("bench-digits", track=False, **settings, **{f"defense.{k}": v for k, v in sampler.items()})
    metrics, model = result.model_metrics, result.model
    registry = advbayes.registry.load_registry()
    train = registry.build("datasets", registry.resolve_experiment("bench-digits")["dataset"]).load("train")
    x = torch.stack([torch.as_tensor(train[i][0]) for i in range(300)]).flatten(1)
    never_inked = int((x == 0).all(dim=0).sum())
    first = next(m for m in model.net if isinstance(m, nn.Linear))
    assert never_inked > 0 and metrics["posterior/hmc_prior_only_weights"] == never_inked * first.out_features
    mask = prior_only_weights(model.net, x)
    ratio, tolerance = prior_only_check(model.stored[:40].view(2, 20, -1), mask, 1.0)
    assert metrics["posterior/hmc_prior_only_variance_ratio"] == pytest.approx(ratio, rel=1e-6)
    assert ratio < 1 - tolerance  # still near the MAP start's small weights
    assert metrics["posterior/converged"] == 0.0


class InterruptAfterFirstAttack:
    """Ctrl-C once the first attack's evaluation is checkpointed."""

    @hookimpl(trylast=True)
    def checkpoint_saved(self, run, checkpoint) -> None:
        if len(torch.load(checkpoint, weights_only=True).get("evaluated", [])) == 1:
            raise KeyboardInterrupt


def test_a_resumed_hmc_run_reuses_its_samples_instead_of_sampling_again(store: str, monkeypatch) -> None:
    settings = {**MOONS_HMC, "attacks": ["none", "fgsm"], "eps": [0.1]}
    whole = advbayes.run("moons", tracking_uri=store, **settings)
    pm = create_plugin_manager()
    pm.register(InterruptAfterFirstAttack(), name="interrupt")
    with pytest.raises(KeyboardInterrupt) as raised:
        advbayes.run("moons", tracking_uri=store, pm=pm, **settings)
    import advbayes_advbnn.hmc as hmc

    def refuse(*args, **kwargs):
        raise AssertionError("the resumed run sampled again")

    monkeypatch.setattr(hmc, "sample_posterior", refuse)
    resumed = advbayes.run(tracking_uri=store, resume=raised.value.advbayes_run_id)
    assert torch.equal(resumed.model.stored, whole.model.stored)  # the same chains, from the checkpoint
    assert resumed.table() == whole.table()
    assert resumed.model_metrics["posterior/hmc_r_hat_max"] == whole.model_metrics["posterior/hmc_r_hat_max"]
    tags = MlflowClient(store).get_run(whole.run_id).data.tags
    assert tags["posterior.converged"] in ("true", "false")


def gradients_per_kept_iteration(kernel, potential_calls: list[int]) -> list[int]:
    """Potential evaluations between consecutive kept iterations of one chain (each leapfrog step makes one)."""
    from pyro.infer.mcmc import MCMC

    seen: list[tuple[str, int]] = []
    mcmc = MCMC(
        kernel,
        num_samples=20,
        warmup_steps=100,
        initial_params={"theta": torch.zeros(3)},
        disable_progbar=True,
        hook_fn=lambda kernel, params, stage, index: seen.append((stage, potential_calls[0])),
    )
    mcmc.run()
    kept = [calls for stage, calls in seen if stage.lower().startswith("sample")]
    return [after - before for before, after in zip(kept, kept[1:])]


def test_hmc_makes_the_leapfrog_steps_it_is_asked_for_at_the_adapted_step_size() -> None:
    import pyro
    from pyro.infer.mcmc import HMC

    calls = [0]

    def standard_normal(params: dict[str, torch.Tensor]) -> torch.Tensor:
        calls[0] += 1
        return params["theta"].square().sum() / 2

    # warm-up adapts the step size from 1e-3 to about 0.5 on a standard normal
    jittered = jittered_steps_hmc(standard_normal, step_size=1e-3, num_steps=10)
    counts = gradients_per_kept_iteration(jittered, calls)
    assert counts == jittered.draws[-19:]  # one potential evaluation per leapfrog step drawn
    assert set(counts) <= set(range(5, 11)) and len(set(counts)) > 2
    assert float(jittered.step_size) > 0.1
    # why the kernel exists: pyro's HMC keeps the trajectory length 1e-3 x 10 and so makes ONE step per iteration
    plain = HMC(potential_fn=standard_normal, step_size=1e-3, num_steps=10)
    assert gradients_per_kept_iteration(plain, calls) == [1] * 19

    net = nn.Linear(3, 1, bias=False)
    common = dict(prior_sigma=1.0, num_samples=20, warmup=100, chains=1, step_size=1e-3, nuts=False, init_jitter=0.1)
    drawn = sample_posterior(net, lambda params: torch.zeros(()), num_steps=10, seed=0, **common)
    assert 5 < drawn.leapfrog_steps < 10 and drawn.step_size > 0.1
    # trajectory_length > 0: from half that length to all of it, in steps of the adapted size (pyro's HMC makes the
    # same count every time); num_steps is then ignored
    pyro.set_rng_seed(0)
    timed = jittered_steps_hmc(standard_normal, step_size=1e-3, num_steps=2, trajectory_length=8.0)
    counts = gradients_per_kept_iteration(timed, calls)
    most = round(8.0 / float(timed.step_size))  # 7-16 at the step sizes warm-up adapts here
    assert most > 4 and set(counts) <= set(range((most + 1) // 2, most + 1)) and len(set(counts)) > 2


def test_without_a_terminal_sampling_says_where_it_is(monkeypatch, capsys) -> None:
    import advbayes_advbnn.hmc as hmc

    monkeypatch.setattr(hmc, "REPORT_EVERY", 0.0)
    net = nn.Linear(2, 1, bias=False)
    sample_posterior(
        net,
        lambda params: -params["weight"].square().sum(),
        prior_sigma=1.0,
        num_samples=4,
        warmup=3,
        chains=2,
        num_steps=2,
        step_size=0.1,
        nuts=False,
        init_jitter=0.1,
        seed=0,
    )
    lines = capsys.readouterr().err.splitlines()
    assert any(line.startswith("hmc chain 2/2: sample 4/4, step size ") for line in lines)
    assert any(line.startswith("hmc chain 1/2: warmup 3/3,") for line in lines)


def test_chain_diagnostics_in_chunks_of_quantities_equal_pyro_on_all_at_once(monkeypatch) -> None:
    from pyro.ops.stats import effective_sample_size, split_gelman_rubin

    import advbayes_advbnn.hmc as hmc

    torch.manual_seed(0)
    tracked = torch.randn(2, 40, 10).cumsum(dim=1)  # random walks: R-hat and ESS differ from quantity to quantity
    monkeypatch.setattr(hmc, "CHUNK_BYTES", 8 * 40**2 * 3)  # 3 quantities per chunk, the last one of 1
    chunked = chain_diagnostics(tracked)
    r_hat = split_gelman_rubin(tracked.double(), chain_dim=0, sample_dim=1)
    ess = effective_sample_size(tracked.double(), chain_dim=0, sample_dim=1)
    expected = [r_hat.max(), r_hat.median(), ess.min(), ess.median()]
    assert list(chunked.values()) == pytest.approx([float(v) for v in expected], rel=1e-12)


def test_chain_diagnostics_leave_out_quantities_no_sample_changed() -> None:
    torch.manual_seed(0)
    moving = torch.randn(2, 50, 3)
    constant = torch.zeros(2, 50, 1)  # a saturated probability: R-hat would be 0 / 0
    with_constant = chain_diagnostics(torch.cat([moving, constant], dim=-1))
    assert with_constant == chain_diagnostics(moving)
    assert 0.9 < with_constant["r_hat_max"] < 1.2  # independent normal draws: chains agree
    shifted = moving + torch.tensor([0.0, 3.0]).view(2, 1, 1)  # chains apart: R-hat far above 1
    assert chain_diagnostics(shifted)["r_hat_max"] > 2


def test_the_weights_on_inputs_zero_in_every_example_are_found_and_get_no_likelihood_gradient() -> None:
    torch.manual_seed(0)
    x = torch.randn(50, 1, 2, 3)
    x[:, 0, 1, 0] = 0.0  # feature 3 of the flattened input: zero in every example
    x[:10, 0, 0, 2] = 0.0  # feature 2: zero in some examples only
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    mask = prior_only_weights(net, x)
    assert mask.shape == (6 * 4 + 4 + 4 * 3 + 3,) and int(mask.sum()) == 4
    assert mask[:24].view(4, 6)[:, 3].all()  # the first weight matrix's column 3, rows are output units
    # a second computation: the log-likelihood's gradient, which is exactly zero there and (generically) elsewhere not
    y = torch.randint(0, 3, (50,))
    nn.functional.cross_entropy(net(x), y, reduction="sum").backward()
    gradient = torch.cat([p.grad.flatten() for p in net.parameters()])
    assert (gradient[mask] == 0).all() and (gradient[~mask] != 0).all()
    # no such weights where the first parameterized layer does not take the flattened input
    convolutional = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Flatten(), nn.Linear(12, 3))
    assert not prior_only_weights(convolutional, x).any()


def test_the_prior_only_check_passes_prior_draws_and_fails_chains_short_of_the_prior_scale() -> None:
    torch.manual_seed(0)
    mask = torch.zeros(3000, dtype=torch.bool)
    mask[:2000] = True
    sigma = 0.5
    # chains whose samples of each weight are perfectly correlated (one draw repeated): the tolerance still holds
    stuck = (sigma * torch.randn(2, 1, 3000)).expand(2, 40, 3000)
    ratio, tolerance = prior_only_check(stuck, mask, sigma)
    assert tolerance == pytest.approx(4 * (2 / 2000) ** 0.5) and abs(ratio - 1) < tolerance
    short = 0.7 * stuck  # the variance at 0.49 of the prior's, as the MNIST chains left it
    assert abs(prior_only_check(short, mask, sigma)[0] - 0.49) < 0.05
    nothing = prior_only_check(stuck, torch.zeros(3000, dtype=torch.bool), sigma)
    assert all(v != v for v in nothing)  # nan: no weight to judge


def test_the_effective_sample_size_is_bounded_as_stan_bounds_it_where_pyro_goes_negative() -> None:
    from pyro.ops.stats import effective_sample_size

    torch.manual_seed(0)
    # antithetic chains: each sample the negative of the one before, so lag-1 autocorrelation is near -1
    signs = (torch.arange(40) % 2 * 2 - 1).double().view(1, 40, 1)
    antithetic = signs.expand(2, 40, 1) + 0.1 * torch.randn(2, 40, 1, dtype=torch.double)
    assert float(effective_sample_size(antithetic, chain_dim=0, sample_dim=1)) < 0  # pyro's own value
    assert chain_diagnostics(antithetic)["ess_min"] == pytest.approx(80 * math.log10(80))
    # where pyro's value is within the bound it is kept
    independent = torch.randn(2, 200, 3, dtype=torch.double)
    expected = effective_sample_size(independent, chain_dim=0, sample_dim=1).min()
    assert 0 < float(expected) < 400 * math.log10(400)
    assert chain_diagnostics(independent)["ess_min"] == pytest.approx(float(expected), rel=1e-12)
