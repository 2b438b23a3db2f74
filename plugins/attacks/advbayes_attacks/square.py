"""Square Attack (Andriushchenko et al., 2020), L_inf and L2: random square updates accepted by the margin loss."""

from __future__ import annotations

import functools
import math
from typing import Any, ClassVar

import attrs
import torch
from torch import nn

from advbayes import Attack, AttackResult, RunError, is_stochastic, param
from advbayes_attacks.attacks import lengths
from advbayes_attacks.losses import predictive_log_probs

SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256))


def square_fraction(p_init: float, iteration: int, queries: int, rescale: bool) -> float:
    """The share of pixels a square covers at `iteration`: halved along Andriushchenko et al.'s schedule."""
    it = int(iteration / queries * 10000) if rescale else iteration  # the schedule is written for 10,000 queries
    for bound, divisor in SCHEDULE:
        if it <= bound:
            return p_init / divisor
    return p_init / 512


def _window_profile(rows: int, cols: int, device: torch.device) -> torch.Tensor:
    """Nested rectangles weighted 1 / (r+1)^2 around the centre, unit L2 norm (the L2 attack's building block)."""
    profile = torch.zeros(rows, cols, device=device)
    top, left = rows // 2, cols // 2
    for ring in range(max(top + 1, left + 1)):
        profile[
            max(top - ring, 0) : min(top - ring + 2 * ring + 1, rows),
            max(left - ring, 0) : min(left - ring + 2 * ring + 1, cols),
        ] += 1.0 / (ring + 1) ** 2
    return profile / profile.square().sum().sqrt()


@functools.lru_cache(maxsize=256)  # Square asks for one of a few sides at each of its 5,000 queries
def l2_square(side: int, device: torch.device, generator_flip: bool) -> torch.Tensor:
    """A side x side square of unit L2 norm: a positive and a negative half, each a nested-rectangle profile.

    Cached: callers must not modify it in place."""
    block = torch.zeros(side, side, device=device)
    block[: side // 2] = _window_profile(side // 2, side, device)
    block[side // 2 :] = -_window_profile(side - side // 2, side, device)
    block = block / block.square().sum().sqrt()
    return block.t() if generator_flip else block


@attrs.frozen(kw_only=True)
class Square(Attack):
    """Square Attack: a score-based black-box attack in L_inf or L2 (only the model's outputs are used).

    On a deterministic model, as upstream: a candidate replaces the current point when its margin loss is lower,
    and an example stops once misclassified. On a stochastic model the candidate and the current point are
    scored in ONE call on the same S_A fresh draws (mean over draws) and no example stops early, so one lucky
    evaluation never decides that an example is broken.
    """

    name: ClassVar[str] = "square"
    access: ClassVar[str] = "black-box"
    queries: int = param(5000, kind=int, ge=1, le=10_000_000, help="iterations (model queries per example)")
    p_init: float = param(0.8, gt=0.0, le=1.0, help="initial share of pixels a square covers")
    restarts: int = param(1, kind=int, ge=1, le=10_000, help="independent runs; an example keeps its strongest result")
    expectation: str = param(
        "probs", kind=str, choices=("probs", "logits"), help="the averaged prediction: probs or logits"
    )
    rescale_schedule: bool = param(
        False, kind=bool, help="stretch the square-size schedule to `queries` (AutoAttack: off)"
    )

    def input_problem(self, input_shape: Any, value_range: tuple[float, float], build_attack: Any) -> str | None:
        """Squares are windows of an image: inputs must be [C, H, W]."""
        if len(tuple(input_shape)) != 3:
            return f"it perturbs square windows of images [C, H, W]; the data set's inputs are {list(input_shape)}"
        return None

    def margins(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The true class's log-probability minus the best other one, of the S_A-averaged prediction ([B], <0 wrong)."""
        with torch.no_grad():
            log_probs = predictive_log_probs(model(x, samples=self.attack_samples), self.expectation)
        true = log_probs.gather(1, y.view(-1, 1)).squeeze(1)
        other = log_probs.scatter(1, y.view(-1, 1), float("-inf")).amax(dim=1)
        return true - other

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        """The point of lowest margin found over `queries` iterations (and restarts)."""
        if x.dim() != 4:
            raise RunError(f"attack 'square': expected image inputs [B, C, H, W], got shape {list(x.shape)}")
        if self.eps == 0:
            delta = torch.zeros_like(x)
            return AttackResult(x_adv=x, delta=delta, diagnostics=lengths(delta))
        x, y = x.detach(), y.long()
        stochastic = is_stochastic(model, x)
        best_x, best_margin = self._run(model, x, y, stochastic)
        for _ in range(self.restarts - 1):
            found, margin = self._run(model, x, y, stochastic)
            if stochastic:
                better = self._paired(model, found, best_x, y)
            else:
                better = margin < best_margin
                best_margin = torch.where(better, margin, best_margin)
            best_x[better] = found[better]
        delta = best_x - x
        return AttackResult(x_adv=best_x, delta=delta, diagnostics=lengths(delta))

    def _paired(
        self, model: nn.Module, candidate: torch.Tensor, current: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """True where the candidate's margin is lower than the current point's, both on the same fresh draws."""
        margins = self.margins(model, torch.cat([candidate, current]), torch.cat([y, y]))
        return margins[: len(y)] < margins[len(y) :]

    def _initial(self, x: torch.Tensor) -> torch.Tensor:
        """Vertical stripes of +-eps (L_inf), or a grid of signed L2 squares scaled to the eps sphere (L2)."""
        batch, channels, height, width = x.shape
        if self.norm == "inf":
            signs = torch.randint(0, 2, (batch, channels, 1, width), device=x.device).to(x.dtype) * 2 - 1
            return self.clamp(x + self.eps * signs)
        delta = torch.zeros_like(x)
        side = max(height // 5, 1)
        offset = (height - side * 5) // 2
        for row in range(height // side):
            for col in range(width // side):
                top, left = offset + row * side, offset + col * side
                signs = torch.randint(0, 2, (batch, channels, 1, 1), device=x.device).to(x.dtype) * 2 - 1
                block = l2_square(side, x.device, bool(torch.rand(()) > 0.5))
                delta[:, :, top : top + side, left : left + side] += (
                    block[: max(0, min(side, height - top)), : max(0, min(side, width - left))] * signs
                )
        length = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        return self.clamp(x + delta / (length + 1e-12) * self.eps)

    def _candidate(self, x: torch.Tensor, current: torch.Tensor, iteration: int) -> torch.Tensor:
        """A random square update of the current points (one window position for the batch, as upstream)."""
        _, channels, height, width = x.shape
        fraction = square_fraction(self.p_init, iteration, self.queries, self.rescale_schedule)
        if self.norm == "inf":
            side = min(max(int(round(math.sqrt(fraction * height * width))), 1), height, width)
            top = int(torch.randint(0, height - side + 1, ()))
            left = int(torch.randint(0, width - side + 1, ()))
            update = torch.zeros(channels, height, width, device=x.device, dtype=x.dtype)
            signs = torch.randint(0, 2, (channels, 1, 1), device=x.device).to(x.dtype) * 2 - 1
            update[:, top : top + side, left : left + side] = 2.0 * self.eps * signs
            moved = torch.min(torch.max(current + update, x - self.eps), x + self.eps)
            return self.clamp(moved)
        side = max(int(round(math.sqrt(fraction * height * width))), 3)
        side = min(side + (1 - side % 2), height, width)  # odd, as upstream
        delta = current - x
        top, left = int(torch.randint(0, height - side + 1, ())), int(torch.randint(0, width - side + 1, ()))
        top2, left2 = int(torch.randint(0, height - side + 1, ())), int(torch.randint(0, width - side + 1, ()))
        window = (slice(None), slice(None), slice(top, top + side), slice(left, left + side))
        window2 = (slice(None), slice(None), slice(top2, top2 + side), slice(left2, left2 + side))
        both = torch.zeros_like(x)
        both[window], both[window2] = 1.0, 1.0
        norm_first = delta[window].square().sum(dim=(-2, -1), keepdim=True).sqrt()
        norm_image = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        norm_windows = (delta * both).square().sum(dim=(-2, -1), keepdim=True).sqrt()
        signs = torch.randint(0, 2, (len(x), channels, 1, 1), device=x.device).to(x.dtype) * 2 - 1
        fresh = l2_square(side, x.device, bool(torch.rand(()) > 0.5)).view(1, 1, side, side) * signs
        fresh = fresh + delta[window] / (norm_first + 1e-12)
        room = (torch.clamp(self.eps**2 - norm_image**2, min=0.0) / channels + norm_windows**2).sqrt()
        fresh = fresh / (fresh.square().sum(dim=(-2, -1), keepdim=True).sqrt() + 1e-12) * room
        delta = delta.clone()
        delta[window2] = 0.0
        delta[window] = fresh
        length = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        return self.clamp(x + delta / (length + 1e-12) * self.eps)

    def _run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, stochastic: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One run of `queries` iterations: the points reached and (deterministic models) their margins."""
        current = self._initial(x)
        margin = self.margins(model, current, y)
        for iteration in range(self.queries):
            if stochastic:
                candidate = self._candidate(x, current, iteration)
                better = self._paired(model, candidate, current, y)
                current[better] = candidate[better]
                continue
            unbroken = margin > 0
            left = int(unbroken.sum())
            if left == 0:
                break
            if left == len(x):  # none broken yet (every query of a full budget): no gathering and scattering back
                candidate = self._candidate(x, current, iteration)
                candidate_margin = self.margins(model, candidate, y)
                better = candidate_margin < margin
                current = torch.where(better.view(-1, *([1] * (x.dim() - 1))), candidate, current)
                margin = torch.where(better, candidate_margin, margin)
                continue
            active = unbroken.nonzero().squeeze(1)
            candidate = self._candidate(x[active], current[active], iteration)
            candidate_margin = self.margins(model, candidate, y[active])
            better = candidate_margin < margin[active]
            chosen, margins = current[active], margin[active]
            chosen[better], margins[better] = candidate[better], candidate_margin[better]
            current[active], margin[active] = chosen, margins
        return current, margin
