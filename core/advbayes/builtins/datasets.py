"""Built-in data set: two interleaving half circles, generated offline and seeded."""

from __future__ import annotations

import math
from typing import ClassVar

import attrs
import torch
from torch.utils.data import TensorDataset

from advbayes.components import Dataset
from advbayes.params import SEED_LIMIT, param


def make_half_moons(n: int, noise: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n points of two interleaving half circles (labels 0 and 1, balanced) with Gaussian noise."""
    n_outer = n // 2
    n_inner = n - n_outer
    t_outer = torch.rand(n_outer, generator=generator) * math.pi
    t_inner = torch.rand(n_inner, generator=generator) * math.pi
    outer = torch.stack([torch.cos(t_outer), torch.sin(t_outer)], dim=1)
    inner = torch.stack([1.0 - torch.cos(t_inner), 0.5 - torch.sin(t_inner)], dim=1)
    x = torch.cat([outer, inner]) + noise * torch.randn(n, 2, generator=generator)
    y = torch.cat([torch.zeros(n_outer, dtype=torch.long), torch.ones(n_inner, dtype=torch.long)])
    order = torch.randperm(n, generator=generator)
    return x[order], y[order]


@attrs.frozen(kw_only=True)
class HalfMoons(Dataset):
    """Two interleaving half circles in 2-D (unbounded features), generated from a seed."""

    name: ClassVar[str] = "half-moons"
    train_size: int = param(1000, kind=int, ge=2, help="training points")
    test_size: int = param(500, kind=int, ge=2, help="test points")
    noise: float = param(0.1, ge=0.0, help="standard deviation of the Gaussian noise")
    seed: int = param(0, kind=int, ge=0, le=SEED_LIMIT, help="seed of the generator (independent of the run's seed)")
    test_seed: int = param(
        -1,
        kind=int,
        ge=-1,
        le=SEED_LIMIT,
        help="-1: test points follow the training points in one stream; >= 0: their own stream, the same test points "
        "whatever train_size (to compare training sizes on one draw)",
    )

    @property
    def num_classes(self) -> int:
        """Two classes."""
        return 2

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Points in the plane."""
        return (2,)

    @property
    def value_range(self) -> tuple[float, float]:
        """Unbounded: attacks do not clamp."""
        return (-math.inf, math.inf)

    def load(self, split: str) -> TensorDataset:
        """The split as one tensor pair; train and test come from one generator stream."""
        generator = torch.Generator().manual_seed(self.seed)
        train = make_half_moons(self.train_size, self.noise, generator)
        if split == "train":
            return TensorDataset(*train)
        if self.test_seed >= 0:  # above every training seed: never the stream the training points came from
            generator = torch.Generator().manual_seed(SEED_LIMIT + 1 + self.test_seed)
        return TensorDataset(*make_half_moons(self.test_size, self.noise, generator))
