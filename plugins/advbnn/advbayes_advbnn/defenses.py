"""BNN (ELBO on clean data), Adv-BNN (ELBO on PGD examples, Liu et al. 2019) and adversarial training (Madry)."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import torch
from torch import nn

from advbayes import (
    Defense,
    LossOutput,
    TrainContext,
    adversarial_examples,
    elbo_loss,
    ensemble_accuracy,
    entry_param,
    mean_cross_entropy,
    param,
    posterior_statistics,
    to_bayesian,
)


@attrs.frozen(kw_only=True)
class BNN(Defense):
    """Bayes by backprop: mean-field Gaussian weights, loss = CE + (alpha / N_train) * KL(q || N(0, s0^2))."""

    name: ClassVar[str] = "bnn"
    default_optimizer: ClassVar[str] = "adam"
    default_lr: ClassVar[float] = 1e-3
    # the log-sigmas' own lr: with Adam at 1e-3 they move ~1e-3 per step (benchmarks/README.md, posterior optimizers)
    default_scale_lr: ClassVar[float | None] = 0.01
    prior_sigma: float = param(0.15, gt=0.0, help="prior std s0 (Adv-BNN: CIFAR-10 0.05, others 0.15)")
    alpha: float = param(0.02, gt=0.0, le=1.0, help="KL weight (Adv-BNN: CIFAR-10 1.0, others 1/50)")
    init_sigma: float = param(0.01, gt=0.0, help="initial posterior std exp(s)")
    train_samples: int = param(1, kind=int, ge=1, help="draws per training step")
    inference_samples: int = param(10, kind=int, ge=1, help="S_I: draws averaged at prediction (paper: 10-20)")

    def prepare(self, model: nn.Module) -> nn.Module:
        """Every Linear, Conv2d and BatchNorm2d becomes Gaussian, means initialized from the built network."""
        return to_bayesian(model, init_sigma=self.init_sigma)

    def training_inputs(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, context: TrainContext
    ) -> torch.Tensor:
        """The inputs the ELBO is evaluated on: clean data."""
        return x

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], context: TrainContext) -> LossOutput:
        """Mean cross-entropy over draws and batch + (alpha / N_train) * KL, with a fresh draw for the update."""
        x, y = batch
        inputs = self.training_inputs(model, x, y, context)
        output = elbo_loss(
            model,
            inputs,
            y,
            n_train=context.n_train,
            samples=self.train_samples,
            prior_sigma=self.prior_sigma,
            kl_weight=self.alpha,
        )
        stats = posterior_statistics(model, self.prior_sigma)
        parts = {key: stats[key] for key in ("kl_per_param", "mean_sigma2", "r")}
        return LossOutput(loss=output.loss, parts={**output.parts, **parts})


@attrs.frozen(kw_only=True)
class AdvBNN(BNN):
    """Adv-BNN (Liu et al. 2019): the BNN's ELBO on PGD examples made each batch with a fresh draw per PGD step."""

    name: ClassVar[str] = "adv-bnn"
    train_attack: Any = entry_param("attacks", "pgd-train-mnist", optional=False, help="attack entry used in training")

    def training_inputs(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, context: TrainContext
    ) -> torch.Tensor:
        """PGD examples (each PGD step draws new weights: the attack calls the model once per step)."""
        return adversarial_examples(model, x, y, context, self.train_attack)


@attrs.frozen(kw_only=True)
class AdversarialTraining(Defense):
    """Adversarial training (Madry et al. 2018): cross-entropy on the training attack's examples."""

    name: ClassVar[str] = "adversarial-training"
    train_attack: Any = entry_param("attacks", "pgd-train-mnist", optional=False, help="attack entry used in training")

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], context: TrainContext) -> LossOutput:
        """Cross-entropy on adversarial examples of the batch."""
        x, y = batch
        logits = model(adversarial_examples(model, x, y, context, self.train_attack), samples=1)
        ce = mean_cross_entropy(logits, y)
        return LossOutput(loss=ce, parts={"ce": ce.detach(), "acc": ensemble_accuracy(logits.detach(), y)})
