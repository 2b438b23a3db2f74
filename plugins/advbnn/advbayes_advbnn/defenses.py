"""BNN (ELBO on clean data), Adv-BNN (ELBO on PGD examples, Liu et al. 2019) and adversarial training (Madry)."""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Iterator
from typing import Any, ClassVar

import attrs
import torch
from torch import nn

from advbayes.components import Defense, LossOutput, TrainContext
from advbayes.losses import ensemble_accuracy, mean_cross_entropy
from advbayes.params import entry_param, param
from advbayes.stochastic import StochasticModel, kl, to_bayesian


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Craft training attacks in eval mode, so BatchNorm neither uses nor updates statistics of attack iterates."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def adversarial_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, context: TrainContext, entry: Any) -> torch.Tensor:
    """The training attack's examples for the batch (the attack is a registry entry, built once per run)."""
    attack = context.build_attack(entry)
    with evaluation_mode(model):
        return attack(model, x, y).x_adv.detach()


@attrs.frozen(kw_only=True)
class BNN(Defense):
    """Bayes by backprop: mean-field Gaussian weights, loss = cross-entropy + (alpha / N_train) * KL(q || N(0, s0^2))."""

    name: ClassVar[str] = "bnn"
    default_optimizer: ClassVar[str] = "adam"
    default_lr: ClassVar[float] = 1e-3
    prior_sigma: float = param(0.15, gt=0.0, help="prior std s0 (Adv-BNN: CIFAR-10 0.05, others 0.15)")
    alpha: float = param(0.02, gt=0.0, le=1.0, help="KL weight (Adv-BNN: CIFAR-10 1.0, others 1/50)")
    init_sigma: float = param(0.01, gt=0.0, help="initial posterior std exp(s)")
    train_samples: int = param(1, kind=int, ge=1, help="draws per training step")
    inference_samples: int = param(10, kind=int, ge=1, help="S_I: draws averaged at prediction (paper: 10-20)")

    def prepare(self, model: nn.Module) -> nn.Module:
        """Every Linear, Conv2d and BatchNorm2d becomes Gaussian, means initialized from the built network."""
        return to_bayesian(model, init_sigma=self.init_sigma)

    def training_inputs(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, context: TrainContext) -> torch.Tensor:
        """The inputs the ELBO is evaluated on: clean data."""
        return x

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], context: TrainContext) -> LossOutput:
        """Mean cross-entropy over draws and batch + (alpha / N_train) * KL, with a fresh draw for the update."""
        x, y = batch
        inputs = self.training_inputs(model, x, y, context)
        logits = model(inputs, samples=self.train_samples)
        ce = mean_cross_entropy(logits, y)
        divergence = kl(model, self.prior_sigma)
        stats = posterior_summary(model)
        return LossOutput(
            loss=ce + self.alpha / context.n_train * divergence,
            parts={
                "ce": ce.detach(),
                "kl": divergence.detach(),
                "kl_per_param": divergence.detach() / max(stats["count"], 1),
                "mean_sigma2": stats["mean_sigma2"],
                "acc": ensemble_accuracy(logits.detach(), y),
            },
        )


@attrs.frozen(kw_only=True)
class AdvBNN(BNN):
    """Adv-BNN (Liu et al. 2019): the BNN's ELBO on PGD examples made each batch with a fresh draw per PGD step."""

    name: ClassVar[str] = "adv-bnn"
    train_attack: Any = entry_param("attacks", "pgd-train-mnist", optional=False, help="attack entry used in training")

    def training_inputs(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, context: TrainContext) -> torch.Tensor:
        """PGD examples (each PGD step draws new weights: the attack calls the model once per step)."""
        return adversarial_inputs(model, x, y, context, self.train_attack)


@attrs.frozen(kw_only=True)
class AdversarialTraining(Defense):
    """Adversarial training (Madry et al. 2018): cross-entropy on the training attack's examples."""

    name: ClassVar[str] = "adversarial-training"
    train_attack: Any = entry_param("attacks", "pgd-train-mnist", optional=False, help="attack entry used in training")

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], context: TrainContext) -> LossOutput:
        """Cross-entropy on adversarial examples of the batch."""
        x, y = batch
        logits = model(adversarial_inputs(model, x, y, context, self.train_attack), samples=1)
        ce = mean_cross_entropy(logits, y)
        return LossOutput(loss=ce, parts={"ce": ce.detach(), "acc": ensemble_accuracy(logits.detach(), y)})


def posterior_summary(model: nn.Module) -> dict[str, Any]:
    """Count of stochastic weights and their mean variance (0 for a deterministic model)."""
    if not isinstance(model, StochasticModel):
        return {"count": 0, "mean_sigma2": torch.zeros(())}
    with torch.no_grad():
        parameters = model.gaussian_parameters()
        count = sum(p.mu.numel() for p in parameters)
        total = sum((2 * p.log_sigma).exp().sum() for p in parameters)
    return {"count": count, "mean_sigma2": total / max(count, 1)}
