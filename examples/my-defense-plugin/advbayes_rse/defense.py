"""Random Self-Ensemble (Liu et al. 2018): Gaussian noise before every weight layer, in training and prediction."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch
from torch import nn

from advbayes import Defense, LossOutput, TrainContext, ensemble_accuracy, mean_cross_entropy, param


class NoiseLayer(nn.Module):
    """x + N(0, std^2), in training and in evaluation alike."""

    def __init__(self, std: float) -> None:
        super().__init__()
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Add fresh noise."""
        return x + self.std * torch.randn_like(x) if self.std > 0 else x


class SelfEnsemble(nn.Module):
    """forward(x, samples=S) -> [S, B, k]: S noisy passes, run as one batch of S x B inputs."""

    takes_samples = True

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, samples: int = 1) -> torch.Tensor:
        """Replicate the batch S times; every copy gets its own noise."""
        batch = x.shape[0]
        replicated = x.unsqueeze(0).expand(samples, *x.shape).flatten(0, 1)
        return self.net(replicated).view(samples, batch, -1)


def with_noise_layers(model: nn.Module, init_noise: float, inner_noise: float) -> nn.Module:
    """A noise layer before every Conv2d / Linear: init_noise before the first, inner_noise before the others."""
    first = True

    def convert(module: nn.Module) -> None:
        nonlocal first
        for name, child in module.named_children():
            if isinstance(child, (nn.Conv2d, nn.Linear)):
                setattr(module, name, nn.Sequential(NoiseLayer(init_noise if first else inner_noise), child))
                first = False
            else:
                convert(child)

    convert(model)
    if first:
        raise ValueError("rse: the network has no Conv2d or Linear layer to put noise before")
    return model


@attrs.frozen(kw_only=True)
class RandomSelfEnsemble(Defense):
    """Random Self-Ensemble: noise before every weight layer; prediction averages S_I noisy passes."""

    name: ClassVar[str] = "rse"
    init_noise: float = param(0.2, ge=0.0, help="noise std before the first layer (the paper: 0.2 on CIFAR-10)")
    inner_noise: float = param(0.1, ge=0.0, help="noise std before every other layer (the paper: 0.1)")
    inference_samples: int = param(10, kind=int, ge=1, help="S_I: noisy passes averaged at prediction")

    def prepare(self, model: nn.Module) -> nn.Module:
        """Insert the noise layers and give the network a sample dimension."""
        return SelfEnsemble(with_noise_layers(model, self.init_noise, self.inner_noise))

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], context: TrainContext) -> LossOutput:
        """Cross-entropy of one noisy pass (training with the noise is what makes the ensemble work)."""
        x, y = batch
        logits = model(x, samples=1)
        return LossOutput(loss=mean_cross_entropy(logits, y), parts={"acc": ensemble_accuracy(logits.detach(), y)})
