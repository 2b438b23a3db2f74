"""Stochastic wrappers with a sample dimension: MC dropout (dropout kept on at prediction) and randomized smoothing."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import cast

import torch
from torch import nn

from advbayes import DeterministicSampled, SeededDraws

DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d)


class DrawSource(SeededDraws, nn.Module):
    """A seeded generator per device (kept by checkpoints: SeededDraws); frozen() replays the same random stream,
    so repeated calls see the same draws."""

    def __init__(self, seed: int | None) -> None:
        super().__init__()
        self._seed = int(torch.randint(0, 2**62, (1,)).item()) if seed is None else seed
        self._generators: dict[torch.device, torch.Generator] = {}
        self._replay: dict[torch.device, torch.Tensor] | None = None

    def start_draws(self, device: torch.device) -> None:
        """Called at the start of every forward: inside frozen(), rewind to the block's first draws."""
        generator = self.generator(device)
        if self._replay is None:
            return
        if device in self._replay:
            generator.set_state(self._replay[device])
        else:
            self._replay[device] = generator.get_state()

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Within the block, every call with the same shapes sees the same draws (the first call's)."""
        previous = self._replay
        self._replay = {device: g.get_state() for device, g in self._generators.items()}
        try:
            yield
        finally:
            self._replay = previous

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_generators"], state["_replay"] = {}, None  # generators are recreated from the seed
        return state


class AlwaysDropout(nn.Module):
    """Dropout that stays on in eval mode, with masks from its model's generator."""

    def __init__(self, p: float, generator: Callable[[torch.device], torch.Generator]) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout rate must be in [0, 1), got {p}")
        self.p = p
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x * Bernoulli(1 - p) / (1 - p), a fresh mask per element."""
        if self.p == 0:
            return x
        keep = torch.empty_like(x).bernoulli_(1 - self.p, generator=self.generator(x.device))
        return x * keep / (1 - self.p)


def dropout_layers(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """The (name, module) of every dropout layer."""
    return [(name, m) for name, m in net.named_modules() if isinstance(m, (*DROPOUT_TYPES, AlwaysDropout))]


def _replace(net: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, child, module)


class MCDropoutModel(DrawSource):
    """forward(x, samples=S) -> [S, B, k] with dropout on; the layers before the first dropout run once per batch."""

    takes_samples = True

    def __init__(self, net: nn.Module, seed: int | None = None) -> None:
        super().__init__(seed)
        layers = dropout_layers(net)
        if not layers:
            raise ValueError(
                "mc-dropout: the network has no dropout layer (give the model a dropout rate, or the defense a `rate`)"
            )
        for name, module in layers:
            _replace(net, name, AlwaysDropout(float(getattr(module, "p")), self.generator))  # noqa: B009
        self.net = net
        # a Sequential's layers before the first dropout are deterministic: they run once per batch
        self.trunk_length = (
            next(i for i, m in enumerate(net) if isinstance(m, AlwaysDropout)) if isinstance(net, nn.Sequential) else 0
        )

    @property
    def rates(self) -> list[float]:
        """The dropout rate of each dropout layer."""
        return [float(getattr(m, "p")) for _, m in dropout_layers(self.net)]  # noqa: B009

    def forward(self, x: torch.Tensor, samples: int = 1, *, sampled_input: bool = False) -> torch.Tensor:
        """Logits [S, B, k]; with sampled_input x is [S, B, ...] already."""
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        self.start_draws(x.device)
        if sampled_input:
            draws, batch = x.shape[:2]
            return self.net(x.flatten(0, 1)).view(draws, batch, -1)
        batch = x.shape[0]
        if not self.trunk_length:
            replicated = x.unsqueeze(0).expand(samples, *x.shape).flatten(0, 1)
            return self.net(replicated).view(samples, batch, -1)
        layers = list(cast(nn.Sequential, self.net))
        h = x
        for layer in layers[: self.trunk_length]:
            h = layer(h)
        h = h.unsqueeze(0).expand(samples, *h.shape).flatten(0, 1)
        for layer in layers[self.trunk_length :]:
            h = layer(h)
        return h.view(samples, batch, -1)


class Smoothed(DrawSource):
    """Randomized smoothing: each draw adds Gaussian noise of variance `noise_variance` to the input."""

    takes_samples = True

    def __init__(self, inner: nn.Module, noise_variance: float, seed: int | None = None) -> None:
        super().__init__(seed)
        if noise_variance <= 0:
            raise ValueError(f"noise_variance must be > 0, got {noise_variance}")
        self.inner = inner.net if isinstance(inner, DeterministicSampled) else inner
        self.noise_variance = noise_variance

    def forward(self, x: torch.Tensor, samples: int = 1, *, sampled_input: bool = False) -> torch.Tensor:
        """Logits [S, B, k] of S noisy copies (and, for a stochastic inner model, S of its draws)."""
        self.start_draws(x.device)
        base = x if sampled_input else x.unsqueeze(0).expand(samples, *x.shape)
        noise = torch.randn(base.shape, generator=self.generator(x.device), device=x.device, dtype=x.dtype)
        noisy = base + math.sqrt(self.noise_variance) * noise
        if getattr(self.inner, "takes_samples", False):
            return self.inner(noisy, samples=noisy.shape[0], sampled_input=True)
        return self.inner(noisy.flatten(0, 1)).view(noisy.shape[0], noisy.shape[1], -1)

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Freeze the noise and the inner model's draws."""
        inner_frozen = getattr(self.inner, "frozen", None)
        with super().frozen():
            if callable(inner_frozen):
                with inner_frozen():
                    yield
            else:
                yield


def noise_variance_of(model: nn.Module) -> float | None:
    """The smoothing noise variance of a model, or None when it is not smoothed."""
    return getattr(model, "noise_variance", None)
