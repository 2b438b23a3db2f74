"""Run-level figures built from the evaluation records: sample-count sweeps, cos(alpha) per S_A, fractions vs eps."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from advbayes import EvalRecord
from advbayes_robustness.figures import lines_figure, quantile_box_figure


def _by_entry(records: Sequence[EvalRecord]) -> dict[str, list[EvalRecord]]:
    groups: dict[str, list[EvalRecord]] = defaultdict(list)
    for record in records:
        groups[record.entry or record.attack_label].append(record)
    return groups


def sweep_figures(records: Sequence[EvalRecord]) -> dict[str, Any]:
    """Figures a person would rather look at than read, by artifact path."""
    figures: dict[str, Any] = {}
    for entry, group in _by_entry(records).items():
        cells = {(r.eps, r.attack_samples, r.inference_samples): r for r in group}
        attack_counts = sorted({a for _, a, _ in cells})
        inference_counts = sorted({i for _, _, i in cells})
        eps_values = sorted({e for e, _, _ in cells})
        top_a, top_i = attack_counts[-1], inference_counts[-1]

        def accuracy(eps: float, a: int, i: int) -> float:
            record = cells.get((eps, a, i))
            return record.metrics.get("accuracy", float("nan")) if record else float("nan")

        if len(attack_counts) > 1:
            series: dict[str, tuple[Sequence[float], Sequence[float]]] = {
                f"eps {e:g}": (attack_counts, [accuracy(e, a, top_i) for a in attack_counts]) for e in eps_values
            }
            figures[f"{entry}/accuracy_vs_attack_samples.png"] = lines_figure(
                series, f"{entry}: accuracy vs S_A (S_I = {top_i})", "S_A (attack samples)", "accuracy", logx=True
            )
            found = {f"S_A={a}": _quantiles(cells.get((eps_values[-1], a, top_i)), "cos_alpha") for a in attack_counts}
            stats = {k: v for k, v in found.items() if v is not None}
            if stats:
                figures[f"{entry}/cos_alpha_by_attack_samples.png"] = quantile_box_figure(
                    stats, f"{entry}: cos(alpha) per S_A (eps {eps_values[-1]:g}, S_I = {top_i})", "cos(alpha)"
                )
        if len(inference_counts) > 1:
            series = {
                f"eps {e:g}": (inference_counts, [accuracy(e, top_a, i) for i in inference_counts]) for e in eps_values
            }
            figures[f"{entry}/accuracy_vs_inference_samples.png"] = lines_figure(
                series, f"{entry}: accuracy vs S_I (S_A = {top_a})", "S_I (inference samples)", "accuracy", logx=True
            )
    for label in dict.fromkeys(r.attack_label for r in records):
        ordered = sorted(
            (r for r in records if r.attack_label == label and "linear_fraction" in r.metrics), key=lambda r: r.eps
        )
        if len(ordered) > 1:
            xs = [r.eps for r in ordered]
            series = {
                name: (xs, [r.metrics[key] for r in ordered])
                for name, key in (
                    ("linear condition", "linear_fraction"),
                    ("smooth condition", "smooth_fraction"),
                    ("adversarial accuracy", "adversarial_accuracy"),
                )
            }
            figures[f"{label}/condition_fractions_vs_eps.png"] = lines_figure(
                series, f"{label}: robustness conditions vs eps", "eps", "fraction of test examples"
            )
    return figures


def _quantiles(record: EvalRecord | None, prefix: str) -> dict[str, float] | None:
    """mean and q05..q95 of `prefix` logged by a record, or None when absent or NaN."""
    keys = ("mean", "q05", "q25", "q50", "q75", "q95")
    if record is None or not all(f"{prefix}_{k}" in record.metrics for k in keys):
        return None
    values = {k: record.metrics[f"{prefix}_{k}"] for k in keys}
    return None if any(v != v for v in values.values()) else values
