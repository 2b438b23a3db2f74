"""The sample-dimension contract: every model answers forward(x, samples=S) with logits [S, B, k]."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import nn

SAMPLES_ATTRIBUTE = "takes_samples"


@runtime_checkable
class SampledModel(Protocol):
    """The sample-dimension contract every model in advbayes keeps.

    - `forward(x, samples=S)` maps inputs [B, ...] to logits [S, B, k]: S independent draws in one call (a
      deterministic network may answer [1, B, k] whatever S is asked).
    - `takes_samples = True` marks the class as keeping the contract (`as_sampled` wraps any other module).
    - Optional: `forward(x, samples=S, sampled_input=True)` takes inputs already [S, B, ...] (one input per
      draw, as EOT attacks with per-draw inputs need).
    - Optional: a `frozen()` context manager under which every call reuses the same S draws (what
      `resample = "attack"` uses so that an attack sees one fixed ensemble).
    """

    takes_samples: bool

    def forward(self, x: torch.Tensor, samples: int = 1) -> torch.Tensor:
        """Logits [S, B, k] (or [1, B, k] for a deterministic network)."""
        ...


def takes_samples(model: nn.Module) -> bool:
    """True when the model's forward accepts `samples` and returns [S, B, k] itself."""
    return bool(getattr(model, SAMPLES_ATTRIBUTE, False))


class DeterministicSampled(nn.Module):
    """Wraps a deterministic network so forward(x, samples=S) returns [1, B, k]: all draws are the same."""

    takes_samples = True

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, samples: int = 1) -> torch.Tensor:
        """Logits of the one deterministic network, with a sample dimension of size 1."""
        return self.net(x).unsqueeze(0)


def undeclared_sample_dimension(model: nn.Module) -> bool:
    """True when the module's forward takes `samples` but its class does not declare `takes_samples`: `as_sampled`
    would wrap it as deterministic, calling forward(x) and ignoring its draws."""
    return not takes_samples(model) and "samples" in inspect.signature(model.forward).parameters


def as_sampled(model: nn.Module) -> nn.Module:  # the result keeps the SampledModel contract
    """Return `model` if it already takes a sample dimension, else wrap it as a deterministic sampled model."""
    return model if takes_samples(model) else DeterministicSampled(model)


AVERAGES = ("probs", "logits")


def predict(
    model: nn.Module, x: torch.Tensor, samples: int = 1, average: str = "probs"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictive probabilities [B, k] over `samples` draws, and the per-draw logits [S, B, k].

    average "probs" is the Bayesian model average (mean softmax); "logits" is the softmax of the mean logits
    (how D3 predicts).
    """
    logits = as_sampled(model)(x, samples=samples)
    if average == "logits":
        return logits.mean(dim=0).softmax(dim=-1), logits
    if average != "probs":
        raise ValueError(f"predict: average must be one of {AVERAGES}, got {average!r}")
    return logits.softmax(dim=-1).mean(dim=0), logits


def mean_loss_gradient(
    model: nn.Module, x: torch.Tensor, samples: int, draw_losses: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example mean over `samples` draws of `draw_losses` (per-draw logits [s, B, k] -> their mean loss [B]),
    its gradient with respect to x, and the detached logits [S, B, k].

    A model with its own `mean_loss_gradient` (StochasticModel: passes of fewer draws, each with its backward,
    when that measures faster) answers it; any other model in one call with one backward.
    """
    own = getattr(model, "mean_loss_gradient", None)
    if callable(own):
        return own(x, samples, draw_losses)
    probe = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = as_sampled(model)(probe, samples=samples)
        losses = draw_losses(logits)
        (gradient,) = torch.autograd.grad(losses.sum(), probe)
    return losses.detach(), gradient, logits.detach()


PROBE_EXAMPLES = 8


def is_stochastic(model: nn.Module, x: torch.Tensor) -> bool:
    """True when two identical calls on (a few examples of) x give different logits: the model draws at random.

    Call it outside frozen(): frozen draws make a stochastic model answer deterministically, as they should.
    """
    if isinstance(model, DeterministicSampled) or not takes_samples(model):
        return False
    probe = x[:PROBE_EXAMPLES].detach()
    with torch.no_grad():
        return not torch.equal(model(probe, samples=1), model(probe, samples=1))


def predict_repeated(
    model: nn.Module, x: torch.Tensor, samples: int, repeats: int, average: str = "probs"
) -> torch.Tensor:
    """`repeats` independent predictions [R, B, k], each averaging `samples` fresh draws, from ONE call (R x S)."""
    logits = as_sampled(model)(x, samples=repeats * samples)
    if logits.shape[0] == repeats * samples:
        groups = logits.reshape(repeats, samples, *logits.shape[1:])
    else:  # a deterministic model answers one draw whatever is asked: every repeat is the same
        groups = logits.unsqueeze(0).expand(repeats, *logits.shape)
    if average == "logits":
        return groups.mean(dim=1).softmax(dim=-1)
    if average != "probs":
        raise ValueError(f"predict_repeated: average must be one of {AVERAGES}, got {average!r}")
    return groups.softmax(dim=-1).mean(dim=1)


class SingleOutputView(nn.Module):
    """A sampled model seen as an ordinary classifier, forward(x) -> [B, k], for libraries that expect one
    (torchattacks, the official AutoAttack, RobustBench). `samples` fresh draws per call; with average "probs"
    the output is the log of the draw-averaged probabilities, so cross-entropy on it is the predictive NLL and
    its gradient is that of the Bayesian model average (EOT over `samples` draws); "logits" returns the mean
    logits. samples = 1 is one draw per call, as a naive wrapper would give."""

    def __init__(self, model: nn.Module, samples: int = 1, average: str = "probs") -> None:
        super().__init__()
        if average not in AVERAGES:
            raise ValueError(f"SingleOutputView: average must be one of {AVERAGES}, got {average!r}")
        if samples < 1:
            raise ValueError(f"SingleOutputView: samples must be >= 1, got {samples}")
        self.model = as_sampled(model)
        self.samples = samples
        self.average = average

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, k]: log mean softmax (average "probs") or mean logits over `samples` draws."""
        logits = self.model(x, samples=self.samples)
        if self.average == "logits":
            return logits.mean(dim=0)
        return torch.logsumexp(logits.log_softmax(dim=-1), dim=0) - math.log(logits.shape[0])
