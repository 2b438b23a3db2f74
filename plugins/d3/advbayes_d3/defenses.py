"""D3 (Bender et al. 2020): a partially Bayesian network trained with diversity penalties on input gradients."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import attrs
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset as TorchDataset

from advbayes import (
    BayesConv2d,
    BayesLinear,
    Defense,
    LossOutput,
    TrainContext,
    entry_param,
    kl,
    mean_cross_entropy,
    param,
    to_bayesian,
)
from advbayes_d3.offline import adversarial_split, source_model
from advbayes_d3.penalties import omega_m, omega_s, omega_v1, omega_v2, omega_v3, unit_directions

VARIANCE_PENALTIES = ("v1", "v2", "v3")


def forward_on_copies(model: nn.Module, x: torch.Tensor, draws: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K copies of x along the sample dimension, each requiring its own gradient, and their logits [K, B, k]: draw
    k's output depends on copy k only, so a gradient w.r.t. the copies holds the K per-draw input gradients."""
    replicated = x.detach().unsqueeze(0).repeat(draws, *([1] * x.dim())).requires_grad_(True)
    return replicated, model(replicated, samples=draws, sampled_input=True)


def per_draw_input_gradients(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int, gradient_of: str, create_graph: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [K, B, k] and the input gradient of each draw's output [K, B, ...], from ONE backward pass.

    The gradient of the sum over draws w.r.t. the K copies of x is the K per-draw gradients.
    """
    replicated, logits = forward_on_copies(model, x, draws)
    if gradient_of == "loss":
        per_draw = F.cross_entropy(logits.flatten(0, 1), y.repeat(draws), reduction="none")
    else:  # the true-class logit
        per_draw = logits.gather(-1, y.view(1, -1, 1).expand(draws, -1, 1)).flatten()
    # retain the graph: the classification loss backpropagates through the same logits afterwards
    (gradients,) = torch.autograd.grad(per_draw.sum(), replicated, create_graph=create_graph, retain_graph=True)
    return logits, gradients


def logged_omega_m(model: nn.Module, x: torch.Tensor, draws: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits [K, B, k] on K copies of x, and Omega_M filled in by the training loss's own backward.

    Without a penalty Omega_M is only logged. The loss (mean CE over draws + KL) has, w.r.t. copy k, the gradient
    of draw k's cross-entropy divided by K x B, which has the same unit directions, so the trainer's backward
    yields them and a separate backward through the K copies (about a quarter of the step: benchmarks/d3_step.py)
    is saved. The engine reads a loss's parts after its backward; until then the value is nan.
    """
    replicated, logits = forward_on_copies(model, x, draws)
    value = torch.full((), math.nan, device=x.device)

    def fill(gradient: torch.Tensor) -> None:  # returns None: the gradient itself is left as it is
        value.copy_(omega_m(unit_directions(gradient.detach())).mean())

    replicated.register_hook(fill)
    return logits, {"omega_m": value}


@attrs.frozen(kw_only=True)
class D3(Defense):
    """D3: a Bayesian back (last `bayesian_fraction` of the weight layers), K draws per step, diversity penalties."""

    name: ClassVar[str] = "d3"
    prediction_average: ClassVar[str] = "logits"  # the paper averages logits over draws at inference
    default_optimizer: ClassVar[str] = "adam"
    default_lr: ClassVar[float] = 1e-3
    default_scale_lr: ClassVar[float | None] = 0.01  # as BNN's: Adam at 1e-3 would pin the widths
    bayesian_fraction: float = param(0.25, gt=0.0, le=1.0, help="last fraction of the weight layers made Bayesian")
    draws: int = param(10, kind=int, ge=2, help="K: posterior draws per training step")
    lambda_m: float = param(0.0, ge=0.0, help="weight of the mean penalty Omega_M")
    lambda_v: float = param(0.0, ge=0.0, help="weight of the variance penalty")
    variance_penalty: str = param("v3", kind=str, choices=VARIANCE_PENALTIES, help="v1 min, v2 soft-min, v3 target")
    temperature: float = param(10.0, gt=0.0, help="soft-min temperature of Omega_V2")
    lambda_s: float = param(0.0, ge=0.0, help="weight of the non-sparsity penalty Omega_S")
    gradient_of: str = param(
        "loss", kind=str, choices=("loss", "true-logit"), help="the output whose input gradient is penalized"
    )
    prior_sigma: float = param(0.15, gt=0.0, help="prior std of the ELBO's KL")
    alpha: float = param(0.02, gt=0.0, le=1.0, help="KL weight (alpha / N_train)")
    init_sigma: float = param(0.01, gt=0.0, help="initial posterior std")
    init_mean_std: float = param(
        0.0,
        ge=0.0,
        help="std s of N(0, s) the Bayesian weight and bias means are redrawn from (TensorFlow Probability's "
        "default: 0.1); 0 keeps PyTorch's initialization",
    )
    inference_samples: int = param(10, kind=int, ge=1, help="S_I (the paper: as many draws as in training)")
    offline_attack: Any = entry_param(
        "attacks", None, help="-Off: this attack's examples on a deterministic model are appended to the training set"
    )
    offline_source: str = param(
        "",
        kind=str,
        help="the deterministic model: a defense trained earlier in the experiment, run:<RUN_ID>, or '' to train one",
    )
    offline_epochs: int = param(
        3, kind=int, ge=1, help="epochs of the deterministic model trained here (offline_source '')"
    )

    def model_sources(self) -> tuple[str, ...]:
        """-Off with a named deterministic model."""
        return (self.offline_source,) if self.offline_attack is not None and self.offline_source else ()

    def before_training(self, context: TrainContext) -> TorchDataset | None:
        """-Off: append the offline attack's examples on a deterministic same-architecture model, once."""
        if self.offline_attack is None:
            return None
        model = source_model(context, self.offline_source, self.offline_epochs)
        return adversarial_split(context, model, self.offline_attack, description="d3 offline adversarial examples")

    def prepare(self, model: nn.Module) -> nn.Module:
        """The last `bayesian_fraction` of the weight layers become Gaussian; the front stays deterministic."""
        bayesian = to_bayesian(model, which=self.bayesian_fraction, init_sigma=self.init_sigma)
        if self.init_mean_std > 0:  # the paper's code is TFP's Reparameterization layers: loc ~ N(0, 0.1)
            with torch.no_grad():
                for layer in bayesian.stochastic_layers():
                    if isinstance(layer, (BayesLinear, BayesConv2d)):  # not BatchNorm: a scale near 0 kills it
                        for gaussian in layer.gaussian_parameters():
                            gaussian.mu.normal_(0.0, self.init_mean_std)
        return bayesian

    def penalties(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        """The active penalties, averaged over the batch."""
        values: dict[str, torch.Tensor] = {"omega_m": omega_m(u).mean()}
        if self.lambda_v > 0:
            penalty = {
                "v1": lambda: omega_v1(u),
                "v2": lambda: omega_v2(u, self.temperature),
                "v3": lambda: omega_v3(u),
            }
            values["omega_v"] = penalty[self.variance_penalty]().mean()
        if self.lambda_s > 0:
            values["omega_s"] = omega_s(u).mean()
        return values

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], context: TrainContext) -> LossOutput:
        """Eq. 19: CE over draws + lambda_M Omega_M + lambda_V Omega_V + lambda_S Omega_S + (alpha / N) KL."""
        x, y = batch
        penalized = self.lambda_m > 0 or self.lambda_v > 0 or self.lambda_s > 0
        if not penalized and self.gradient_of == "loss":
            logits, values = logged_omega_m(model, x, self.draws)
        else:
            logits, gradients = per_draw_input_gradients(
                model, x, y, self.draws, self.gradient_of, create_graph=penalized
            )
            values = self.penalties(unit_directions(gradients))
        ce = mean_cross_entropy(logits, y)
        total = ce + self.alpha / context.n_train * kl(model, self.prior_sigma)
        weights = {"omega_m": self.lambda_m, "omega_v": self.lambda_v, "omega_s": self.lambda_s}
        for name, value in values.items():
            if weights[name] > 0:
                total = total + weights[name] * value
        return LossOutput(
            loss=total,
            parts={
                "ce": ce.detach(),
                **{k: v.detach() for k, v in values.items()},
                "acc": (logits.detach().mean(0).argmax(-1) == y).float().mean(),
            },
        )
