"""MC dropout (dropout kept on at prediction) and randomized-smoothing training, through the sample dimension."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch
from torch import nn

from advbayes import Defense, LossOutput, TrainContext, ensemble_accuracy, mean_cross_entropy, param
from advbayes_robustness.models import DROPOUT_TYPES, MCDropoutModel, Smoothed, dropout_layers

ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.Tanh, nn.SiLU)


def with_dropout(model: nn.Module, rate: float) -> nn.Module:
    """Set every dropout layer's rate; a Sequential without any gets one after each hidden activation."""
    layers = dropout_layers(model)
    if layers:
        for _, module in layers:
            setattr(module, "p", rate)  # noqa: B010 - every dropout type (and AlwaysDropout) keeps its rate in p
        return model
    if not isinstance(model, nn.Sequential):
        raise ValueError("mc-dropout: the network has no dropout layer and is not a Sequential to insert one into")
    modules: list[nn.Module] = []
    for module in model:
        modules.append(module)
        if isinstance(module, ACTIVATIONS):
            modules.append(nn.Dropout(rate))
    if not any(isinstance(m, DROPOUT_TYPES) for m in modules):
        raise ValueError("mc-dropout: no activation to put dropout after")
    return nn.Sequential(*modules)


@attrs.frozen(kw_only=True)
class NoisyCopiesLoss(Defense):
    """Cross-entropy over `train_samples` draws of the stochastic model per image (noisy copies, dropout masks)."""

    train_samples: int = param(1, kind=int, ge=1, help="draws (noisy copies / dropout masks) per image and step")
    inference_samples: int = param(10, kind=int, ge=1, help="S_I: draws averaged at prediction")

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], context: TrainContext) -> LossOutput:
        """Mean cross-entropy over the draws."""
        x, y = batch
        logits = model(x, samples=self.train_samples)
        return LossOutput(loss=mean_cross_entropy(logits, y), parts={"acc": ensemble_accuracy(logits.detach(), y)})


@attrs.frozen(kw_only=True)
class MCDropout(NoisyCopiesLoss):
    """MC dropout: dropout stays on at prediction, S_I masks averaged; optionally with randomized smoothing."""

    name: ClassVar[str] = "mc-dropout"
    rate: float | None = param(
        None,
        ge=0.0,
        lt=1.0,
        optional=True,
        help="dropout rate of every dropout layer (inserted after activations if there is none); default: the model's",
    )
    noise_variance: float = param(0.0, ge=0.0, help="smoothing: Gaussian input noise variance per draw (0: off)")

    def prepare(self, model: nn.Module) -> nn.Module:
        """Dropout layers become always-on, sampled through the sample dimension."""
        net = MCDropoutModel(with_dropout(model, self.rate) if self.rate is not None else model)
        return Smoothed(net, self.noise_variance) if self.noise_variance > 0 else net


@attrs.frozen(kw_only=True)
class Smoothing(NoisyCopiesLoss):
    """Randomized smoothing: training on noisy copies of each image, prediction averaged over noise draws."""

    name: ClassVar[str] = "smoothing"
    noise_variance: float = param(
        0.1, gt=0.0, help="Gaussian input noise variance (the paper: 0.1 Fashion-MNIST, 0.01 CIFAR-10)"
    )
    train_samples: int = param(2, kind=int, ge=1, help="noisy copies per training image (the paper: 2)")

    def prepare(self, model: nn.Module) -> nn.Module:
        """The network behind Gaussian input noise."""
        return Smoothed(model, self.noise_variance)
