"""Run-level figures built from the evaluation records: sample-count sweeps, cos(alpha) per S_A, fractions vs eps."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from advbayes.results import EvalRecord
from advbayes_robustness.figures import lines_figure, quantile_box_figure


def _by_entry(records: Sequence[EvalRecord]) -> dict[str, list[EvalRecord]]:
    groups: dict[str, list[EvalRecord]] = defaultdict(list)
    for record in records:
        groups[record.entry or record.attack].append(record)
    return groups


def sweep_figures(records: Sequence[EvalRecord]) -> dict[str, Any]:
    """Figures a person would rather look at than read, by artifact path."""
    figures: dict[str, Any] = {}
    for entry, group in _by_entry(records).items():
        attack_counts = sorted({r.attack_samples for r in group})
        inference_counts = sorted({r.inference_samples for r in group})
        eps_values = sorted({r.eps for r in group})
        if len(attack_counts) > 1:
            top_i = inference_counts[-1]
            series = {
                f"eps {eps:g}": (attack_counts, [_metric(group, "accuracy", eps, a, top_i) for a in attack_counts])
                for eps in eps_values
            }
            figures[f"{entry}/accuracy_vs_attack_samples.png"] = lines_figure(
                series, f"{entry}: accuracy vs S_A (S_I = {top_i})", "S_A (attack samples)", "accuracy", logx=True
            )
            stats = {
                f"S_A={a}": _quantiles(group, "cos_alpha", eps_values[-1], a, top_i) for a in attack_counts
            }
            stats = {k: v for k, v in stats.items() if v is not None}
            if stats:
                figures[f"{entry}/cos_alpha_by_attack_samples.png"] = quantile_box_figure(
                    stats, f"{entry}: cos(alpha) per S_A (eps {eps_values[-1]:g}, S_I = {top_i})", "cos(alpha)"
                )
        if len(inference_counts) > 1:
            top_a = attack_counts[-1]
            series = {
                f"eps {eps:g}": (inference_counts, [_metric(group, "accuracy", eps, top_a, i) for i in inference_counts])
                for eps in eps_values
            }
            figures[f"{entry}/accuracy_vs_inference_samples.png"] = lines_figure(
                series, f"{entry}: accuracy vs S_I (S_A = {top_a})", "S_I (inference samples)", "accuracy", logx=True
            )
    for label in dict.fromkeys(r.attack for r in records):
        cells = sorted((r for r in records if r.attack == label and "linear_fraction" in r.metrics), key=lambda r: r.eps)
        if len(cells) > 1:
            xs = [r.eps for r in cells]
            series = {name: (xs, [r.metrics[key] for r in cells]) for name, key in (
                ("linear condition", "linear_fraction"), ("smooth condition", "smooth_fraction"),
                ("adversarial accuracy", "adversarial_accuracy"),
            )}
            figures[f"{label}/condition_fractions_vs_eps.png"] = lines_figure(
                series, f"{label}: robustness conditions vs eps", "eps", "fraction of test examples"
            )
    return figures


def _metric(group: Sequence[EvalRecord], name: str, eps: float, attack_samples: int, inference_samples: int) -> float:
    for record in group:
        if (record.eps, record.attack_samples, record.inference_samples) == (eps, attack_samples, inference_samples):
            return record.metrics.get(name, float("nan"))
    return float("nan")


def _quantiles(group: Sequence[EvalRecord], prefix: str, eps: float, attack_samples: int, inference_samples: int) -> dict[str, float] | None:
    keys = ("mean", "q05", "q25", "q50", "q75", "q95")
    for record in group:
        if (record.eps, record.attack_samples, record.inference_samples) == (eps, attack_samples, inference_samples):
            if all(f"{prefix}_{k}" in record.metrics for k in keys):
                values = {k: record.metrics[f"{prefix}_{k}"] for k in keys}
                return None if any(v != v for v in values.values()) else values
    return None
