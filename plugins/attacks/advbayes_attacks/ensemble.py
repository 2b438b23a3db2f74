"""AutoAttack's protocol: the worst case per example over attacks, judged on independent draws; FAB-T adapter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import attrs
import torch
from torch import nn

from advbayes import (
    Attack,
    AttackResult,
    EvalContext,
    RunError,
    entry_list_param,
    is_stochastic,
    param,
    predict_repeated,
)
from advbayes_attacks.attacks import lengths


def correct_counts(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int, samples: int, average: str
) -> torch.Tensor:
    """How many of `repeats` independent predictions (each averaging `samples` fresh draws) are right, per example."""
    with torch.no_grad():
        probs = predict_repeated(model, x, samples, repeats, average)
    return (probs.argmax(dim=-1) == y.long()).sum(dim=0)


def paired_correct_counts(
    model: nn.Module, kept: torch.Tensor, found: torch.Tensor, y: torch.Tensor, repeats: int, samples: int, average: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """correct_counts of two candidates from ONE call: on the same draws where the model draws weights per call."""
    counts = correct_counts(model, torch.cat([kept, found]), torch.cat([y, y]), repeats, samples, average)
    return counts[: len(y)], counts[len(y) :]


def entry_label(entry: Any, attack: Attack) -> str:
    """A sub-attack's registry entry name (apgd-ce, apgd-dlr: one component, two entries), else its component."""
    if isinstance(entry, str):
        return entry
    return str(entry.get("name") or entry.get("use") or attack.name) if isinstance(entry, dict) else attack.name


@attrs.frozen(kw_only=True)
class WorstCase(Attack):
    """The worst case per example over `attacks`, each run on the examples no earlier attack broke (AutoAttack).

    An example counts as broken only when all R independent predictions (S_I fresh draws each) misclassify it;
    on a deterministic model one prediction decides (R = 1). After each sub-attack, its point and the one kept so
    far are judged in one call on fresh draws (the same weight draws for both, where the model draws its weights per
    call), and its point is kept where it is right on fewer of the R predictions.
    On a stochastic model it is also kept on a tie with the clean input: a tie there is no evidence that the attack
    failed, and keeping the clean input on ties left autoattack-rand weaker than its own APGD-CE
    (benchmarks/README.md, apgd_step_rule.py). On a deterministic model a tie is a failed attack and the clean
    input stays, as in the official AutoAttack. The sub-attacks take this entry's eps, norm, S_A, value range and
    prediction rule.
    """

    name: ClassVar[str] = "worst-case"
    access: ClassVar[str] = "ensemble"
    attacks: list[Any] = entry_list_param("attacks", (), nonempty=True, help="the attacks, run in this order")
    verdict_repeats: int = param(
        5, kind=int, ge=1, le=10_000, help="R: independent S_I predictions that judge each example"
    )
    inner: tuple[Attack, ...] = attrs.field(default=(), eq=False, repr=False, metadata={"internal": True})
    status: Callable[[str], None] | None = attrs.field(  # EvalContext.status, set by bind()
        default=None, eq=False, repr=False, metadata={"internal": True}
    )

    def deterministic_only(self, build_attack: Any) -> str | None:
        """The first sub-attack that needs a deterministic model, if any."""
        for entry in self.attacks:
            found = build_attack(entry).deterministic_only(build_attack)
            if found is not None:
                return found
        return None

    def classes_problem(self, num_classes: int, build_attack: Any) -> str | None:
        """The first sub-attack that cannot run with this many classes, named."""
        for entry in self.attacks:
            sub = build_attack(entry)
            problem = sub.classes_problem(num_classes, build_attack)
            if problem is not None:
                return f"its sub-attack '{entry_label(entry, sub)}': {problem}"
        return None

    def input_problem(self, input_shape: Any, value_range: tuple[float, float], build_attack: Any) -> str | None:
        """The first sub-attack that cannot run on these inputs, named."""
        for entry in self.attacks:
            sub = build_attack(entry)
            problem = sub.input_problem(input_shape, value_range, build_attack)
            if problem is not None:
                return f"its sub-attack '{entry_label(entry, sub)}': {problem}"
        return None

    def bind(self, context: EvalContext) -> Attack:
        """Build and bind the sub-attacks."""
        inner = tuple(context.build_attack(entry).bind(context) for entry in self.attacks)
        return attrs.evolve(self, inner=inner, status=context.status)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        """Run each attack on the still-robust examples; keep per example the result with fewest right predictions."""
        if not self.inner:
            raise RunError("attack 'worst-case' used before bind(): the run engine binds it to its sub-attacks")
        x, y = x.detach(), y.long()
        stochastic = is_stochastic(model, x)
        repeats = self.verdict_repeats if stochastic else 1
        best_x = x.clone()
        attacked = torch.zeros(len(y), dtype=torch.bool, device=y.device)  # best_x is some sub-attack's point
        right = correct_counts(model, x, y, repeats, self.inference_samples, self.prediction_average)
        diagnostics: dict[str, Any] = {"robust_clean": float((right > 0).float().mean())}
        for step, (entry, attack) in enumerate(zip(self.attacks, self.inner), start=1):
            active = (right > 0).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            if self.status is not None:  # one sub-attack on a batch can take minutes (square: 5,000 queries)
                self.status(
                    f"{entry_label(entry, attack)} ({step}/{len(self.inner)}) on the {active.numel()} of {len(y)} "
                    "examples still robust"
                )
            configured = attrs.evolve(
                attack,
                eps=self.eps,
                norm=self.norm,
                attack_samples=self.attack_samples,
                value_range=self.value_range,
                inference_samples=self.inference_samples,
                prediction_average=self.prediction_average,
            )
            found = configured(model, x[active], y[active]).x_adv.detach()
            kept_right, found_right = paired_correct_counts(
                model, best_x[active], found, y[active], repeats, self.inference_samples, self.prediction_average
            )
            better = found_right < kept_right
            if stochastic:
                better |= (found_right == kept_right) & ~attacked[active]
            chosen = best_x[active]
            chosen[better] = found[better]
            best_x[active], right[active] = chosen, torch.where(better, found_right, kept_right)
            attacked[active] |= better
            diagnostics[f"robust_after_{entry_label(entry, attack)}"] = float((right > 0).float().mean())
        delta = best_x - x
        return AttackResult(x_adv=best_x, delta=delta, diagnostics={**lengths(delta), **diagnostics})


@attrs.frozen(kw_only=True)
class FABTargeted(Attack):
    """FAB-T (Croce & Hein), the official AutoAttack implementation through an adapter; deterministic models only.

    FAB is a minimum-norm attack that decides success from single evaluations, which is meaningless under
    randomness: on a stochastic model it is an error (use autoattack-rand there).
    """

    name: ClassVar[str] = "fab-t"
    steps: int = param(100, kind=int, ge=1, le=1_000_000, help="iterations")
    restarts: int = param(1, kind=int, ge=1, le=10_000, help="random restarts")
    targets: int = param(9, kind=int, ge=1, le=100_000, help="target classes tried (the top ones after the label)")

    def deterministic_only(self, build_attack: Any) -> str | None:
        """FAB-T judges single evaluations."""
        return self.name

    def input_problem(self, input_shape: Any, value_range: tuple[float, float], build_attack: Any) -> str | None:
        """The official FAB clips to [0, 1]."""
        if tuple(float(v) for v in value_range) != (0.0, 1.0):
            return f"the official FAB works in [0, 1]; the data's range is [{value_range[0]:g}, {value_range[1]:g}]"
        return None

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        """The official FABAttack_PT, targeted, on the model's single deterministic prediction."""
        from pyautoattack.fab_pt import FABAttack_PT

        if is_stochastic(model, x):
            raise RunError(
                "attack 'fab-t': the model is stochastic; FAB judges single evaluations (use autoattack-rand)"
            )
        if self.value_range != (0.0, 1.0):
            raise RunError(f"attack 'fab-t': the official FAB works in [0, 1]; the data's range is {self.value_range}")
        classes = int(model(x[:1], samples=1).shape[-1])
        seed = int(torch.randint(0, 2**31 - 1, ()))  # drawn from the run's stream; FAB reseeds the global RNG itself
        fab = FABAttack_PT(
            lambda inputs: model(inputs, samples=1)[0],
            norm="Linf" if self.norm == "inf" else "L2",
            n_restarts=self.restarts,
            n_iter=self.steps,
            eps=self.eps,
            seed=seed,
            targeted=True,
            n_target_classes=min(self.targets, classes - 1),
            device=x.device,
        )
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            x_adv = fab.perturb(x.detach(), y.long()).detach()
        delta = x_adv - x
        return AttackResult(x_adv=x_adv, delta=delta, diagnostics=lengths(delta))
