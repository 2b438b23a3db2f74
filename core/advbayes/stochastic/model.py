"""StochasticModel (forward(x, samples=S) -> [S, B, k]), to_bayesian, the KL, and draw control."""

from __future__ import annotations

import copy
import functools
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, cast

import torch
from torch import nn

from advbayes.stochastic.draw_state import SeededDraws
from advbayes.stochastic.layers import (
    BayesBatchNorm2d,
    BayesConv2d,
    BayesLinear,
    Folded,
    GaussianParameter,
    StochasticLayer,
    kl_terms,
    regularizer_terms,
    shared_widths,
)
from advbayes.stochastic.passes import CHUNK_TARGET, loss_gradient_in_passes, measure_pass_size, pass_sizes
from advbayes.stochastic.strategy import CHUNK_CHOICES as _CHUNK_CHOICES
from advbayes.stochastic.strategy import FORWARD_CHOICES as _FORWARD_CHOICES
from advbayes.stochastic.strategy import GRADIENT_CHOICES as _GRADIENT_CHOICES
from advbayes.stochastic.strategy import (
    STRATEGIES,
    OnlineChoice,
    default_strategy,
    due,
    run_chosen,
    size_bucket,
)

# Elementwise modules work on [S', B, ...] as they are; every other deterministic leaf is Folded.
ELEMENTWISE = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.Identity,
    nn.Dropout,
    nn.ReLU6,
    nn.Hardtanh,
    nn.Mish,
)
CONVERTIBLE = (nn.Linear, nn.Conv2d, nn.BatchNorm2d)


class StochasticModel(SeededDraws, nn.Module):
    """A network with Gaussian layers: forward(x, samples=S) gives logits [S, B, k], one weight draw per s.

    Layers before the first stochastic layer run once per batch on [1, B, ...]; the first stochastic layer
    makes S draws of its output. `max_batch` bounds S x B per pass (draws are split into chunks, same result).
    """

    takes_samples = True

    def __init__(
        self, net: nn.Module, *, strategy: str | None = None, max_batch: int | None = None, seed: int | None = None
    ) -> None:
        super().__init__()
        self.net = net
        self.strategy = strategy or default_strategy()
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy: expected one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        self.max_batch = max_batch
        self._seed = int(torch.randint(0, 2**62, (1,)).item()) if seed is None else seed
        self._generators: dict[torch.device, torch.Generator] = {}
        self._frozen = False
        self._frozen_samples: int | None = None
        self.noise_off = False  # the optimizer perturbs the means itself (IVON): draws are the means
        self._architecture: tuple[Any, ...] | None = None
        self.chunk_timings: dict[tuple[object, ...], dict[int, float]] = {}

    # ------------------------------------------------------------------------------------------- draws

    def stochastic_layers(self) -> list[StochasticLayer]:
        """The Gaussian layers, in module order."""
        return [m for m in self.net.modules() if isinstance(m, StochasticLayer)]

    def gaussian_parameters(self) -> list[GaussianParameter]:
        """Every Gaussian parameter of the network."""
        return [p for layer in self.stochastic_layers() for p in layer.gaussian_parameters()]

    def draw(self, samples: int) -> None:
        """Draw S fresh noise tensors for every Gaussian parameter (unless the draws are frozen)."""
        if self._frozen and self._frozen_samples is not None:
            if samples != self._frozen_samples:
                raise ValueError(f"draws are frozen at samples={self._frozen_samples}, got samples={samples}")
            return
        for parameter in self.gaussian_parameters():
            parameter.noise = parameter.sample_noise(samples, self.generator(parameter.mu.device))
            if self.noise_off:
                parameter.noise.zero_()
        if self._frozen:
            self._frozen_samples = samples

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Within the block, consecutive calls see the same draws (the first call's)."""
        previous = (self._frozen, self._frozen_samples)
        self._frozen, self._frozen_samples = True, None
        try:
            yield
        finally:
            self._frozen, self._frozen_samples = previous

    # ------------------------------------------------------------------------------------------- forward

    def forward(self, x: torch.Tensor, samples: int = 1, *, sampled_input: bool = False) -> torch.Tensor:
        """Logits [S, B, k] (or [1, B, k] when the network has no stochastic layer).

        With sampled_input, x is already [S, B, ...] (e.g. an input replicated per draw for per-draw gradients).
        """
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        layers = self.stochastic_layers()
        inputs = x if sampled_input else x.unsqueeze(0)
        if not layers:  # nothing random: one pass, [1, B, k] (or [S, B, k] for a sampled input)
            return self.net(inputs)
        self.draw(samples)
        backward = torch.is_grad_enabled()  # without one, the passes may share one sigma per parameter
        with nullcontext() if backward else shared_widths(self.gaussian_parameters()):
            if not backward and self.max_batch is None and self.strategy == "auto" and samples > 1:
                # the forward is the whole cost: the pass size is chosen on the real calls (a race of whole passes
                # cost 12 calls per measurement: 203 of a 218 s evaluation on a 2-core CPU)
                choice = self._forward_choice(inputs, samples)
                run = functools.partial(self.run_in_passes, inputs, layers, samples)  # run(chunk)
                return run_chosen(choice, inputs.device, run, work=inputs.shape[1])
            return self.run_in_passes(inputs, layers, samples, self._chunk_size(inputs, layers, samples))

    def _forward_choice(self, inputs: torch.Tensor, samples: int) -> OnlineChoice:
        """The pass sizes raced on the real calls of this signature: all draws in one pass, passes of about
        CHUNK_TARGET examples, and the most passes (at most MAX_PASSES, the reference: the per-draw loop's way)."""
        shape = (inputs.shape[0], size_bucket(inputs.shape[1]), *inputs.shape[2:])
        key = (self.architecture(), samples, shape, inputs.device.type, inputs.dtype, self.training)
        if key not in _FORWARD_CHOICES:
            sizes = pass_sizes(samples, inputs.shape[1])
            _FORWARD_CHOICES[key] = OnlineChoice(sorted(sizes), reference=min(sizes))
        return _FORWARD_CHOICES[key]

    def run_in_passes(
        self, inputs: torch.Tensor, layers: Sequence[StochasticLayer], samples: int, chunk: int
    ) -> torch.Tensor:
        """Logits of the S drawn networks, `chunk` draws per pass (BatchNorm statistics updated once)."""
        if chunk >= samples:
            return self.forward_draws(inputs, layers, 0, samples)
        norms = [layer for layer in layers if isinstance(layer, BayesBatchNorm2d) and layer.track_running_stats]
        for norm in norms:  # one running-statistics update per pass, whatever the chunks
            norm.pending_statistics = []
        try:
            outputs = []
            for start in range(0, samples, chunk):
                part = inputs if inputs.shape[0] == 1 else inputs[start : start + chunk]
                outputs.append(self.forward_draws(part, layers, start, min(samples, start + chunk)))
            with torch.no_grad():
                for norm in norms:
                    if norm.pending_statistics:
                        norm.update_running_statistics(norm.pending_statistics)
        finally:
            for norm in norms:
                norm.pending_statistics = None
        return torch.cat(outputs)

    def _chunk_size(self, inputs: torch.Tensor, layers: Sequence[StochasticLayer], samples: int) -> int:
        """Draws per pass: max_batch when set; under "auto", the fastest of a few sizes, measured once (only a forward
        under autograd gets here: one without it chooses on its real calls, in forward)."""
        batch = inputs.shape[1]
        if self.max_batch is not None:
            return samples if samples * batch <= self.max_batch else max(1, self.max_batch // max(batch, 1))
        if self.strategy != "auto" or samples == 1:
            return samples
        shape = (inputs.shape[0], size_bucket(batch), *inputs.shape[2:])  # nearby batch sizes share one measurement
        key = (self.architecture(), samples, shape, inputs.device.type, inputs.dtype, self.training)
        # shared by every model of this architecture (e.g. the defenses of one experiment); measured again after
        # RECHECK_AT calls, so a choice made while the machine was busy does not stick
        if due(key, _CHUNK_CHOICES):
            _CHUNK_CHOICES[key] = measure_pass_size(self, inputs, layers, samples)
        return _CHUNK_CHOICES[key]

    def architecture(self) -> tuple[Any, ...]:
        """A signature of the network: its modules' types and parameter shapes (what the timing depends on)."""
        if self._architecture is None:
            self._architecture = tuple(
                (name, type(module).__name__, tuple(tuple(p.shape) for p in module.parameters(recurse=False)))
                for name, module in self.net.named_modules()
            )
        return self._architecture

    def mean_loss_gradient(
        self, x: torch.Tensor, samples: int, draw_losses: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-example mean over S draws of `draw_losses` ([s, B, k] -> mean over its s draws, [B]), its input
        gradient and the detached per-draw logits [S, B, k].

        One graph over all S draws keeps every draw's activations until its one backward; passes of fewer draws,
        each with its own backward, free them as they go (what the per-draw loop does, and on a CPU at large
        batches the faster way). The same S draws either way, so the pass size is chosen on the real calls
        (strategy.OnlineChoice), the per-draw passes winning a near tie: never slower than the loop it replaces.
        """
        layers = self.stochastic_layers()
        inputs = x.detach().unsqueeze(0)
        if not layers or samples == 1 or self.training or self.strategy != "auto":
            return loss_gradient_in_passes(self, inputs, layers, samples, samples, draw_losses)
        self.draw(samples)
        shape = (size_bucket(inputs.shape[1]), *inputs.shape[2:])
        key = (self.architecture(), samples, shape, inputs.device.type, inputs.dtype)
        if key not in _GRADIENT_CHOICES:
            per_target = max(1, min(samples, CHUNK_TARGET // max(inputs.shape[1], 1)))
            _GRADIENT_CHOICES[key] = OnlineChoice(sorted({1, per_target, samples}), reference=1)
        with shared_widths(self.gaussian_parameters()):  # only the input's gradient is taken
            return run_chosen(
                _GRADIENT_CHOICES[key],
                inputs.device,
                lambda size: loss_gradient_in_passes(self, inputs, layers, samples, size, draw_losses, False),
                work=inputs.shape[1],
            )

    def forward_draws(
        self, inputs: torch.Tensor, layers: Sequence[StochasticLayer], start: int, stop: int
    ) -> torch.Tensor:
        """Logits of draws start..stop of the current draw, in one pass."""
        full = {id(p): p.drawn_noise() for layer in layers for p in layer.gaussian_parameters()}
        try:
            for layer in layers:
                layer.samples = stop - start
                layer.strategy = self.strategy
                for parameter in layer.gaussian_parameters():
                    parameter.noise = full[id(parameter)][start:stop]
            out = self.net(inputs)
        finally:
            for layer in layers:
                for parameter in layer.gaussian_parameters():
                    parameter.noise = full[id(parameter)]
        if out.shape[0] == 1 and stop - start > 1:  # no stochastic layer on the path to the output
            out = out.expand(stop - start, *out.shape[1:])
        return out


def kl(model: nn.Module, prior_sigma: float) -> torch.Tensor:
    """Closed-form KL(q || N(0, prior_sigma^2)) summed over every Gaussian layer of the model."""
    layers = [m for m in model.modules() if isinstance(m, StochasticLayer)]
    if not layers:
        return torch.zeros(())
    return cast(torch.Tensor, sum(layer.kl(prior_sigma) for layer in layers))


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Freeze the draws of a stochastic model (anything with a frozen() context) for the block; no-op otherwise."""
    freeze = getattr(model, "frozen", None)
    if callable(freeze):
        with freeze():
            yield
    else:
        yield


def _select(model: nn.Module, which: str | float | Sequence[str]) -> set[str]:
    """Names of the modules to convert: 'all', the last fraction of the weight layers, or given names."""
    convertible = [(name, m) for name, m in model.named_modules() if isinstance(m, CONVERTIBLE)]
    if which == "all":
        return {name for name, _ in convertible}
    if isinstance(which, (int, float)) and not isinstance(which, bool):
        if not 0 < which <= 1:
            raise ValueError(f"which: a fraction must be in (0, 1], got {which}")
        weighted = [i for i, (_, m) in enumerate(convertible) if isinstance(m, (nn.Linear, nn.Conv2d))]
        keep = max(1, math.ceil(which * len(weighted)))
        first = weighted[len(weighted) - keep]
        return {name for name, _ in convertible[first:]}  # batch norms after the first chosen layer come along
    if isinstance(which, (str, bool)):
        raise ValueError(f"which: expected 'all', a fraction in (0, 1] or module names, got {which!r}")
    names = {str(name) for name in which}
    known = {name for name, _ in model.named_modules()}
    unknown = names - known
    if unknown:
        raise ValueError(f"which: no modules named {sorted(unknown)}")
    return names


def _convert(module: nn.Module, init_sigma: float) -> nn.Module:
    if isinstance(module, nn.Linear):
        return BayesLinear(module, init_sigma)
    if isinstance(module, nn.Conv2d):
        return BayesConv2d(module, init_sigma)
    if isinstance(module, nn.BatchNorm2d):
        return BayesBatchNorm2d(module, init_sigma)
    raise TypeError(f"cannot make a {type(module).__name__} Bayesian")


def to_bayesian(
    model: nn.Module,
    which: str | float | Sequence[str] = "all",
    *,
    init_sigma: float = 0.05,
    strategy: str | None = None,
    max_batch: int | None = None,
    seed: int | None = None,
) -> StochasticModel:
    """A copy of `model` with Gaussian Linear / Conv2d / BatchNorm2d layers (means = its weights), sampled.

    `which`: "all", a fraction (the last part of the weight layers, e.g. 0.25), or module names.
    Selected modules that cannot be converted, and parametrized modules of other types, stay deterministic
    and are listed in a warning.
    """
    if init_sigma <= 0:
        raise ValueError(f"init_sigma must be > 0, got {init_sigma}")
    model = copy.deepcopy(model)  # the caller's network stays as it was
    selected = _select(model, which)
    skipped: list[str] = []

    def rebuild(module: nn.Module, prefix: str) -> nn.Module:
        if prefix in selected and isinstance(module, CONVERTIBLE):
            try:
                return _convert(module, init_sigma)
            except ValueError as exc:
                skipped.append(f"{prefix} ({exc})")
        children = list(module.named_children())
        if not children:
            if any(True for _ in module.parameters(recurse=False)) and not isinstance(module, CONVERTIBLE):
                skipped.append(f"{prefix or type(module).__name__} ({type(module).__name__})")
            return module if isinstance(module, ELEMENTWISE) else Folded(module)
        for name, child in children:
            setattr(module, name, rebuild(child, f"{prefix}.{name}" if prefix else name))
        return module

    network = rebuild(model, "")
    if skipped:
        warnings.warn(f"to_bayesian left these modules deterministic: {', '.join(skipped)}", stacklevel=2)
    return StochasticModel(network, strategy=strategy, max_batch=max_batch, seed=seed)


def posterior_statistics(model: nn.Module, prior_sigma: float) -> dict[str, float]:
    """Over all Gaussian weights: count, mean of mu, mean of sigma^2, KL per weight to N(0, prior_sigma^2), and
    R = mean of (1/2) log(1 + mu^2 / sigma^2), the hierarchical-VI regularizer (0 count for deterministic models)."""
    parameters = [p for m in model.modules() if isinstance(m, StochasticLayer) for p in m.gaussian_parameters()]
    count = sum(p.mu.numel() for p in parameters)
    if not count:
        return {"count": 0, "mean_mu": 0.0, "mean_sigma2": 0.0, "kl_per_param": 0.0, "r": 0.0}
    mu_sum = sigma2_sum = kl_sum = r_sum = 0.0
    with torch.no_grad():  # one pass per tensor: mu^2 and sigma^2 are computed once for all four statistics
        for p in parameters:
            mu2 = p.mu.square()
            sigma2 = (2 * p.log_sigma).exp()
            mu_sum += float(p.mu.sum())
            sigma2_sum += float(sigma2.sum())
            kl_sum += float(kl_terms(mu2, p.log_sigma, sigma2, prior_sigma).sum())
            r_sum += float(regularizer_terms(p.mu, p.log_sigma).sum())
    return {
        "count": count,
        "mean_mu": mu_sum / count,
        "mean_sigma2": sigma2_sum / count,
        "kl_per_param": kl_sum / count,
        "r": r_sum / count,
    }


def hierarchical_regularizer_terms(parameter: GaussianParameter) -> torch.Tensor:
    """(1/2) log(1 + mu^2 / sigma^2) per weight of one Gaussian parameter (differentiable)."""
    return regularizer_terms(parameter.mu, parameter.log_sigma)
