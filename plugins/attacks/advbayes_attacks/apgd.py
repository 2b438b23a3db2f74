"""Auto-PGD (Croce & Hein, 2020): APGD-CE, APGD-DLR and the targeted APGD-T, with EOT through the sample dimension."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch
from torch import nn

from advbayes import AttackResult, is_stochastic, param
from advbayes_attacks.attacks import IterativeAttack, ascent_direction, lengths, project
from advbayes_attacks.selection import KEEP, MISCLASSIFIED_BONUS


def random_start(x: torch.Tensor, norm: str) -> torch.Tensor:
    """AutoAttack's start direction: uniform noise scaled to L_inf length 1, or Gaussian noise to L2 length 1."""
    t = (2 * torch.rand_like(x) - 1) if norm == "inf" else torch.randn_like(x)
    flat = t.flatten(1)
    length = flat.abs().amax(dim=1) if norm == "inf" else flat.norm(dim=1)
    return t / (length.view(-1, *([1] * (x.dim() - 1))) + 1e-12)


def oscillating(loss_steps: torch.Tensor, step: int, window: int, rho: float) -> torch.Tensor:
    """1 where the loss rose in at most rho * window of the last `window` steps (AutoAttack's condition 1)."""
    rises = torch.zeros(loss_steps.shape[1], device=loss_steps.device)
    for back in range(window):
        rises += (loss_steps[step - back] > loss_steps[step - back - 1]).float()  # index -1 wraps, as upstream does
    return (rises <= window * rho).float()


@attrs.frozen(kw_only=True)
class APGD(IterativeAttack):
    """Auto-PGD: momentum steps whose size halves when the loss stalls; untargeted (ce, dlr) or targeted (APGD-T).

    Gradients average S_A draws in one call with the sample dimension. On a deterministic model each example is
    attacked until it is misclassified (AutoAttack's rule); on a stochastic model every example runs every
    restart and target, and results compete only on fresh draws (keep = "best") or not at all (keep = "last").
    """

    name: ClassVar[str] = "apgd"
    steps: int = param(100, kind=int, ge=1, le=1_000_000, help="iterations per run")
    keep: str = param(
        "best",
        kind=str,
        choices=KEEP,
        help="best: the strongest iterate (judged on fresh draws for a stochastic model); last: the final iterate",
    )
    rho: float = param(0.75, gt=0.0, le=1.0, help="step-size halving threshold on the share of loss increases")
    targets: int = param(
        0,
        kind=int,
        ge=0,
        le=100_000,
        help="APGD-T: the top classes other than the label tried as targets; 0 = untargeted",
    )

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        """The strongest result over targets and restarts."""
        if self.eps == 0:
            return self.unchanged(x)
        x, y = x.detach(), y.long()
        stochastic = is_stochastic(model, x)
        clean_logits: torch.Tensor | None = None
        if not stochastic or self.targets:  # the clean prediction scores the clean input or ranks the targets
            with torch.no_grad():
                clean_logits = model(x, samples=self.attack_samples)
        overall = self.selection(model, y, stochastic)
        # the clean input competes too (a deterministic model's misclassified example needs no attack)
        if clean_logits is None:
            overall.offer(x)
        else:
            overall.offer(
                x, None if stochastic else self.deterministic_score(self.losses_of(clean_logits, y), clean_logits, y)
            )
        zeros, total = torch.zeros((), device=x.device), 0
        targets: list[int | None] = [None]
        if self.targets and clean_logits is not None:
            targets = list(range(min(self.targets, clean_logits.shape[-1] - 1)))
        with self.draws(model):
            for rank in targets:
                for _ in range(self.restarts):
                    active = torch.arange(len(x), device=x.device)
                    if not stochastic:
                        active = (overall.scores < MISCLASSIFIED_BONUS / 2).nonzero().squeeze(1)
                        if active.numel() == 0:
                            break
                    target = None
                    if rank is not None and clean_logits is not None:  # the (rank+2)-th class, as upstream
                        target = clean_logits.mean(dim=0)[active].sort(dim=-1).indices[:, -(rank + 2)]
                    found, score, zero_count, count = self._run(model, x[active], y[active], target, stochastic)
                    zeros += zero_count
                    total += count
                    overall.offer(found, score, active)
        delta = overall.best - x
        return AttackResult(
            x_adv=overall.best,
            delta=delta,
            diagnostics={**lengths(delta), "zero_grad_share": float(zeros) / max(total, 1)},
        )

    def _step(
        self,
        x: torch.Tensor,
        x_adv: torch.Tensor,
        previous: torch.Tensor,
        gradient: torch.Tensor,
        size: torch.Tensor,
        momentum: float,
    ) -> torch.Tensor:
        """One APGD update with momentum, projected onto the ball and the value range."""

        def onto_ball(point: torch.Tensor) -> torch.Tensor:
            return self.clamp(x + project(point - x, self.eps, self.norm))

        z = onto_ball(x_adv + size * ascent_direction(gradient, self.norm))
        return onto_ball(x_adv + (z - x_adv) * momentum + (x_adv - previous) * (1 - momentum))

    def _run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, stochastic: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, int]:
        """One APGD run: each example's chosen iterate, its score (deterministic models) and zero-gradient counts."""
        steps = self.steps
        window = max(int(0.22 * steps), 1)
        window_min, window_decrease = max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
        x_adv = self.clamp(x + self.eps * random_start(x, self.norm))
        losses, gradient, logits = self.loss_gradient_logits(model, x_adv, y, target)
        zeros, count = (gradient == 0).sum(), gradient.numel()
        x_best, gradient_best, loss_best = x_adv.clone(), gradient.clone(), losses.clone()
        chosen = self.selection(model, y, stochastic, target)
        self.offer(chosen, x_adv, losses, logits, y)
        size = torch.full((len(x), *([1] * (x.dim() - 1))), 2.0 * self.eps, device=x.device)
        previous = x_adv.clone()
        loss_steps = torch.zeros(steps, len(x), device=x.device)
        since_check, best_at_check = 0, loss_best.clone()
        reduced_at_check = torch.ones_like(loss_best)
        for i in range(steps):
            with torch.no_grad():
                x_next = self._step(x, x_adv, previous, gradient, size, 0.75 if i > 0 else 1.0)
            previous, x_adv = x_adv, x_next
            losses, gradient, logits = self.loss_gradient_logits(model, x_adv, y, target)
            zeros += (gradient == 0).sum()
            count += gradient.numel()
            if self.keep == "best":
                self.offer(chosen, x_adv, losses, logits, y)
            loss_steps[i] = losses
            improved = losses > loss_best
            x_best[improved], gradient_best[improved], loss_best[improved] = (
                x_adv[improved],
                gradient[improved],
                losses[improved],
            )
            since_check += 1
            if since_check == window:
                halve = oscillating(loss_steps, i, window, self.rho)
                halve = torch.max(halve, (1.0 - reduced_at_check) * (best_at_check >= loss_best).float())
                reduced_at_check, best_at_check = halve.clone(), loss_best.clone()
                flagged = halve > 0
                size[flagged] /= 2.0
                x_adv[flagged], gradient[flagged] = x_best[flagged], gradient_best[flagged]
                window, since_check = max(window - window_decrease, window_min), 0
        if self.keep == "last":
            with torch.no_grad():
                final_logits = model(x_adv, samples=self.attack_samples)
            score = (
                None
                if stochastic
                else self.deterministic_score(self.losses_of(final_logits, y, target), final_logits, y)
            )
            return x_adv, score, zeros, count
        return chosen.best, chosen.score, zeros, count
