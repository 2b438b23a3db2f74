"""Optimizers for a run's parameters, including the posterior's scale parameters.

Adam moves every parameter by about lr per step whatever its gradient, so a log-sigma trained with the means' lr
can grow sigma^2 by at most exp(2 lr T) in T steps: a short run cannot leave the initial width. Two remedies,
chosen by measurement (benchmarks/README.md, "Posterior optimizers"): a parameter group for the scale parameters
with its own learning rate (`scale_lr`), and IVON (ivon-opt), which learns the means with a natural-gradient step
and reads each weight's variance off its Hessian estimate.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from advbayes.errors import RunError
from advbayes.stochastic.layers import GaussianParameter


def gaussian_parameters(net: nn.Module) -> list[GaussianParameter]:
    """Every Gaussian parameter of the network, in module order."""
    return [m for m in net.modules() if isinstance(m, GaussianParameter)]


class OptimizerSteps:
    """A torch optimizer as the training loop drives it: forward and backward inside `sampling()`, then `step()`."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    @contextlib.contextmanager
    def sampling(self) -> Iterator[None]:
        """The block in which the loss is computed and differentiated (nothing to do for gradient optimizers)."""
        yield

    def zero_grad(self) -> None:
        """Clear the gradients."""
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        """One update."""
        self.optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps to continue bit for bit."""
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's state."""
        self.optimizer.load_state_dict(state)


class IVONSteps(OptimizerSteps):
    """IVON (Shen et al. 2024, ivon-opt) on a network of Gaussian layers.

    IVON optimizes the means (and any deterministic parameter): each step perturbs them in place with its own noise
    N(0, 1/(ess (h + wd))), the Gaussian layers draw no noise of their own, and after the step every layer's
    log-sigma is set to IVON's -1/2 log(ess h). The layers' KL stays in the loss: its gradient in the means is the
    prior's pull, so IVON runs with weight decay 0 and its Hessian estimate includes the prior's precision. With
    ess = n_train / alpha this is the tempered ELBO that BNN and Adv-BNN minimize with kl_weight alpha.
    """

    def __init__(
        self, net: nn.Module, *, lr: float, ess: float, init_sigma2: float, beta2: float, clip_radius: float
    ) -> None:
        import ivon  # ivon-opt: an optional dependency, checked before the run starts

        self.net = net
        self.ess = ess
        self.scales = gaussian_parameters(net)
        scale_ids = {id(p.log_sigma) for p in self.scales}
        for parameter in self.scales:  # IVON owns the widths: no gradient, set after each step
            parameter.log_sigma.requires_grad_(False)
        self.params = [p for p in net.parameters() if p.requires_grad and id(p) not in scale_ids]
        hess_init = 1.0 / (ess * init_sigma2)  # IVON's initial width equals the defense's init_sigma
        optimizer = ivon.IVON(
            self.params, lr=lr, ess=ess, hess_init=hess_init, beta2=beta2, weight_decay=0.0, clip_radius=clip_radius
        )
        super().__init__(optimizer)
        self._offsets = self._mean_offsets()
        self.sync_widths()

    def _mean_offsets(self) -> list[tuple[GaussianParameter, int]]:
        offsets = {}
        offset = 0
        for p in self.params:
            offsets[id(p)] = offset
            offset += p.numel()
        return [(g, offsets[id(g.mu)]) for g in self.scales if id(g.mu) in offsets]

    @contextlib.contextmanager
    def sampling(self) -> Iterator[None]:
        """IVON's weight sample for this step; the Gaussian layers draw zero noise inside the block."""
        model: Any = self.net
        previous = getattr(model, "noise_off", False)
        model.noise_off = True
        try:
            with self.optimizer.sampled_params(train=True):  # type: ignore[attr-defined]
                yield
        finally:
            model.noise_off = previous

    def step(self) -> None:
        """IVON's update, then the layers' widths from its Hessian."""
        self.optimizer.step()
        self.sync_widths()

    def sync_widths(self) -> None:
        """log sigma = -1/2 log(ess (h + wd)) for every Gaussian parameter IVON optimizes."""
        group = self.optimizer.param_groups[0]
        log_sigma = -0.5 * (self.ess * (group["hess"] + group["weight_decay"])).log()
        with torch.no_grad():
            for parameter, offset in self._offsets:
                count = parameter.mu.numel()
                parameter.log_sigma.copy_(log_sigma[offset : offset + count].view_as(parameter.log_sigma))

    def state_dict(self) -> dict[str, Any]:
        """IVON's state (means' momentum and Hessian in its parameter group) and its step count (bias correction)."""
        return {**self.optimizer.state_dict(), "ivon_step": int(self.optimizer.current_step)}  # type: ignore[attr-defined]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's state."""
        state = dict(state)
        step = int(state.pop("ivon_step", 0))
        self.optimizer.load_state_dict(state)
        self.optimizer.current_step = step  # type: ignore[attr-defined]
        self.sync_widths()


def optimizer_problem(experiment: Any, defense: Any, net: nn.Module) -> str | None:
    """Why the experiment's optimizer cannot train this network (None when it can): checked before any work."""
    if (experiment.optimizer or defense.default_optimizer) != "ivon":
        return None
    try:
        import ivon  # noqa: F401
    except ImportError:
        return "optimizer 'ivon' needs the ivon-opt package (pip install ivon-opt)"
    scales = gaussian_parameters(net)
    if not scales:
        return (
            f"optimizer 'ivon' learns a posterior: defense '{defense.name}' has no Gaussian weights (use bnn, "
            "adv-bnn or another Bayesian defense)"
        )
    other = sorted({type(p).__name__ for p in scales if type(p) is not GaussianParameter})
    if other:
        return (
            f"optimizer 'ivon' sets each weight's sigma from its Hessian: defense '{defense.name}' has weights with "
            f"more than a mean and a sigma ({', '.join(other)}); use adam with scale_lr"
        )
    return None


def make_optimizer(experiment: Any, defense: Any, net: nn.Module, *, n_train: int) -> OptimizerSteps:
    """The experiment's optimizer (falling back to the defense's defaults), with the scale parameters in their own
    group when `scale_lr` (the experiment's, else the defense's) is set."""
    name = experiment.optimizer or defense.default_optimizer
    lr = experiment.lr if experiment.lr is not None else defense.default_lr
    scale_lr = experiment.scale_lr if experiment.scale_lr is not None else getattr(defense, "default_scale_lr", None)
    if name == "ivon":
        problem = optimizer_problem(experiment, defense, net)
        if problem:
            raise RunError(problem)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            raise RunError("optimizer 'ivon' draws its weight noise per process: train it in one process (no --nproc)")
        scales = gaussian_parameters(net)
        alpha = float(getattr(defense, "alpha", 1.0))
        init_sigma2 = float(torch.stack([(2 * p.log_sigma.detach()).exp().mean() for p in scales]).mean())
        return IVONSteps(
            net,
            lr=lr,
            ess=n_train / alpha,
            init_sigma2=init_sigma2,
            beta2=experiment.ivon_beta2,
            clip_radius=experiment.ivon_clip_radius,
        )
    trainable = [p for p in net.parameters() if p.requires_grad]
    groups: list[dict[str, Any]]
    if scale_lr is not None:
        scale_ids = {id(p.log_sigma) for p in gaussian_parameters(net)}
        groups = [
            {"params": [p for p in trainable if id(p) not in scale_ids]},
            {"params": [p for p in trainable if id(p) in scale_ids], "lr": scale_lr},
        ]
        groups = [g for g in groups if g["params"]]
    else:
        groups = [{"params": trainable}]
    if name == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            groups, lr=lr, momentum=experiment.momentum, weight_decay=experiment.weight_decay
        )
    elif name == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=experiment.weight_decay)
    else:
        optimizer = torch.optim.Adam(groups, lr=lr, weight_decay=experiment.weight_decay)
    return OptimizerSteps(optimizer)


def adam_width_cap(lr: float, steps: int) -> float:
    """The most Adam can grow sigma^2 in `steps` steps at learning rate `lr` on log sigma: exp(2 lr steps)."""
    return math.exp(2 * lr * steps)
