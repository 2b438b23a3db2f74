"""A posterior given by stored weight samples (HMC, deep ensembles) as a model with a sample dimension.

forward(x, samples=S) evaluates S of the N stored samples in one call (torch.func.vmap over the stacked
parameters), chosen afresh at every call: without replacement when S <= N, with replacement otherwise, so an
attack's draws and the prediction's draws are independent, as for every stochastic model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call, vmap

from advbayes.stochastic.draw_state import SeededDraws


def unflatten_parameters(net: nn.Module, vectors: torch.Tensor) -> dict[str, torch.Tensor]:
    """Flat parameter vectors [..., P] (named_parameters order, as parameters_to_vector makes them) -> name ->
    [..., *shape] tensors, views of `vectors` (differentiable, for torch.func.functional_call)."""
    out, offset = {}, 0
    for name, parameter in net.named_parameters():
        out[name] = vectors[..., offset : offset + parameter.numel()].reshape(*vectors.shape[:-1], *parameter.shape)
        offset += parameter.numel()
    return out


class SampleEnsemble(SeededDraws, nn.Module):
    """`net` evaluated at N stored parameter samples; before any sample is stored it is `net` itself ([1, B, k])."""

    takes_samples = True
    stored: torch.Tensor  # buffers
    filled: torch.Tensor

    def __init__(self, net: nn.Module, capacity: int, *, seed: int = 0) -> None:
        super().__init__()
        if capacity < 1:
            raise ValueError(f"SampleEnsemble: capacity must be >= 1, got {capacity}")
        self.net = net
        count = sum(p.numel() for p in net.parameters())
        self.register_buffer("stored", torch.zeros(capacity, count))  # one flattened parameter vector per row
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))  # rows in use
        self._seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}  # the choice's, on the CPU (SeededDraws)
        self._frozen: torch.Tensor | None = None
        self._freezing = False

    @property
    def sample_count(self) -> int:
        """N: how many samples are stored."""
        return int(self.filled)

    def store(self, samples: torch.Tensor) -> None:
        """Keep `samples` [N, P] (flattened parameter vectors in named_parameters order) as the posterior."""
        if samples.dim() != 2 or samples.shape[1] != self.stored.shape[1] or samples.shape[0] > self.stored.shape[0]:
            raise ValueError(
                f"SampleEnsemble.store: expected at most {self.stored.shape[0]} x {self.stored.shape[1]} samples, "
                f"got {list(samples.shape)}"
            )
        with torch.no_grad():
            self.stored[: samples.shape[0]].copy_(samples)
            self.filled.fill_(samples.shape[0])

    def _choose(self, samples: int) -> torch.Tensor:
        if self._frozen is not None and self._frozen.numel() == samples:
            return self._frozen
        generator = self.generator(torch.device("cpu"))
        count = self.sample_count
        if samples <= count:
            index = torch.randperm(count, generator=generator)[:samples]
        else:
            index = torch.randint(count, (samples,), generator=generator)
        if self._freezing:
            self._frozen = index
        return index

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Within the block, consecutive calls with the same S see the same samples."""
        previous = (self._freezing, self._frozen)
        self._freezing, self._frozen = True, None
        try:
            yield
        finally:
            self._freezing, self._frozen = previous

    def unflatten(self, vectors: torch.Tensor) -> dict[str, torch.Tensor]:
        """[S, P] flattened samples -> name -> [S, *shape] parameter tensors."""
        return unflatten_parameters(self.net, vectors)

    def forward(self, x: torch.Tensor, samples: int = 1) -> torch.Tensor:
        """Logits [S, B, k] at S stored samples (or [1, B, k] from the network's own weights when none is stored)."""
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        if self.sample_count == 0:
            return self.net(x).unsqueeze(0)
        chosen = self.stored[self._choose(samples).to(self.stored.device)]
        buffers = dict(self.net.named_buffers())

        def one(parameters: dict[str, torch.Tensor]) -> torch.Tensor:
            return functional_call(self.net, {**parameters, **buffers}, (x,))

        return vmap(one)(self.unflatten(chosen))
