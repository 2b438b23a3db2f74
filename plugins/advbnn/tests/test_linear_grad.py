"""OrientedLinearGrad: the same gradients as autograd's own linear backward, and a numerical gradient check."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional

from advbayes import unflatten_parameters
from advbayes_advbnn.hmc import full_batch_log_likelihood
from advbayes_advbnn.linear_grad import OrientedLinearGrad


def gradients(net: nn.Module, x: torch.Tensor, oriented: bool) -> list[torch.Tensor]:
    """d(sum of squared outputs)/d(parameters, and x where it requires grad), with or without the mode."""
    if oriented:
        with OrientedLinearGrad():
            out = net(x)
    else:
        out = net(x)
    wrt = [*net.parameters(), *([x] if x.requires_grad else [])]
    return list(torch.autograd.grad(out.square().sum(), wrt))


@pytest.mark.parametrize(
    ("shape", "widths", "bias"),
    [
        ((500, 2), (512, 2), True),  # the half-moons case: widening a narrow input (the oriented branch)
        ((64, 30), (8, 3), True),  # narrowing layers (autograd's own orientation)
        ((5, 40, 3), (16, 16, 4), False),  # a sample dimension in front, square layers, no bias
    ],
)
def test_gradients_match_autograds_linear_backward(shape: tuple[int, ...], widths: tuple[int, ...], bias: bool) -> None:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    last = shape[-1]
    for width in widths:
        layers += [nn.Linear(last, width, bias=bias), nn.Tanh()]
        last = width
    net = nn.Sequential(*layers[:-1])
    x = torch.randn(shape, requires_grad=True)
    for oriented, plain in zip(gradients(net, x, True), gradients(net, x, False), strict=True):
        torch.testing.assert_close(oriented, plain, rtol=1e-5, atol=1e-6)


def test_a_numerical_gradient_check_in_float64() -> None:
    torch.manual_seed(1)
    x = torch.randn(7, 2, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(9, 2, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(9, dtype=torch.float64, requires_grad=True)

    def layer(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        with OrientedLinearGrad():
            return functional.linear(x, weight=weight, bias=bias)  # keywords: the mode reads them too

    assert torch.autograd.gradcheck(layer, (x, weight, bias))


def test_it_records_its_own_backward_and_leaves_no_grad_and_other_ops_alone() -> None:
    net = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 2))
    x = torch.randn(10, 2)
    with OrientedLinearGrad():
        out = net(x)
        with torch.no_grad():
            frozen = net(x)
    assert type(out.grad_fn).__name__ == "_OrientedLinearBackward"  # the last layer's own backward
    assert frozen.grad_fn is None
    torch.testing.assert_close(frozen, net(x))


def test_hmc_full_batch_log_likelihood_at_a_flat_theta_has_autograd_s_own_gradient() -> None:
    """HMC's potential, the network evaluated at a flat theta through functional_call, against the plain autograd path."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(2, 128), nn.ReLU(), nn.Linear(128, 2))
    x, y = torch.randn(300, 2), torch.randint(0, 2, (300,))
    theta = nn.utils.parameters_to_vector(net.parameters()).detach().requires_grad_()
    params = unflatten_parameters(net, theta)
    reference = -functional.cross_entropy(functional_call(net, params, (x,)), y, reduction="sum")
    (expected,) = torch.autograd.grad(reference, theta)
    for oriented in (True, False):
        value = full_batch_log_likelihood(net, x, y, oriented=oriented)(unflatten_parameters(net, theta))
        torch.testing.assert_close(value, reference.detach(), rtol=1e-6, atol=1e-4)
        (gradient,) = torch.autograd.grad(value, theta)
        torch.testing.assert_close(gradient, expected, rtol=1e-5, atol=1e-5)
