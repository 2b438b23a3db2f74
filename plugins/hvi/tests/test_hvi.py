"""The hierarchical-VI regularizer and KL against the note's closed forms, Monte Carlo and autograd."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize
from torch import nn

from advbayes import TrainContext, frozen, hierarchical_regularizer_terms, to_bayesian
from advbayes.testing import plugin_registry
from advbayes_hvi.defenses import regularizer
from advbayes_hvi.nig import NIGParameter, nig_kl, nu_term, optimal_kl, standard_gamma


def build_defense(spec: dict):
    registry = plugin_registry()
    return registry.build("defenses", registry.resolve("defenses", spec, where=("test", "test", "defense")))


def random_model(seed: int = 0):
    torch.manual_seed(seed)
    model = to_bayesian(nn.Sequential(nn.Flatten(), nn.Linear(10, 7), nn.ReLU(), nn.Linear(7, 3)), seed=seed)
    with torch.no_grad():
        for p in model.gaussian_parameters():
            p.mu.normal_(0, 0.3)
            p.log_sigma.uniform_(-4, 0)
    return model


def test_regularizer_against_the_closed_form() -> None:
    model = random_model()
    mus = np.concatenate([p.mu.detach().numpy().ravel() for p in model.gaussian_parameters()]).astype(np.float64)
    sigmas = np.concatenate([p.sigma.detach().numpy().ravel() for p in model.gaussian_parameters()]).astype(np.float64)
    expected = np.mean(0.5 * np.log(1 + mus**2 / sigmas**2))
    assert float(regularizer(model).detach()) == pytest.approx(expected, rel=1e-5)


def test_regularizer_is_finite_and_exact_at_extreme_widths_and_at_zero_mean() -> None:
    # float32 log1p(mu^2 / sigma^2) is inf below sigma ~ 1e-22 and NaN (0 / 0) where sigma underflows at mu = 0
    model = to_bayesian(nn.Sequential(nn.Linear(3, 2)), seed=0)
    (weight, *_) = model.gaussian_parameters()
    log_sigmas = torch.tensor([[-2.0, -60.0, -80.0], [-60.0, -2.0, -100.0]])
    mus = torch.tensor([[0.3, 0.01, 0.0], [0.0, -0.5, 2e-30]])
    with torch.no_grad():
        weight.mu.copy_(mus)
        weight.log_sigma.copy_(log_sigmas)
    terms = hierarchical_regularizer_terms(weight)
    mu64, log_sigma64 = mus.double(), log_sigmas.double()
    # the float64 reference: log1p(r^2) / 2 with r = |mu| / sigma, in the branch where it does not overflow
    ratio = mu64.abs() * torch.exp(-log_sigma64)
    expected = torch.where(ratio < 1e100, 0.5 * torch.log1p(ratio**2), ratio.log())
    torch.testing.assert_close(terms.double(), expected, rtol=1e-6, atol=1e-30)
    terms.sum().backward()
    assert torch.isfinite(weight.mu.grad).all() and torch.isfinite(weight.log_sigma.grad).all()
    assert float(weight.mu.grad[0, 2]) == 0.0 and float(weight.mu.grad[1, 0]) == 0.0  # R is even in mu
    # d/d log_sigma of (1/2) log(1 + mu^2 e^{-2s}) = -r^2 / (1 + r^2)
    expected_grad = -(ratio**2) / (1 + ratio**2)
    torch.testing.assert_close(weight.log_sigma.grad.double(), expected_grad.nan_to_num(-1.0), rtol=1e-5, atol=1e-30)


def test_the_optimal_kl_is_the_notes_checked_value_and_the_minimum_over_lambda_and_psi() -> None:
    mu0, sigma0, nu = torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.1, dtype=torch.float64), 50.0
    assert float(optimal_kl(mu0, sigma0, nu)) == pytest.approx(1.15631, abs=1e-5)

    def objective(log_params: np.ndarray) -> float:
        lam, psi = (torch.tensor(math.exp(v), dtype=torch.float64) for v in log_params)
        return float(nig_kl(mu0, sigma0, nu, lam, psi))

    found = minimize(objective, x0=np.array([0.0, 0.5]), method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-12})
    assert found.fun == pytest.approx(1.15631, abs=1e-5)
    assert math.exp(found.x[1]) == pytest.approx(1.0, abs=1e-3)  # psi* = 1
    assert math.exp(found.x[0]) == pytest.approx(1.0 / (nu * (0.3**2 + 0.1**2)), rel=1e-3)  # lambda*


def test_the_first_kl_term_against_monte_carlo() -> None:
    # E_{sigma^2 ~ IG(nu, psi)} [ KL(N(mu0, sigma0^2) || N(0, sigma^2 / lambda)) ] vs its closed form
    mu0, sigma0, nu, lam, psi = 0.3, 0.1, 50.0, 0.7, 1.3
    generator = torch.Generator().manual_seed(0)
    sigma2 = psi / standard_gamma(nu, (2_000_000,), generator, torch.device("cpu")).double()
    prior_var = sigma2 / lam
    monte_carlo = (0.5 * (prior_var / sigma0**2).log() + (sigma0**2 + mu0**2) / (2 * prior_var) - 0.5).mean()
    digamma = float(torch.special.digamma(torch.tensor(nu, dtype=torch.float64)))
    closed = (
        lam * nu * (sigma0**2 + mu0**2) / (2 * psi)
        + 0.5 * (math.log(psi) - digamma - math.log(lam) - math.log(sigma0**2))
        - 0.5
    )
    assert float(monte_carlo) == pytest.approx(closed, abs=2e-3)


def test_nu_term_vanishes_as_nu_grows() -> None:
    values = [nu_term(nu) for nu in (2.0, 10.0, 100.0, 1000.0)]
    assert all(a > b > 0 for a, b in zip(values, values[1:])) and nu_term(math.inf) == 0.0


@pytest.mark.parametrize("shape_parameter", [0.7, 2.5, 50.0])
def test_gamma_sampler_moments(shape_parameter: float) -> None:
    draws = standard_gamma(shape_parameter, (400_000,), torch.Generator().manual_seed(1), torch.device("cpu")).double()
    assert float(draws.mean()) == pytest.approx(shape_parameter, rel=0.01)
    assert float(draws.var()) == pytest.approx(shape_parameter, rel=0.03)


def test_regularizer_decreases_when_sigma_grows_at_fixed_mu() -> None:
    model = random_model()
    values = []
    for _ in range(5):
        values.append(float(regularizer(model).detach()))
        with torch.no_grad():
            for p in model.gaussian_parameters():
                p.log_sigma += 0.5
    assert all(a > b for a, b in zip(values, values[1:]))


def test_gradient_of_r_with_respect_to_log_sigma_is_analytic() -> None:
    model = random_model(1)
    regularizer(model).backward()
    count = sum(p.mu.numel() for p in model.gaussian_parameters())
    for p in model.gaussian_parameters():
        mu2, sigma2 = p.mu.detach() ** 2, p.sigma.detach() ** 2
        torch.testing.assert_close(p.log_sigma.grad, -(1 / count) * mu2 / (mu2 + sigma2), rtol=1e-4, atol=1e-9)


def test_hvi_loss_is_cross_entropy_plus_beta_r() -> None:
    defense = build_defense({"use": "hvi", "beta": 0.7, "init_variance": 0.01, "train_samples": 2})
    model = defense.prepare(nn.Sequential(nn.Flatten(), nn.Linear(10, 3)))
    x, y = torch.rand(6, 10), torch.randint(0, 3, (6,))
    context = TrainContext(dataset=None, train=None, device=torch.device("cpu"), n_train=6, seed=0, build_attack=None)
    with frozen(model):
        output = defense.loss(model, (x, y), context)
        logits = model(x, samples=2)
    expected = F.cross_entropy(logits.flatten(0, 1), y.repeat(2)) + 0.7 * regularizer(model)
    torch.testing.assert_close(output.loss, expected)


def test_hvi_widths_train_at_the_same_scale_lr_as_adv_bnn() -> None:
    from advbayes.posterior.optimizers import make_optimizer
    from advbayes.registry import load_registry

    registry = load_registry()
    spec = registry.resolve_experiment("hvi-vs-advbnn-mnist-5k", [])
    experiment = registry.build("experiments", spec)
    lrs = {}
    for name in ("adv-hvi", "adv-bnn"):
        defense = registry.build("defenses", registry.resolve("defenses", name, where=("test", "x", "y")))
        model = defense.prepare(nn.Sequential(nn.Flatten(), nn.Linear(10, 3)))
        means, scales = make_optimizer(experiment, defense, model, n_train=100).optimizer.param_groups
        log_sigmas = {id(p) for n, p in model.named_parameters() if n.endswith("log_sigma")}
        assert {id(p) for p in scales["params"]} == log_sigmas
        lrs[name] = (means["lr"], scales["lr"])
    assert lrs["adv-hvi"] == lrs["adv-bnn"] == (0.001, 0.01)  # the experiment's lr; the posteriors' own scale lr


def test_finite_nu_draws_have_the_hierarchical_variance_and_follow_the_models_seed() -> None:
    defense = build_defense({"use": "hvi", "init_variance": 0.04, "nu": 6.0})
    model = defense.prepare(nn.Sequential(nn.Linear(1, 1, bias=False)))
    parameter = model.net[0].weight
    assert isinstance(parameter, NIGParameter)
    model.seed(3)
    x = torch.ones(1, 1)
    outputs = model(x, samples=200_000)[:, 0, 0].detach().double()
    # Var(w) = sigma0^2 + psi E[IG(nu, 1)] = 0.04 + 1 / (nu - 1)
    assert float(outputs.var()) == pytest.approx(0.04 + 1 / 5, rel=0.03)
    assert float(outputs.mean()) == pytest.approx(float(parameter.mu.detach()), abs=0.01)
    model.seed(3)
    assert torch.equal(model(x, samples=200_000)[:, 0, 0].detach().double(), outputs)
    expected_r = float(regularizer(model).detach()) + nu_term(6.0)
    context = TrainContext(dataset=None, train=None, device=torch.device("cpu"), n_train=1, seed=0, build_attack=None)
    assert float(defense.loss(model, (x, torch.zeros(1, dtype=torch.long)), context).parts["r"]) == pytest.approx(
        expected_r
    )
