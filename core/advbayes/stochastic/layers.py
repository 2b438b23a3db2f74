"""Mean-field Gaussian layers whose activations carry a leading sample dimension [S', B, ...] (S' = 1 or S).

A layer holds mean and log-std parameters. Before a forward pass its model draws noise [S, *shape] for every
stochastic parameter; the layer then evaluates all S draws at once: w_s = mu + exp(log_sigma) * noise_s.
(`eps` names the attack radius in advbayes and nothing else.)
An input with S' = 1 (the deterministic trunk's output) is shared by all draws and never copied S times.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from advbayes.stochastic import strategy as strategies


def kl_terms(mu2: torch.Tensor, log_sigma: torch.Tensor, sigma2: torch.Tensor, prior_sigma: float) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, prior_sigma^2)) per weight, from mu^2, log sigma and sigma^2."""
    return math.log(prior_sigma) - log_sigma + (sigma2 + mu2) / (2 * prior_sigma**2) - 0.5


def regularizer_terms(mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """(1/2) log(1 + mu^2 / sigma^2) per weight, hierarchical VI's regularizer, in log space.

    = (1/2) softplus(2 (log|mu| - log sigma)): finite for any sigma > 0 (mu^2 / sigma^2 in float32 is inf below
    sigma ~ 1e-22), and exactly 0 with a zero gradient at mu = 0 (where log|mu| would be -inf).
    """
    zero = mu == 0
    log_abs_mu = torch.where(zero, torch.ones_like(mu), mu.abs()).log()  # a finite dummy where mu = 0
    return torch.where(zero, torch.zeros_like(mu), 0.5 * F.softplus(2 * (log_abs_mu - log_sigma)))


class GaussianParameter(nn.Module):
    """A tensor parameter with a factorized Gaussian posterior N(mu, exp(log_sigma)^2)."""

    def __init__(self, mean: torch.Tensor, init_sigma: float) -> None:
        super().__init__()
        self.mu = nn.Parameter(mean.detach().clone())
        self.log_sigma = nn.Parameter(torch.full_like(mean, math.log(init_sigma)))
        self.noise: torch.Tensor | None = None  # [S, *shape], set by the model before each forward
        self.shared_sigma: torch.Tensor | None = None  # exp(log_sigma) for all passes of one call (shared_widths)

    @property
    def sigma(self) -> torch.Tensor:
        """Standard deviation."""
        return self.log_sigma.exp()

    @property
    def eps(self) -> torch.Tensor | None:
        """Deprecated name of `noise` (CHANGELOG.md): `eps` is the attack radius in advbayes."""
        warnings.warn("GaussianParameter.eps is now GaussianParameter.noise", DeprecationWarning, stacklevel=2)
        return self.noise

    @eps.setter
    def eps(self, value: torch.Tensor | None) -> None:
        warnings.warn("GaussianParameter.eps is now GaussianParameter.noise", DeprecationWarning, stacklevel=2)
        self.noise = value

    def sample_noise(self, samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Noise for S draws, [S, ...]: standard normal (subclasses may add channels, e.g. variance draws)."""
        return torch.randn((samples, *self.mu.shape), generator=generator, device=self.mu.device, dtype=self.mu.dtype)

    def drawn_noise(self) -> torch.Tensor:
        """The noise the model set for this forward (an error when it set none)."""
        if self.noise is None:
            raise RuntimeError("no draws were made for this parameter: the model draws before each forward")
        return self.noise

    def draws(self, samples: int) -> torch.Tensor:
        """The S weight draws [S, *shape] (fresh noise if the model set none)."""
        noise = self.noise
        if noise is None or noise.shape[0] != samples:
            noise = self.sample_noise(samples)
        return self.weights_from(noise)

    def weights_from(self, noise: torch.Tensor) -> torch.Tensor:
        """w = mu + sigma * noise, for noise [S, *shape]."""
        return self.mu + self.draw_sigma() * noise

    def draw_sigma(self) -> torch.Tensor:
        """sigma as the draws compose it: the model's one copy for all passes of a call, else computed now."""
        return self.sigma if self.shared_sigma is None else self.shared_sigma

    def kl(self, prior_sigma: float) -> torch.Tensor:
        """KL(q || N(0, prior_sigma^2)) summed over the tensor's entries."""
        return kl_terms(self.mu.square(), self.log_sigma, (2 * self.log_sigma).exp(), prior_sigma).sum()


@contextlib.contextmanager
def shared_widths(parameters: Sequence[GaussianParameter]) -> Iterator[None]:
    """Within the block each parameter's draws use one sigma = exp(log_sigma), computed here without autograd,
    instead of one per pass: for a model's calls that differentiate the input only, or nothing. The same values (the
    same exp); over 10 per-draw passes of a fully Bayesian mnist-cnn it saves 9 of 10 exps (3-4 % of a step)."""
    if not parameters or parameters[0].shared_sigma is not None:  # none, or an enclosing block shares them
        yield
        return
    with torch.no_grad():
        for parameter in parameters:
            parameter.shared_sigma = parameter.sigma
    try:
        yield
    finally:
        for parameter in parameters:
            parameter.shared_sigma = None


def _draw_count(x: torch.Tensor, samples: int) -> int:
    if x.shape[0] not in (1, samples):
        raise ValueError(f"input has {x.shape[0]} draws in its sample dimension, expected 1 or {samples}")
    return x.shape[0]


def _call_named(candidates: dict[str, Any], inputs: list[torch.Tensor], name: str) -> torch.Tensor:
    return cast(torch.Tensor, candidates[name](*inputs))


class StochasticLayer(nn.Module):
    """Base of the Gaussian layers: the number of draws of the current forward pass and the strategy."""

    samples: int = 1
    strategy: str = "auto"

    def gaussian_parameters(self) -> list[GaussianParameter]:
        """The layer's Gaussian parameters."""
        return [m for m in self.children() if isinstance(m, GaussianParameter)]

    def kl(self, prior_sigma: float) -> torch.Tensor:
        """Closed-form KL of all of the layer's Gaussian parameters."""
        return cast(torch.Tensor, sum(p.kl(prior_sigma) for p in self.gaussian_parameters()))

    def _run(self, key: tuple[Any, ...], candidates: dict[str, Any], inputs: list[torch.Tensor]) -> torch.Tensor:
        name = self.strategy
        if name == "auto":
            # a Python loop over more than MAX_LOOP draws loses to one batched kernel everywhere; do not time it
            # and one draw is one dense kernel either way: nothing to time
            if self.samples == 1:
                name = "loop"
            elif self.samples > strategies.MAX_LOOP:
                name = "batched"
            elif not torch.is_grad_enabled():  # measured on the real calls (no backward to time with them)
                run = functools.partial(_call_named, candidates, inputs)
                return strategies.run_chosen(strategies.layer_choice(key), inputs[0].device, run)
            else:
                name = strategies.cached(key) or ""
        if not name:  # first call of this signature: measure both on detached copies
            detached = [t.detach().requires_grad_(t.requires_grad) for t in inputs]
            trial: dict[str, Callable[[], torch.Tensor]] = {
                k: functools.partial(f, *detached) for k, f in candidates.items()
            }
            name = strategies.choose(key, trial, detached, inputs[0].device)
        return candidates[name](*inputs)


class BayesLinear(StochasticLayer):
    """Linear layer with Gaussian weights and bias: [S', B, in] -> [S, B, out]."""

    def __init__(self, linear: nn.Linear, init_sigma: float) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight = GaussianParameter(linear.weight, init_sigma)
        self.bias = GaussianParameter(linear.bias, init_sigma) if linear.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """All draws at once."""
        samples = self.samples
        weight = self.weight.draws(samples)
        bias = self.bias.draws(samples) if self.bias is not None else None
        shared = _draw_count(x, samples) == 1
        key = ("linear", samples, shared, (strategies.size_bucket(x.shape[1]), *x.shape[2:]), x.device.type, x.dtype)
        inputs = [x, weight] + ([bias] if bias is not None else [])
        return self._run(key, {"loop": _linear_loop, "batched": _linear_batched}, inputs)


def _stacked(rows: list[torch.Tensor]) -> torch.Tensor:
    """The per-draw outputs as [S, ...]; one draw (every training step, every per-draw pass) as a view, which
    stack would copy."""
    return rows[0].unsqueeze(0) if len(rows) == 1 else torch.stack(rows)


def _linear_loop(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    rows = [
        F.linear(x[0 if x.shape[0] == 1 else s], weight[s], None if bias is None else bias[s])
        for s in range(weight.shape[0])
    ]
    return _stacked(rows)


def _linear_batched(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    samples, out_features, _ = weight.shape
    if x.shape[0] == 1:  # one GEMM with the S weight matrices stacked: the shared input is read once
        out = x[0] @ weight.reshape(samples * out_features, -1).T
        out = out.view(x.shape[1], samples, out_features).transpose(0, 1)
    else:
        out = torch.bmm(x, weight.transpose(1, 2))
    return out if bias is None else out + bias.unsqueeze(1)


class BayesConv2d(StochasticLayer):
    """2-D convolution with Gaussian kernels and bias: [S', B, C, H, W] -> [S, B, O, H', W']."""

    def __init__(self, conv: nn.Conv2d, init_sigma: float) -> None:
        super().__init__()
        if conv.padding_mode != "zeros":
            raise ValueError(f"only zero padding is supported, got {conv.padding_mode!r}")
        self.in_channels = conv.in_channels
        self.out_channels = conv.out_channels
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.weight = GaussianParameter(conv.weight, init_sigma)
        self.bias = GaussianParameter(conv.bias, init_sigma) if conv.bias is not None else None

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int) -> torch.Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """All draws at once."""
        samples = self.samples
        weight = self.weight.draws(samples)
        bias = self.bias.draws(samples) if self.bias is not None else None
        shared = _draw_count(x, samples) == 1
        key = (
            "conv2d",
            samples,
            shared,
            (strategies.size_bucket(x.shape[1]), *x.shape[2:]),
            tuple(weight.shape[1:]),
            self.stride,
            x.device.type,
            x.dtype,
        )
        inputs = [x, weight] + ([bias] if bias is not None else [])
        return self._run(key, {"loop": self._loop, "batched": self._batched}, inputs)

    def _loop(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        rows = [
            self._conv(x[0 if x.shape[0] == 1 else s], weight[s], None if bias is None else bias[s], self.groups)
            for s in range(weight.shape[0])
        ]
        return _stacked(rows)

    def _batched(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        samples, out_channels = weight.shape[:2]
        stacked_weight = weight.reshape(samples * out_channels, *weight.shape[2:])
        stacked_bias = None if bias is None else bias.reshape(-1)
        batch = x.shape[1]
        if x.shape[0] == 1:  # one dense convolution with S x O output channels over the shared input
            out = self._conv(x[0], stacked_weight, stacked_bias, self.groups)
        else:  # a grouped convolution: draw s sees only its own input channels
            folded = x.transpose(0, 1).reshape(batch, samples * x.shape[2], *x.shape[3:])
            out = self._conv(folded, stacked_weight, stacked_bias, self.groups * samples)
        return out.view(batch, samples, out_channels, *out.shape[2:]).transpose(0, 1)


class BayesBatchNorm2d(StochasticLayer):
    """BatchNorm2d with Gaussian affine parameters; in training, statistics are per draw (as S separate nets)."""

    running_mean: torch.Tensor  # buffers (when tracking running statistics)
    running_var: torch.Tensor

    def __init__(self, norm: nn.BatchNorm2d, init_sigma: float) -> None:
        super().__init__()
        if not norm.affine:
            raise ValueError("a BatchNorm2d without affine parameters has nothing to make Bayesian")
        self.num_features = norm.num_features
        self.variance_floor = norm.eps  # BatchNorm's epsilon, added to the variance
        self.momentum = norm.momentum if norm.momentum is not None else 0.1
        self.track_running_stats = norm.track_running_stats
        self.weight = GaussianParameter(norm.weight, init_sigma)
        self.bias = GaussianParameter(norm.bias, init_sigma)
        if norm.track_running_stats:
            assert norm.running_mean is not None and norm.running_var is not None  # track_running_stats holds them
            self.register_buffer("running_mean", norm.running_mean.detach().clone())
            self.register_buffer("running_var", norm.running_var.detach().clone())
        # While a forward pass runs its draws in chunks, each chunk's statistics wait here and are applied as ONE
        # update when the pass ends: running statistics never depend on the (timing-chosen) chunk size.
        self.pending_statistics: list[tuple[torch.Tensor, torch.Tensor, int]] | None = None

    def update_running_statistics(self, parts: Sequence[tuple[torch.Tensor, torch.Tensor, int]]) -> None:
        """One momentum update with the mean statistics of all draws in `parts` ((mean sum, var sum, draws) each)."""
        draws = sum(n for _, _, n in parts)
        self.running_mean.lerp_(cast(torch.Tensor, sum(m for m, _, _ in parts)) / draws, self.momentum)
        self.running_var.lerp_(cast(torch.Tensor, sum(v for _, v, _ in parts)) / draws, self.momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize each draw with its own batch statistics (training) or the running ones (evaluation)."""
        samples = self.samples
        _draw_count(x, samples)
        if self.training or not self.track_running_stats:
            mean = x.mean(dim=(1, 3, 4), keepdim=True)
            var = x.var(dim=(1, 3, 4), unbiased=False, keepdim=True)
            if self.training and self.track_running_stats:
                count = x.shape[1] * x.shape[3] * x.shape[4]
                with torch.no_grad():  # one update with the draws' mean statistics
                    mean_sum = mean.sum(dim=0).flatten()
                    var_sum = var.sum(dim=0).flatten() * count / max(count - 1, 1)
                    if self.pending_statistics is not None:
                        self.pending_statistics.append((mean_sum, var_sum, mean.shape[0]))
                    else:
                        self.update_running_statistics([(mean_sum, var_sum, mean.shape[0])])
        else:
            mean = self.running_mean.view(1, 1, -1, 1, 1)
            var = self.running_var.view(1, 1, -1, 1, 1)
        normalized = (x - mean) * torch.rsqrt(var + self.variance_floor)
        weight = self.weight.draws(samples).view(samples, 1, -1, 1, 1)
        bias = self.bias.draws(samples).view(samples, 1, -1, 1, 1)
        return normalized * weight + bias


class Folded(nn.Module):
    """Runs a deterministic module on [S', B, ...] by folding the sample dimension into the batch (a view)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[S', B, ...] -> module([S' * B, ...]) -> [S', B, ...]."""
        draws, batch = x.shape[:2]
        out = self.module(x.reshape(draws * batch, *x.shape[2:]))
        return out.view(draws, batch, *out.shape[1:])
