"""Built-in metric: accuracy of the averaged prediction on the attacked inputs, with its 95 % Wilson interval and n."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch

from advbayes.components import EvalBatch, Metric, MetricState
from advbayes.intervals import with_interval
from advbayes.metric_state import sharded


class AccuracyState(MetricState):
    """Counts correct predictions (argmax of the S_I-averaged probabilities) on attacked inputs.

    With R independent predictions per example (EvalBatch.repeated_probs, autoattack-rand), `accuracy` counts an
    example only when all R predictions are right: the robust accuracy to report, since an attacker who gets R
    tries wins on any one of them. `accuracy_mean_over_r`, the mean over the R, is reported beside it.
    """

    correct: torch.Tensor  # states added by add_state (typed here: nn.Module's __getattr__ is untyped)
    all_correct: torch.Tensor
    total: torch.Tensor
    repeats: torch.Tensor
    per_example_correct: list[torch.Tensor]  # one tensor only inside a sharded compute(), which does not read it

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("all_correct", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("repeats", default=torch.tensor(1), dist_reduce_fx="max")
        self.add_state("per_example_correct", default=[], dist_reduce_fx="cat")  # for paired tests (lab/claims.py)

    def update(self, batch: EvalBatch) -> None:  # type: ignore[override]
        """Count the batch's correct predictions (over every repeat)."""
        probs = batch.repeated_probs if batch.repeated_probs is not None else batch.probs.unsqueeze(0)
        right = probs.argmax(dim=-1) == batch.y.to(probs.device).long()  # [R, B]
        self.correct += right.double().mean(dim=0).sum().to(self.correct.device)
        self.all_correct += right.all(dim=0).sum().to(self.all_correct.device)
        self.per_example_correct.append(right.all(dim=0).to(torch.uint8))  # the verdict `accuracy` counts
        self.total += torch.tensor(batch.y.numel(), device=self.total.device)
        self.repeats = torch.maximum(self.repeats, torch.tensor(probs.shape[0], device=self.repeats.device))

    def compute(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """Accuracy in [0, 1] with its interval and n; with R > 1 the all-R count, the mean over R beside it."""
        n = int(self.total)
        if int(self.repeats) == 1:
            values = with_interval("accuracy", float(self.correct), n)
        else:
            values = with_interval("accuracy", float(self.all_correct), n)
            values.update(with_interval("accuracy_mean_over_r", float(self.correct), n))
        # float64: a float32 tensor would turn 0.996 into 0.9959999918937683 in every table, CSV and the MLflow UI
        return {key: torch.tensor(value, dtype=torch.float64) for key, value in values.items()}

    def per_example(self) -> dict[str, torch.Tensor]:
        """Which test examples `accuracy` counted as correct, in the test split's order (none when the evaluation was
        sharded over processes: the gathered shards are not in that order)."""
        if sharded() or not self.per_example_correct:
            return {}
        return {"accuracy": torch.cat(self.per_example_correct)}


@attrs.frozen(kw_only=True)
class Accuracy(Metric):
    """Accuracy of the averaged prediction (S_I draws) on the attacked test inputs, with a 95 % Wilson interval."""

    name: ClassVar[str] = "accuracy"

    def create(self) -> MetricState:
        """A fresh counter."""
        return AccuracyState()
