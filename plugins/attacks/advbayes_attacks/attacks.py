"""FGSM, FGM, PGD (L_inf and L2, EOT, restarts, last or best iterate), random-sign and transfer attacks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

import attrs
import torch
from torch import nn

from advbayes import (
    Attack,
    AttackResult,
    EvalContext,
    ParamError,
    RunError,
    as_sampled,
    entry_param,
    frozen,
    is_stochastic,
    mean_loss_gradient,
    param,
)
from advbayes_attacks.losses import EXPECTATIONS, LOSSES, attack_loss, example_scaled, predictive_log_probs
from advbayes_attacks.selection import KEEP, IterateSelection, misclassification_score

RESAMPLING = ("step", "attack")


def _per_example_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def ascent_direction(gradient: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent unit step: sign(g) for L_inf, g / ||g||_2 per example for L2 (0 for a zero gradient)."""
    if norm == "inf":
        return gradient.sign()
    length = _per_example_norm(gradient)
    return torch.where(length > 0, gradient / length.clamp_min(1e-30), torch.zeros_like(gradient))


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project perturbations onto the eps ball of the norm."""
    if norm == "inf":
        return delta.clamp(-eps, eps)
    length = _per_example_norm(delta)
    return delta * torch.clamp(eps / length.clamp_min(1e-30), max=1.0)


def random_start_delta(x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """A uniform point of the L_inf ball, or a uniform point of the L2 ball."""
    if norm == "inf":
        return (torch.rand_like(x) * 2 - 1) * eps
    direction = torch.randn_like(x)
    direction = direction / _per_example_norm(direction).clamp_min(1e-30)
    dims = x[0].numel()
    radius = torch.rand(x.shape[0], device=x.device, dtype=x.dtype) ** (1.0 / dims) * eps
    return direction * radius.view(-1, *([1] * (x.dim() - 1)))


def lengths(delta: torch.Tensor) -> dict[str, torch.Tensor]:
    """Applied L2 and L_inf lengths per example."""
    flat = delta.detach().flatten(1)
    return {"l2": flat.norm(dim=1), "linf": flat.abs().amax(dim=1)}


@attrs.frozen(kw_only=True)
class GradientAttack(Attack):
    """Base of the gradient attacks: the attack loss, its expectation over S_A draws, and how draws are renewed."""

    loss: str = param("ce", kind=str, choices=LOSSES, help="ce, cw, margin or dlr")
    kappa: float = param(0.0, ge=0.0, help="confidence of the CW loss")
    expectation: str = param("probs", kind=str, choices=EXPECTATIONS, help="averaged over draws: probs, logits or loss")
    resample: str = param(
        "step",
        kind=str,
        choices=RESAMPLING,
        help="step: fresh S_A draws every iteration; attack: one set for the attack",
    )

    def classes_problem(self, num_classes: int, build_attack: Any) -> str | None:
        """The DLR loss reads the third largest logit (targeted: the fourth), so it needs that many classes."""
        if self.loss != "dlr":
            return None
        needed = 4 if getattr(self, "targets", 0) else 3
        if num_classes >= needed:
            return None
        kind = "targeted DLR" if needed == 4 else "DLR"
        return f"its {kind} loss needs at least {needed} classes, the data set has {num_classes} (use loss 'ce')"

    def losses_of(self, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """Per-example attack loss of per-draw logits [S, B, k], in float64: a saturated softmax's cross-entropy of
        1e-200 is 0 in float32, and an attack comparing losses (APGD's checkpoints, the best iterate) would see no
        progress toward the boundary."""
        return attack_loss(logits.double(), y, self.loss, self.expectation, self.kappa, target)

    def loss_and_gradient(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example attack loss and its input gradient (up to a positive factor per example, which no step
        reads: see example_scaled): one call with S_A draws and one backward."""
        losses, gradient, _ = self.loss_gradient_logits(model, x, y, target)
        return losses, gradient

    def loss_gradient_logits(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss, input gradient and the (detached) per-draw logits of S_A draws.

        An expectation of losses is a mean of per-draw terms: the model may take it in passes of fewer draws with
        a backward each (same draws, same sum; what it measures faster). The others need every draw at once, and
        their gradient comes back per example rescaled (example_scaled), so a saturated softmax does not zero it;
        passes of draws cannot share one example's scale, so expectation "loss" keeps float32's gradient.
        """
        if self.expectation == "loss":
            return mean_loss_gradient(model, x, self.attack_samples, lambda logits: self.losses_of(logits, y, target))
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(x, samples=self.attack_samples)
            losses = self.losses_of(example_scaled(logits.double()), y, target)
            (gradient,) = torch.autograd.grad(losses.sum(), x)
        return losses.detach(), gradient, logits.detach()

    def evaluate_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-example attack loss without a gradient."""
        with torch.no_grad():
            return self.losses_of(model(x, samples=self.attack_samples), y)

    @contextlib.contextmanager
    def draws(self, model: nn.Module) -> Iterator[None]:
        """Freeze the model's draws for the whole attack when resample = "attack"."""
        if self.resample == "attack":
            with frozen(model):
                yield
        else:
            yield

    def unchanged(self, x: torch.Tensor) -> AttackResult:
        """The result of a zero budget: x itself."""
        delta = torch.zeros_like(x)
        return AttackResult(x_adv=x, delta=delta, diagnostics={**lengths(delta), "zero_grad_share": 0.0})


@attrs.frozen(kw_only=True)
class FGSM(GradientAttack):
    """Fast gradient sign method: one step of size eps along the ascent direction (L_inf; L2 with norm = "2")."""

    name: ClassVar[str] = "fgsm"

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        """x + eps * direction(grad), clamped to the value range."""
        if self.eps == 0:
            return self.unchanged(x)
        with self.draws(model):
            losses, gradient = self.loss_and_gradient(model, x, y)
        x_adv = self.clamp(x + self.eps * ascent_direction(gradient, self.norm)).detach()
        delta = x_adv - x
        return AttackResult(
            x_adv=x_adv,
            delta=delta,
            diagnostics={
                **lengths(delta),
                "loss_history": losses.mean().view(1, 1).cpu(),
                "zero_grad_share": float((gradient == 0).float().mean()),
            },
        )


@attrs.frozen(kw_only=True)
class FGM(FGSM):
    """Fast gradient method in L2: x + eps * grad / ||grad||_2."""

    name: ClassVar[str] = "fgm"
    norm: str = param("2", kind=str, choices=("inf", "2"), help="'2' (L2) or 'inf'")


@attrs.frozen(kw_only=True)
class IterativeAttack(GradientAttack):
    """Base of the multi-step attacks: steps, restarts, and which iterate each example keeps."""

    steps: int = param(20, kind=int, ge=1, le=1_000_000, help="iterations")
    restarts: int = param(
        1, kind=int, ge=1, le=10_000, help="independent runs; each example keeps its strongest result"
    )
    keep: str = param(
        "last",
        kind=str,
        choices=KEEP,
        help="last: each run's final iterate; best: the strongest iterate, on a stochastic model judged on fresh draws",
    )
    selection_samples: int = param(
        10, kind=int, ge=1, le=100_000, help="draws of the paired comparison that picks iterates of a stochastic model"
    )

    def __attrs_post_init__(self) -> None:
        if self.resample == "attack" and (self.keep == "best" or self.restarts > 1):
            key, value = ("keep", self.keep) if self.keep == "best" else ("restarts", self.restarts)
            raise ParamError(
                key,
                "keep = 'last' and restarts = 1 with resample = 'attack' (the frozen draws that produced the "
                "iterates cannot judge them)",
                value,
            )

    def deterministic_score(self, losses: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The step's own loss, raised where the prediction is already wrong (exact on a deterministic model)."""
        return misclassification_score(losses, predictive_log_probs(logits, self.prediction_average), y)

    def paired_comparison(self, model: nn.Module, y: torch.Tensor, target: torch.Tensor | None = None) -> Any:
        """(candidates, incumbents, index) -> candidate stronger, judged in one call on `selection_samples` draws."""

        def compare(candidate: torch.Tensor, incumbent: torch.Tensor, index: torch.Tensor | slice) -> torch.Tensor:
            labels = y[index]
            chosen_target = None if target is None else target[index]
            both_y = torch.cat([labels, labels])
            both_target = None if chosen_target is None else torch.cat([chosen_target, chosen_target])
            with torch.no_grad():
                logits = model(torch.cat([candidate, incumbent]), samples=self.selection_samples)  # one set of draws
                scores = misclassification_score(
                    self.losses_of(logits, both_y, both_target),
                    predictive_log_probs(logits, self.prediction_average),
                    both_y,
                )
            return scores[: len(labels)] > scores[len(labels) :]

        return compare

    def selection(
        self, model: nn.Module, y: torch.Tensor, stochastic: bool, target: torch.Tensor | None = None
    ) -> IterateSelection:
        """An empty selection: by paired comparison on fresh draws (stochastic model) or by the steps' own scores."""
        return IterateSelection(self.paired_comparison(model, y, target) if stochastic else None)

    def offer(
        self, chosen: IterateSelection, x_adv: torch.Tensor, losses: torch.Tensor, logits: torch.Tensor, y: torch.Tensor
    ) -> None:
        """Offer an iterate, scored by its own step on a deterministic model (free), by fresh draws otherwise."""
        chosen.offer(x_adv, None if chosen.paired else self.deterministic_score(losses, logits, y))


@attrs.frozen(kw_only=True)
class PGD(IterativeAttack):
    """Projected gradient descent (Madry et al.) in L_inf or L2, with EOT over S_A draws and restarts.

    keep = "last" (the default, as Madry et al., torchattacks and Adv-BNN's Algorithm 1) returns each run's
    final iterate; keep = "best" the strongest iterate, judged on a stochastic model by a paired comparison on
    fresh draws (one extra forward per step).
    """

    name: ClassVar[str] = "pgd"
    step_size: float | None = param(None, gt=0.0, optional=True, help="step length; default 2.5 * eps / steps")
    random_start: bool = param(True, kind=bool, help="start from a uniform point of the eps ball")

    @property
    def alpha(self) -> float:
        """The step length actually used."""
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        """The strongest over restarts of each run's last (or best) iterate."""
        if self.eps == 0:
            return self.unchanged(x)
        x, y = x.detach(), y.long()
        stochastic = (self.keep == "best" or self.restarts > 1) and is_stochastic(model, x)
        history = torch.zeros(self.restarts, self.steps + 1, device=x.device)  # on the device: no sync per step
        zeros = torch.zeros((), device=x.device)
        total = 0
        chosen = self.selection(model, y, stochastic)
        with self.draws(model):
            for restart in range(self.restarts):
                x_adv = self.clamp(x + random_start_delta(x, self.eps, self.norm)) if self.random_start else x.clone()
                for step in range(self.steps):
                    losses, gradient, logits = self.loss_gradient_logits(model, x_adv, y)
                    history[restart, step] = losses.mean()
                    zeros += (gradient == 0).sum()
                    total += gradient.numel()
                    if self.keep == "best":
                        self.offer(chosen, x_adv, losses, logits, y)
                    stepped = x_adv + self.alpha * ascent_direction(gradient, self.norm)
                    x_adv = self.clamp(x + project(stepped - x, self.eps, self.norm)).detach()
                with torch.no_grad():
                    final_logits = model(x_adv, samples=self.attack_samples)
                final = self.losses_of(final_logits, y)
                history[restart, self.steps] = final.mean()
                self.offer(chosen, x_adv, final, final_logits, y)
        delta = chosen.best - x
        diagnostics: dict[str, Any] = {
            **lengths(delta),
            "loss_history": history.cpu(),
            "zero_grad_share": float(zeros) / max(total, 1),
        }
        if not chosen.paired:  # the loss of each returned point (a stochastic model's would be a noisy draw)
            single_last = self.keep == "last" and self.restarts == 1
            loss = final if single_last else self.evaluate_loss(model, chosen.best, y)
            diagnostics["attack_loss"] = loss.to(x.dtype).cpu()  # in the inputs' precision, as reported before
        return AttackResult(x_adv=chosen.best, delta=delta, diagnostics=diagnostics)


@attrs.frozen(kw_only=True)
class RandomSign(Attack):
    """Each input component moved by +eps or -eps at random (Carbone et al.'s baseline; L_inf)."""

    name: ClassVar[str] = "random-sign"
    access: ClassVar[str] = "black-box"

    def __attrs_post_init__(self) -> None:
        if self.norm != "inf":
            raise ParamError("norm", "'inf' (random sign perturbs every component by eps)", self.norm)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        """x + eps * random signs, clamped."""
        signs = torch.randint(0, 2, x.shape, device=x.device).to(x.dtype) * 2 - 1
        x_adv = self.clamp(x + self.eps * signs)
        delta = x_adv - x
        return AttackResult(x_adv=x_adv, delta=delta, diagnostics=lengths(delta))


@attrs.frozen(kw_only=True)
class Transfer(Attack):
    """Black-box transfer: `attack` crafted on a source model, evaluated on the run's model.

    The source is a defense of the same experiment trained before this one (e.g. "standard"), or a tracked
    model given as "run:<MLflow run id>".
    """

    name: ClassVar[str] = "transfer"
    access: ClassVar[str] = "black-box"
    source: str = param("standard", kind=str, help="a defense trained earlier in this experiment, or run:<RUN_ID>")
    attack: Any = entry_param("attacks", "pgd-40", optional=False, help="the attack run on the source model")
    source_model: Any = attrs.field(default=None, eq=False, repr=False, metadata={"internal": True})
    inner: Any = attrs.field(default=None, eq=False, repr=False, metadata={"internal": True})

    def model_sources(self) -> tuple[str, ...]:
        """The source model."""
        return (self.source,)

    def bind(self, context: EvalContext) -> Attack:
        """Fetch the source model and build the inner attack."""
        model = context.source_model(self.source)
        inner = context.build_attack(self.attack)
        return attrs.evolve(self, source_model=as_sampled(model).eval(), inner=inner)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        """The inner attack at this eps against the source; the target only sees the result."""
        if self.inner is None:
            raise RunError("transfer attack used before bind(): the run engine binds it to its source model")
        crafted = attrs.evolve(self.inner, eps=self.eps, value_range=self.value_range)(self.source_model, x, y)
        return AttackResult(x_adv=crafted.x_adv, delta=crafted.delta, diagnostics=dict(crafted.diagnostics))
