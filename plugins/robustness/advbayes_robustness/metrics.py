"""Metrics: robustness-condition, prediction-variance, gradient-limit, softmax-robustness, transfer-correlation."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from advbayes import (
    EvalBatch,
    EvalContext,
    Metric,
    MetricState,
    RunError,
    as_sampled,
    frozen,
    list_param,
    param,
    predict,
)
from advbayes_robustness.condition import DISCRIMINANTS, discriminant_jacobian, robustness_conditions
from advbayes_robustness.figures import box_figure, heatmap_figure
from advbayes_robustness.models import noise_variance_of

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def quantile_values(prefix: str, values: torch.Tensor) -> dict[str, torch.Tensor]:
    """prefix_mean and prefix_qNN of a 1-D tensor (NaN when empty)."""
    values = values.double()
    if values.numel() == 0:
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        return {f"{prefix}_mean": nan, **{f"{prefix}_q{int(q * 100):02d}": nan for q in QUANTILES}}
    qs = torch.quantile(values, torch.tensor(QUANTILES, dtype=values.dtype, device=values.device))
    return {f"{prefix}_mean": values.mean(), **{f"{prefix}_q{int(q * 100):02d}": v for q, v in zip(QUANTILES, qs)}}


def _cat(values: Any) -> torch.Tensor:
    """A list state before or after MetricState's sync (which concatenates it), as one tensor."""
    if isinstance(values, torch.Tensor):
        return values
    return torch.cat(values) if values else torch.empty(0)


# ------------------------------------------------------------------------------------------- robustness condition


class RobustnessConditionState(MetricState):
    """Per-example conditions on a fresh, frozen set of inference draws I, against the attack's perturbation."""

    linear: torch.Tensor  # states added by add_state
    smooth: torch.Tensor
    same_draws_correct: torch.Tensor
    correct: torch.Tensor
    total: torch.Tensor
    cos_alpha: list[torch.Tensor]
    attack_length: list[torch.Tensor]
    margin: list[torch.Tensor]

    def __init__(self, samples: int | None, on: str, smoothness: float | None) -> None:
        super().__init__()
        self.samples, self.on, self.smoothness = samples, on, smoothness
        for name in ("linear", "smooth", "same_draws_correct", "correct", "total"):
            self.add_state(name, default=torch.tensor(0), dist_reduce_fx="sum")
        for name in ("cos_alpha", "attack_length", "margin"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self.used_smoothness = float("nan")

    def resolved_smoothness(self, model: nn.Module) -> float:
        """L: the metric's value, else 2 / noise variance for a smoothed model, else 1."""
        if self.smoothness is not None:
            return self.smoothness
        variance = noise_variance_of(model)
        return 2.0 / variance if variance else 1.0

    def update(self, batch: EvalBatch) -> None:  # type: ignore[override]
        """Conditions on draws I; the attack succeeded on the same draws I or not."""
        samples = self.samples or batch.inference_samples
        self.used_smoothness = self.resolved_smoothness(batch.model)
        with frozen(batch.model):  # the same draws I for f(x), its Jacobian and f(x + delta)
            f, jacobian = discriminant_jacobian(batch.model, batch.x, samples, self.on)
            with torch.no_grad():
                logits = as_sampled(batch.model)(batch.result.x_adv, samples=samples)
        f_adv = logits.softmax(-1).mean(0) if self.on == "probs" else logits.mean(0)
        conditions = robustness_conditions(f, jacobian, batch.y, batch.result.delta, self.used_smoothness)
        attacked = conditions.correct & (conditions.attack_length > 0)
        self.linear += conditions.linear_robust.sum()
        self.smooth += conditions.smooth_robust.sum()
        self.same_draws_correct += (conditions.correct & (f_adv.argmax(-1) == batch.y)).sum()
        self.correct += (batch.probs.argmax(-1) == batch.y).sum()
        self.total += len(batch.y)
        self.cos_alpha.append(conditions.cos_alpha[attacked].double())
        self.attack_length.append(conditions.attack_length.double())
        self.margin.append(conditions.margin[conditions.correct].double())

    def compute(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """Fractions beside the adversarial accuracy, cos(alpha) and attack-length distributions."""
        total = self.total.clamp(min=1).double()
        return {
            "linear_fraction": self.linear / total,
            "smooth_fraction": self.smooth / total,
            "same_draws_accuracy": self.same_draws_correct / total,
            "adversarial_accuracy": self.correct / total,
            "smoothness_L": torch.tensor(self.used_smoothness),
            **quantile_values("cos_alpha", _cat(self.cos_alpha)),
            **quantile_values("attack_length", _cat(self.attack_length)),
            **quantile_values("margin", _cat(self.margin)),
        }

    def figures(self) -> dict[str, Any]:
        """cos(alpha) of this cell as a box plot."""
        cos = _cat(self.cos_alpha)
        if cos.numel() == 0:
            return {}
        return {"cos_alpha.png": box_figure({"cos(alpha)": cos.cpu()}, "cos(alpha) of attacked examples", log=False)}


@attrs.frozen(kw_only=True)
class RobustnessCondition(Metric):
    """Däubener & Fischer's linear and L-smooth robustness conditions per example, beside the adversarial accuracy."""

    name: ClassVar[str] = "robustness-condition"
    samples: int | None = param(None, kind=int, ge=1, optional=True, help="|I|: draws of the condition (default S_I)")
    on: str = param(
        "probs",
        kind=str,
        choices=DISCRIMINANTS,
        help="discriminant: averaged probabilities, or logits (Theorem 3.2's linear case)",
    )
    smoothness: float | None = param(
        None,
        gt=0.0,
        optional=True,
        help="L of the smooth condition (default: 2 / noise variance when smoothed, else 1)",
    )

    def create(self) -> MetricState:
        """A fresh state."""
        return RobustnessConditionState(self.samples, self.on, self.smoothness)


# ------------------------------------------------------------------------------------------- prediction variance


class PredictionVarianceState(MetricState):
    """Var over many draws of f_y(x, theta) per example, and extreme single-draw predictions."""

    variances: list[torch.Tensor]  # states added by add_state
    extreme: torch.Tensor
    predictions: torch.Tensor

    def __init__(self, draws: int, chunk: int) -> None:
        super().__init__()
        self.draws, self.chunk = draws, chunk
        self.add_state("variances", default=[], dist_reduce_fx="cat")
        self.add_state("extreme", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("predictions", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, batch: EvalBatch) -> None:  # type: ignore[override]
        """Chunks of draws; sums in float64 for a stable variance."""
        model = as_sampled(batch.model)
        total = torch.zeros(len(batch.y), dtype=torch.float64, device=batch.y.device)
        squares = torch.zeros_like(total)
        seen = 0
        while seen < self.draws:
            n = min(self.chunk, self.draws - seen)
            probs = model(batch.x, samples=n).softmax(-1)
            p_y = probs.gather(-1, batch.y.view(1, -1, 1).expand(probs.shape[0], -1, 1)).squeeze(-1).double()
            repeat = n / probs.shape[0]  # a deterministic model returns one draw that stands for all n
            total += p_y.sum(0) * repeat
            squares += (p_y**2).sum(0) * repeat
            self.extreme += (probs.amax(-1) == 1.0).sum() * int(repeat)
            self.predictions += n * len(batch.y)
            seen += n
        mean = total / self.draws
        self.variances.append((squares / self.draws - mean**2).clamp_min(0))

    def compute(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """Mean and quantiles of the per-example variance; extreme predictions (max probability exactly 1)."""
        return {
            **quantile_values("prediction_variance", _cat(self.variances)),
            "extreme_predictions": self.extreme.double(),
            "extreme_fraction": self.extreme / self.predictions.clamp(min=1).double(),
        }


@attrs.frozen(kw_only=True)
class PredictionVariance(Metric):
    """Empirical variance of f_y(x, theta) over many draws per clean test example; counts extreme predictions."""

    name: ClassVar[str] = "prediction-variance"
    per_attack: ClassVar[bool] = False
    draws: int = param(1000, kind=int, ge=2, help="draws per example (the paper: 1,000)")
    chunk: int = param(100, kind=int, ge=1, help="draws per forward pass")

    def create(self) -> MetricState:
        """A fresh state."""
        return PredictionVarianceState(self.draws, self.chunk)


# ------------------------------------------------------------------------------------------- gradient limit


def draw_chunks(total: int, largest: int) -> list[int]:
    """total split into parts of at most `largest` (the draws of one forward-backward)."""
    return [min(largest, total - start) for start in range(0, total, largest)]


class GradientLimitState(MetricState):
    """Components of (1/S) sum_s grad_x L(x, w_s) for growing S, on the first `examples` test examples.

    A batch shares each draw across its images, so one measurement at small S is dominated by the few draws it
    made: the whole measurement is repeated `repeats` times with fresh draws, and the spread of its mean over
    the repeats is reported beside it.
    """

    def __init__(self, counts: tuple[int, ...], examples: int, repeats: int = 1, max_draws: int = 25) -> None:
        super().__init__()
        self.counts, self.examples, self.repeats = tuple(sorted(counts)), examples, repeats
        self.max_draws = max_draws  # draws per forward-backward: 150 at once kept 20 GB of activations (mnist-cnn)
        self.seen = 0
        for count in self.counts:
            for repeat in range(repeats):
                self.add_state(f"s{count}_r{repeat}", default=[], dist_reduce_fx="cat")

    def update(self, batch: EvalBatch) -> None:  # type: ignore[override]
        """One forward and backward per increment of S and repeat: the prefix sums give every count."""
        take = min(len(batch.y), self.examples - self.seen)
        if take <= 0:
            return
        x, y = batch.x[:take].detach(), batch.y[:take]
        model = as_sampled(batch.model)
        for repeat in range(self.repeats):
            running = torch.zeros_like(x, dtype=torch.float64)
            previous = 0
            for count in self.counts:
                for n in draw_chunks(count - previous, self.max_draws):
                    with torch.enable_grad():
                        inputs = x.clone().requires_grad_(True)
                        logits = model(inputs, samples=n)
                        repeat_share = n / logits.shape[0]  # a deterministic model's one draw stands for all n
                        loss = F.cross_entropy(logits.flatten(0, 1), y.repeat(logits.shape[0]), reduction="sum")
                        (gradient,) = torch.autograd.grad(loss * repeat_share, inputs)
                    running += gradient.double()
                getattr(self, f"s{count}_r{repeat}").append((running / count).flatten(1).abs().flatten())
                previous = count
        self.seen += take

    def components(self, count: int) -> torch.Tensor:
        """|components| at S = count, every repeat pooled."""
        return torch.cat([_cat(getattr(self, f"s{count}_r{r}")).flatten() for r in range(self.repeats)])

    def compute(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """Mean and quantiles of |component| per sample count (repeats pooled), and the sd of the mean over repeats."""
        values: dict[str, torch.Tensor] = {}
        for count in self.counts:
            values.update(quantile_values(f"expected_gradient_abs/s{count}", self.components(count)))
            means = torch.stack([_cat(getattr(self, f"s{count}_r{r}")).double().mean() for r in range(self.repeats)])
            sd = means.std() if self.repeats > 1 else torch.zeros((), dtype=torch.float64)
            values[f"expected_gradient_abs/s{count}_repeat_sd"] = sd
        return values

    def figures(self) -> dict[str, Any]:
        """Carbone et al.'s picture: the distribution of |components| per sample count."""
        data = {f"S={count}": self.components(count).cpu() for count in self.counts}
        if not any(v.numel() for v in data.values()):
            return {}
        return {
            "expected_gradient.png": box_figure(
                data, "|components| of the expected loss gradient vs posterior samples", log=True
            )
        }


@attrs.frozen(kw_only=True)
class GradientLimit(Metric):
    """Expected input gradient of the loss over S posterior draws, per S: does it vanish as S grows (Carbone et al.)?"""

    name: ClassVar[str] = "gradient-limit"
    per_attack: ClassVar[bool] = False
    sample_counts: tuple[int, ...] = list_param((1, 10, 50, 100, 250), kind=int, ge=1, help="S values")
    examples: int = param(100, kind=int, ge=1, help="test examples measured (the paper: 500)")
    repeats: int = param(3, kind=int, ge=1, le=1000, help="repetitions with fresh draws (spread of the mean)")
    max_draws: int = param(25, kind=int, ge=1, le=100_000, help="draws per forward-backward (bounds the memory)")

    def create(self) -> MetricState:
        """A fresh state."""
        return GradientLimitState(self.sample_counts, self.examples, self.repeats, self.max_draws)


# ------------------------------------------------------------------------------------------- softmax robustness


class SoftmaxRobustnessState(MetricState):
    """1 - mean L_inf distance between the clean and the attacked predictive probabilities."""

    distance: torch.Tensor  # states added by add_state
    total: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("distance", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, batch: EvalBatch) -> None:  # type: ignore[override]
        """Clean probabilities on fresh draws; attacked ones are the batch's."""
        clean, _ = predict(batch.model, batch.x, batch.inference_samples, batch.prediction_average)
        self.distance += (clean - batch.probs).abs().amax(-1).double().sum()
        self.total += len(batch.y)

    def compute(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """softmax_robustness in [0, 1]."""
        return {"softmax_robustness": 1 - self.distance / self.total.clamp(min=1)}


@attrs.frozen(kw_only=True)
class SoftmaxRobustness(Metric):
    """1 - the mean L_inf difference of predictive softmax on clean and attacked inputs (Carbone et al.)."""

    name: ClassVar[str] = "softmax-robustness"

    def create(self) -> MetricState:
        """A fresh state."""
        return SoftmaxRobustnessState()


# ------------------------------------------------------------------------------------------- transfer correlation


class TransferCorrelationState(MetricState):
    """Acc[B], Acc[B|A] for every source A and target B: the batch's attack crafted on A, evaluated on B."""

    clean: torch.Tensor  # states added by add_state
    under: torch.Tensor

    def __init__(self, models: dict[str, nn.Module]) -> None:
        super().__init__()
        self.names = list(models)
        self.models = list(models.values())  # a plain list: the models must not become part of this state
        n = len(self.names)
        self.add_state("clean", default=torch.zeros(n, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("under", default=torch.zeros(n, n, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, batch: EvalBatch) -> None:  # type: ignore[override]
        """Craft on every source, evaluate on every target."""

        def correct(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                probs, _ = predict(model, x, batch.inference_samples, batch.prediction_average)
            return (probs.argmax(-1) == batch.y).sum()

        for b, target in enumerate(self.models):
            self.clean[b] += correct(target, batch.x)
        for a, source in enumerate(self.models):
            with torch.enable_grad():
                x_adv = batch.attack(source, batch.x, batch.y).x_adv
            for b, target in enumerate(self.models):
                self.under[a, b] += correct(target, x_adv)

    def matrix(self) -> torch.Tensor:
        """rho[a, b] = (Acc[B] - Acc[B|A]) / (Acc[B] - Acc[B|B]) (eq. 14; NaN when B is not attacked at all)."""
        clean = self.clean.double().unsqueeze(0)
        under = self.under.double()
        white = torch.diagonal(under).unsqueeze(0)
        return (clean - under) / (clean - white)

    def compute(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """rho_<A>_to_<B> for every pair."""
        rho = self.matrix()
        return {f"rho_{a}_to_{b}": rho[i, j] for i, a in enumerate(self.names) for j, b in enumerate(self.names)}

    def figures(self) -> dict[str, Any]:
        """The rho matrix as a heat map."""
        return {
            "transfer_correlation.png": heatmap_figure(
                self.matrix().cpu(), self.names, "rho(A -> B): rows A (source), columns B (target)"
            )
        }


@attrs.frozen(kw_only=True)
class TransferCorrelation(Metric):
    """Adv-BNN's transfer correlation rho(A -> B) between defenses trained in one experiment, per attack and eps."""

    name: ClassVar[str] = "transfer-correlation"
    models: tuple[str, ...] = list_param(
        (), kind=str, help="defenses of this experiment (empty: all trained so far, this one included)"
    )
    bound: Any = attrs.field(default=None, eq=False, repr=False, metadata={"internal": True})

    def model_sources(self) -> tuple[str, ...]:
        """The named defenses."""
        return tuple(self.models)

    def bind(self, context: EvalContext) -> Metric:
        """The models, in order."""
        names = list(self.models) or list(context.models)
        return attrs.evolve(self, bound={name: as_sampled(context.source_model(name)).eval() for name in names})

    def create(self) -> MetricState:
        """A fresh state."""
        if self.bound is None:
            raise RunError(
                "transfer-correlation used before bind(): the run engine binds it to the experiment's models"
            )
        return TransferCorrelationState(self.bound)
