"""Randomness and gradient-masking checks run with every evaluation; each finding names the run, attack and eps."""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from advbayes.components import Attack
from advbayes.errors import EvaluationWarning
from advbayes.results import EvalRecord, eps_label

ZERO_GRADIENT_SHARE = 0.5  # more than half of the input-gradient components exactly zero: a masking sign
MIN_GAP = 0.005  # differences below half a point are never reported


@attrs.frozen(kw_only=True)
class Finding:
    """One check that failed: its kind, the attack (and eps, None for every eps) and a one-line message."""

    kind: str
    attack: str
    eps: float | None
    message: str

    @property
    def tag(self) -> str:
        """An MLflow tag key naming the check, attack and eps."""
        where = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.attack)
        return f"advbayes.check.{self.kind}.{where}" + ("" if self.eps is None else f".{eps_label(self.eps)}")


def finding(kind: str, run: str, attack: str, eps: float | None, detail: str) -> Finding:
    """A Finding whose message starts with where it was found: run, attack, eps (or every eps)."""
    where = "every eps" if eps is None else f"eps {eps:g}"
    return Finding(kind=kind, attack=attack, eps=eps, message=f"run {run}, attack {attack}, {where}: {detail}")


def significantly_above(high: EvalRecord, low: EvalRecord) -> bool:
    """True when high's accuracy exceeds low's by more than half a point and two standard errors of the difference."""
    a, b = high.metrics.get("accuracy"), low.metrics.get("accuracy")
    if a is None or b is None:
        return False
    n_a, n_b = max(high.examples, 1), max(low.examples, 1)
    error = math.sqrt(a * (1 - a) / n_a + b * (1 - b) / n_b)
    return a - b > max(MIN_GAP, 1.96 * error)


def _steps(attack: Attack) -> int:
    """The iteration count of an iterative attack (a field only some attack classes have)."""
    return int(getattr(attack, "steps"))  # noqa: B009


def _steps_only_differ(first: Attack, second: Attack) -> bool:
    """Two attacks whose settings are the same but for the number of steps."""
    if type(first) is not type(second) or not hasattr(first, "steps") or _steps(first) == _steps(second):
        return False
    changed: Any = attrs.evolve  # `steps` is not a field of the Attack base class
    return bool(changed(first, steps=_steps(second), eps=second.eps) == attrs.evolve(second, eps=second.eps))


def randomness_problem(attack: Attack, attack_samples: int) -> str | None:
    """Why a white-box attack on a stochastic model may overstate robustness (S_A = 1, or draws frozen for the
    whole attack), or None; the engine reports it as a finding and advbayes.attacks as a warning."""
    if attack.access != "white-box":
        return None
    one_draw = attack_samples == 1
    if not one_draw and getattr(attack, "resample", "step") != "attack":
        return None
    how = "averages S_A = 1 draw" if one_draw else "freezes one set of draws (resample = 'attack')"
    return (
        f"the model is stochastic (identical calls differ) but the attack {how}; its gradient follows "
        "single draws and robust accuracy may be overstated (use S_A >= 10 or autoattack-rand)"
    )


def evaluation_findings(
    run: str, records: Sequence[EvalRecord], attacks: Mapping[str, Attack], stochastic: bool
) -> list[Finding]:
    """Every check on one run's evaluation: randomness, zero gradients, eps and steps monotony, black-box strength."""
    findings: list[Finding] = []
    by_attack: dict[str, list[EvalRecord]] = {}
    for record in records:
        by_attack.setdefault(record.attack_label, []).append(record)
    for label, attack in attacks.items():
        if stochastic:
            attack_samples = min((r.attack_samples for r in by_attack.get(label, [])), default=attack.attack_samples)
            problem = randomness_problem(attack, attack_samples)
            if problem is not None:
                findings.append(finding("randomness", run, label, None, problem))
    for label, rows in by_attack.items():
        rows = sorted(rows, key=lambda r: r.eps)
        for record in rows:
            share = record.diagnostics.get("zero_grad_share", 0.0)
            if share > ZERO_GRADIENT_SHARE:
                findings.append(
                    finding(
                        "zero-gradients",
                        run,
                        label,
                        record.eps,
                        f"{share:.0%} of the input-gradient components are exactly zero (gradient masking?)",
                    )
                )
        evaluated = attacks.get(label)
        if evaluated is None or not evaluated.uses_eps:
            continue
        for earlier, later in zip(rows, rows[1:]):
            if later.eps > earlier.eps and significantly_above(later, earlier):
                findings.append(
                    finding(
                        "rises-with-eps",
                        run,
                        label,
                        later.eps,
                        f"robust accuracy {later.metrics['accuracy']:.4f} is higher than "
                        f"{earlier.metrics['accuracy']:.4f} "
                        f"at eps {earlier.eps:g} (a failing attack or gradient masking)",
                    )
                )
    findings += _steps_findings(run, by_attack, attacks)
    findings += _black_box_findings(run, by_attack, attacks)
    return findings


def _steps_findings(
    run: str, by_attack: Mapping[str, list[EvalRecord]], attacks: Mapping[str, Attack]
) -> list[Finding]:
    """An attack with more steps that leaves a higher robust accuracy than the same attack with fewer."""
    findings = []
    for few_label, few in attacks.items():
        for many_label, many in attacks.items():
            if not _steps_only_differ(few, many) or _steps(few) >= _steps(many):
                continue
            at_eps = {r.eps: r for r in by_attack.get(few_label, [])}
            for record in by_attack.get(many_label, []):
                if record.eps in at_eps and significantly_above(record, at_eps[record.eps]):
                    findings.append(
                        finding(
                            "rises-with-steps",
                            run,
                            many_label,
                            record.eps,
                            f"{_steps(many)} steps leave robust accuracy {record.metrics['accuracy']:.4f}, higher "
                            f"than {at_eps[record.eps].metrics['accuracy']:.4f} with {_steps(few)} steps ({few_label})",
                        )
                    )
    return findings


def _black_box_findings(
    run: str, by_attack: Mapping[str, list[EvalRecord]], attacks: Mapping[str, Attack]
) -> list[Finding]:
    """A black-box attack (queries or a surrogate only) that beats every white-box attack at the same eps."""
    findings = []
    white = [label for label, a in attacks.items() if a.access == "white-box"]
    for label, attack in attacks.items():
        if attack.access != "black-box":
            continue
        for record in by_attack.get(label, []):
            rivals = [r for w in white for r in by_attack.get(w, []) if r.eps == record.eps and "accuracy" in r.metrics]
            if rivals and all(significantly_above(rival, record) for rival in rivals):
                best = min(rivals, key=lambda r: r.metrics["accuracy"])
                findings.append(
                    finding(
                        "black-box-stronger",
                        run,
                        label,
                        record.eps,
                        f"black-box robust accuracy {record.metrics['accuracy']:.4f} is below every white-box attack's "
                        f"(best {best.attack_label}: {best.metrics['accuracy']:.4f}); "
                        "the gradients mislead (gradient masking)",
                    )
                )
    return findings


def warn(findings: Sequence[Finding]) -> None:
    """Issue each finding as an EvaluationWarning."""
    for finding in findings:
        warnings.warn(finding.message, EvaluationWarning, stacklevel=2)


def as_tags(findings: Sequence[Finding]) -> dict[str, Any]:
    """MLflow tags: one per finding, its message as the value."""
    return {finding.tag: finding.message for finding in findings}
