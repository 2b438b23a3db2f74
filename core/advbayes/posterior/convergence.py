"""Has the posterior converged? Its width and the training loss (the negative ELBO for Bayesian defenses) must
both have settled over the last epochs, and the width must have left its initial value."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

import attrs

from advbayes.checks import Finding
from advbayes.posterior.width import WIDTH_KEY

INITIAL_BAND = 0.25  # a final mean sigma^2 within x1.25 of the initial one has not left its initialization
# A network that fits its training set drives its cross-entropy toward 0 (5e-6 nats after 300 epochs of the 8x8
# digits), where a relative change measures noise and never settles: a loss change is taken relative to at least
# this many nats, so a window mean that moved by less than tol x 0.01 nats has settled.
LOSS_FLOOR = 0.01


@attrs.frozen(kw_only=True)
class ConvergenceVerdict:
    """The verdict on one trained posterior, with the numbers it was decided on."""

    converged: bool
    epochs: int
    window: int
    tol: float
    width_change: float  # relative change of mean sigma^2 between the last two windows of epochs (nan: too few)
    loss_change: float  # relative change of the epoch-mean loss between the last two windows of epochs
    initial_width: float
    final_width: float
    diverged: bool = False  # the last window's mean loss is above the first epoch's: settled, but not trained
    # Where the rule stopped, how fast each still moved (relative_trend over the last 2 x window epochs): the rule
    # judges a change per window against tol, so a loss falling steadily by less than tol per window passes it.
    width_trend: float = math.nan
    loss_trend: float = math.nan

    @property
    def left_initial_width(self) -> bool:
        """False when the final mean sigma^2 is within x(1 + INITIAL_BAND) of the initial one."""
        if not (self.initial_width > 0 and self.final_width > 0):
            return True
        return abs(math.log(self.final_width / self.initial_width)) > math.log1p(INITIAL_BAND)

    def metrics(self) -> dict[str, float]:
        """What a run logs: posterior/converged (1 or 0), the changes it was decided on, width / initial width."""
        ratio = self.final_width / self.initial_width if self.initial_width > 0 else math.nan
        return {
            "posterior/converged": float(self.converged),
            "posterior/width_change": self.width_change,
            "posterior/loss_change": self.loss_change,
            "posterior/width_over_initial": ratio,
            "posterior/width_trend": self.width_trend,
            "posterior/loss_trend": self.loss_trend,
        }


def relative_change(values: Sequence[float], window: int, floor: float = 1e-12) -> float:
    """How much the last `window` values moved from the `window` before, relative to max(|before|, floor): the larger
    of the change of their means and of their medians (nan with fewer than 2 x window values).

    Window means, because one epoch's mean loss carries its batches' noise; and medians too, because one noisy
    epoch (an ELBO spike) lifts a window's mean enough to match the window before while the loss is still
    falling: gradient-limit-mnist-5k stopped a posterior at 5.0 nats that way (means 6.35 -> 6.42, medians 6.26
    -> 5.87), where its other seeds settled near 2.7."""
    if len(values) < 2 * window:
        return math.nan
    before, now = values[-2 * window : -window], values[-window:]
    mean_before = sum(before) / window
    by_mean = abs(sum(now) / window - mean_before)
    by_median = abs(statistics.median(now) - statistics.median(before))
    return max(by_mean, by_median) / max(abs(mean_before), floor)


def relative_trend(values: Sequence[float], span: int, floor: float = 1e-12) -> float:
    """The Theil-Sen slope per step of the last `span` values (the median of their pairwise slopes), relative to
    max(|their median|, floor): signed, negative while falling (nan with fewer than `span` values, or span < 2).

    A median of slopes, not a least-squares fit, so one noisy epoch does not set the trend."""
    if span < 2 or len(values) < span:
        return math.nan
    last = values[-span:]
    slopes = [(last[j] - last[i]) / (j - i) for i in range(span) for j in range(i + 1, span)]
    return statistics.median(slopes) / max(abs(statistics.median(last)), floor)


def stop_trends(widths: Sequence[float], losses: Sequence[float], window: int) -> tuple[float, float]:
    """(width trend, loss trend): relative_trend of each over the last 2 x window epochs, the loss's relative to at
    least LOSS_FLOOR nats (a width is never floored: sigma^2 lives far below 0.01)."""
    return relative_trend(widths, 2 * window), relative_trend(losses, 2 * window, floor=LOSS_FLOOR)


def loss_change(losses: Sequence[float], window: int) -> float:
    """relative_change of the training loss, relative to at least LOSS_FLOOR nats."""
    return relative_change(losses, window, floor=LOSS_FLOOR)


def convergence_verdict(
    history: Sequence[Mapping[str, float]], initial_width: float, *, tol: float, window: int
) -> ConvergenceVerdict | None:
    """The verdict from the per-epoch history (None when the history has no posterior width: no Gaussian weights).

    Converged: from the `window` epochs before to the last `window` epochs, the means of mean sigma^2 and of the
    training loss changed by less than `tol` (relative), the width left its initial value (a width pinned at its
    initialization is not a posterior that converged, whatever its loss does), and the loss ended below its first
    epoch's (a run that diverged and then settled has not converged: IVON at beta2 0.999 did that).
    """
    widths = [float(h[WIDTH_KEY]) for h in history if WIDTH_KEY in h]
    if not widths:
        return None
    losses = [float(h["loss"]) for h in history if "loss" in h]
    width_change = relative_change(widths, window)
    changed = loss_change(losses, window)
    settled = width_change < tol and changed < tol  # nan compares False: too few epochs never converge
    diverged = len(losses) >= window and sum(losses[-window:]) / window > losses[0]
    width_trend, loss_trend = stop_trends(widths, losses, window)
    verdict = ConvergenceVerdict(
        converged=settled,
        epochs=len(widths),
        window=window,
        tol=tol,
        width_change=width_change,
        loss_change=changed,
        initial_width=initial_width,
        final_width=widths[-1],
        diverged=diverged,
        width_trend=width_trend,
        loss_trend=loss_trend,
    )
    return attrs.evolve(verdict, converged=settled and verdict.left_initial_width and not diverged)


def posterior_finding(check: str, message: str) -> Finding:
    """A posterior check that failed, tagged advbayes.check.posterior.<check>."""
    return Finding(kind="posterior", attack=check, eps=None, message=message)


def convergence_findings(run: str, verdict: ConvergenceVerdict) -> list[Finding]:
    """One finding (one warning, one tag) for a posterior that has not converged, with every reason and number."""
    if verdict.converged:
        return []
    reasons = []
    if not verdict.left_initial_width:
        reasons.append(
            f"mean sigma^2 {verdict.final_width:.3g} is x{verdict.final_width / verdict.initial_width:.2f} of its "
            f"initial {verdict.initial_width:.3g}: the width never left its initialization, so the network is "
            "nearly deterministic (give the scale parameters their own scale_lr, and train longer)"
        )
    if math.isnan(verdict.width_change) or math.isnan(verdict.loss_change):
        reasons.append(
            f"convergence not shown: the verdict compares two windows of {verdict.window} epochs, so it "
            f"needs at least {2 * verdict.window} epochs (convergence_window {verdict.window})"
        )
    elif not (verdict.width_change < verdict.tol and verdict.loss_change < verdict.tol):
        reasons.append(
            f"from the {verdict.window} epochs before to the last {verdict.window}, mean sigma^2 changed by "
            f"{verdict.width_change:.1%} and the loss by {verdict.loss_change:.1%} (tolerance {verdict.tol:.0%})"
        )
    if verdict.diverged:
        reasons.append(f"the loss of the last {verdict.window} epochs is above the first epoch's: training diverged")
    message = f"run {run}, posterior after {verdict.epochs} epochs not converged: " + "; ".join(reasons)
    return [posterior_finding("unconverged", message + " (until_converged = true trains until it converges)")]


def sampler_finding(run: str, defense: str, metrics: Mapping[str, float]) -> Finding:
    """A sampler's posterior whose own diagnostics (R-hat, effective sample size) say it has not converged."""
    shown = ", ".join(f"{k.split('/', 1)[-1]} {v:.4g}" for k, v in metrics.items() if k != "posterior/converged")
    return posterior_finding(
        "unconverged", f"run {run}, defense {defense}: the sampler's chains have not converged ({shown})"
    )
