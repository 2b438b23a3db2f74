"""D3's penalties against direct loops over the same draws, the variance identity, and one-backward gradients."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import draw_network
from torch import nn

import advbayes
from advbayes.plugins import create_plugin_manager
from advbayes.registry import load_registry
from advbayes.stochastic import frozen
from advbayes_d3.defenses import per_draw_input_gradients
from advbayes_d3.penalties import omega_m, omega_s, omega_v1, omega_v2, omega_v3, unit_directions


def build_defense(spec):
    registry = load_registry(pm=create_plugin_manager())
    return registry.build("defenses", registry.resolve("defenses", spec, where=("test", "test", "defense")))


def tiny_network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))


def loop_directions(original, model, x, y, draws):
    """Per-draw gradients with one autograd call per draw and example, on plain per-draw networks."""
    directions = []
    for k in range(draws):
        net = draw_network(original, model, k)
        per_example = []
        for b in range(x.shape[0]):
            xb = x[b : b + 1].clone().requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(net(xb), y[b : b + 1]), xb)
            g = g.flatten()
            per_example.append(g / g.norm())
        directions.append(torch.stack(per_example))
    return torch.stack(directions).double()  # [K, B, D]


def loop_penalties(u: torch.Tensor, temperature: float) -> dict[str, list[float]]:
    """The note's formulas, written with explicit loops over examples, dimensions and draws."""
    draws, batch, dims = u.shape
    out: dict[str, list[float]] = {k: [] for k in ("m", "v1", "v2", "v3", "s")}
    for b in range(batch):
        means = [sum(float(u[k, b, d]) for k in range(draws)) / draws for d in range(dims)]
        variances = [sum((float(u[k, b, d]) - means[d]) ** 2 for k in range(draws)) / draws for d in range(dims)]
        out["m"].append(sum(m * m for m in means))
        out["v1"].append(-min(variances))
        weights = torch.softmax(torch.tensor([-temperature * v for v in variances], dtype=torch.float64), 0)
        out["v2"].append(-sum(float(w) * v for w, v in zip(weights, variances)))
        out["v3"].append(sum((v - 1 / dims) ** 2 for v in variances))
        out["s"].append(-sum(sum(abs(float(u[k, b, d])) for d in range(dims)) for k in range(draws)) / draws)
    return out


def test_penalties_equal_direct_loops_over_the_same_draws() -> None:
    original = tiny_network()
    defense = build_defense({"use": "d3", "bayesian_fraction": 0.7, "init_sigma": 0.3})
    model = defense.prepare(copy.deepcopy(original))
    x, y = torch.rand(4, 1, 2, 3), torch.randint(0, 3, (4,))
    with frozen(model):
        _, gradients = per_draw_input_gradients(model, x, y, 6, "loss", create_graph=False)
        reference_u = loop_directions(original, model, x, y, 6)
    u = unit_directions(gradients).double()
    torch.testing.assert_close(u, reference_u, rtol=1e-4, atol=1e-6)
    expected = loop_penalties(reference_u, temperature=5.0)
    for name, value in (("m", omega_m(u)), ("v1", omega_v1(u)), ("v2", omega_v2(u, 5.0)), ("v3", omega_v3(u)), ("s", omega_s(u))):
        torch.testing.assert_close(value, torch.tensor(expected[name], dtype=torch.float64), rtol=1e-4, atol=1e-7)


def test_mean_penalty_and_total_variance_identity() -> None:
    torch.manual_seed(1)
    u = unit_directions(torch.randn(7, 5, 30))
    total_variance = u.var(dim=0, unbiased=False).sum(-1)
    torch.testing.assert_close(total_variance, 1 - omega_m(u))  # sum_d Var_k = 1 - sum_d E_k^2 for unit vectors


def test_soft_min_variance_approaches_the_min() -> None:
    u = unit_directions(torch.randn(6, 3, 12))
    torch.testing.assert_close(omega_v2(u, 1e6), omega_v1(u), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("gradient_of", ["loss", "true-logit"])
def test_one_backward_gives_the_per_draw_gradients(gradient_of: str) -> None:
    defense = build_defense({"use": "d3", "bayesian_fraction": 0.5, "init_sigma": 0.3})
    model = defense.prepare(tiny_network())
    x, y = torch.rand(5, 1, 2, 3), torch.randint(0, 3, (5,))
    with frozen(model):
        logits, gradients = per_draw_input_gradients(model, x, y, 4, gradient_of, create_graph=True)
        for k in range(4):
            xk = x.clone().requires_grad_(True)
            out = model(xk, samples=4)[k]
            value = F.cross_entropy(out, y, reduction="sum") if gradient_of == "loss" else out.gather(1, y.view(-1, 1)).sum()
            (expected,) = torch.autograd.grad(value, xk)
            torch.testing.assert_close(gradients[k], expected, rtol=1e-4, atol=1e-6)
    assert gradients.requires_grad  # double backprop: the penalties can be trained


def test_the_front_stays_deterministic() -> None:
    defense = build_defense({"use": "d3"})
    registry = load_registry(pm=create_plugin_manager())
    network = registry.build("models", registry.resolve("models", "mnist-cnn", where=("t", "t", "t"))).build((1, 28, 28), 10)
    model = defense.prepare(network)
    kinds = [type(m).__name__ for m in model.net]
    assert kinds.count("BayesLinear") == 2 and "BayesConv2d" not in kinds  # ceil(0.25 * 5) = 2 weight layers


@pytest.mark.slow
def test_training_with_lambda_m_lowers_omega_m_on_mnist_5k() -> None:
    common = {
        "track": False, "pm": create_plugin_manager(), "epochs": 2, "attacks": ["none"], "eps": [0.0],
        "model": {"use": "mlp", "widths": [64, 64]}, "dataset.n_train": 512, "dataset.n_test": 100,
    }
    plain = advbayes.run("quickstart", defense={"use": "d3", "bayesian_fraction": 0.5}, **common)
    penalized = advbayes.run("quickstart", defense={"use": "d3", "bayesian_fraction": 0.5, "lambda_m": 20.0}, **common)
    assert penalized.history[-1]["omega_m"] < plain.history[-1]["omega_m"]
    assert penalized.history[-1]["omega_m"] < penalized.history[0]["omega_m"]
