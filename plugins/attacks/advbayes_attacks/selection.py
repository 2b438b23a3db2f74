"""Which iterate an attack returns: chosen without letting the draws that produced it (or lucky draws) decide."""

from __future__ import annotations

from collections.abc import Callable

import torch

KEEP = ("best", "last")
MISCLASSIFIED_BONUS = 1e6  # a misclassified iterate beats any correctly classified one (AutoAttack's rule)


class IterateSelection:
    """Keeps, per example, the strongest iterate seen so far.

    Deterministic model: the score is the attack loss the step computed anyway (plus a bonus when the iterate is
    misclassified), exact and free. Stochastic model: a candidate and the incumbent are scored in ONE call on
    the same fresh draws, independent of every draw that produced either, and the candidate replaces the
    incumbent where it scores higher. Scoring each iterate on its own step's draws would let the luckiest draw
    (shared by the whole batch) pick an early, weak iterate; the paired comparison cancels the draw's effect.
    """

    def __init__(
        self, paired_scores: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | slice], torch.Tensor] | None = None
    ) -> None:
        self.x: torch.Tensor | None = None  # nothing offered yet
        self.score: torch.Tensor | None = None
        # stochastic models: (candidates, incumbents, which examples) -> True where the candidate scores higher
        # on draws common to both and fresh; None: deterministic, offers carry their scores
        self.paired_scores = paired_scores

    @property
    def best(self) -> torch.Tensor:
        """The strongest iterate per example (an error before the first offer)."""
        if self.x is None:
            raise ValueError("no iterate was offered yet")
        return self.x

    @property
    def scores(self) -> torch.Tensor:
        """The incumbents' scores (deterministic selections only)."""
        if self.score is None:
            raise ValueError("this selection holds no scores (a stochastic model's, or nothing offered yet)")
        return self.score

    @property
    def paired(self) -> bool:
        """True when iterates are compared on fresh draws (a stochastic model)."""
        return self.paired_scores is not None

    def offer(
        self, candidate: torch.Tensor, score: torch.Tensor | None = None, active: torch.Tensor | None = None
    ) -> None:
        """Replace the incumbent where `candidate` is stronger (only for the examples `active` selects, if given);
        the first candidate, a whole batch, is taken as it is."""
        candidate = candidate.detach()
        if self.x is None:
            self.x = candidate.clone()
            self.score = None if score is None else score.detach().clone()
            return
        index = active if active is not None else slice(None)
        if self.paired_scores is not None:
            better = self.paired_scores(candidate, self.x[index], index)
        else:
            if score is None or self.score is None:
                raise ValueError("a deterministic selection needs the step's scores")
            better = score.detach() > self.score[index]
            scores = self.score[index]
            scores[better] = score.detach()[better]
            self.score[index] = scores
        chosen = self.x[index]
        chosen[better] = candidate[better]
        self.x[index] = chosen


def misclassification_score(losses: torch.Tensor, log_probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The attack loss, raised by MISCLASSIFIED_BONUS where the averaged prediction is wrong (float64, so the bonus
    does not swallow the loss's own differences: float32 resolves only 0.06 at 1e6)."""
    wrong = (log_probs.argmax(dim=-1) != y).double()
    return losses.double() + MISCLASSIFIED_BONUS * wrong
