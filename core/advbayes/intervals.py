"""Uncertainty of reported numbers: 95 % Wilson intervals for accuracies, mean and sd across seeds."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

Z95 = 1.959963984540054  # the normal quantile of a two-sided 95 % interval
COMPANIONS = ("_ci_low", "_ci_high", "_n")  # metric keys logged next to an accuracy: <name>_ci_low, ...


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion successes / n (0..1 for n = 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = min(max(successes / n, 0.0), 1.0)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # round-off must not exclude the estimate itself (at p = 0 or 1 the bound equals it exactly)
    return max(0.0, min(centre - half, p)), min(1.0, max(centre + half, p))


def with_interval(name: str, successes: float, n: int) -> dict[str, float]:
    """{name: proportion, name_ci_low, name_ci_high, name_n}: an accuracy with its 95 % Wilson interval and n."""
    low, high = wilson_interval(successes, n)
    return {name: successes / n if n else 0.0, f"{name}_ci_low": low, f"{name}_ci_high": high, f"{name}_n": float(n)}


def is_companion(key: str, keys: Collection[str]) -> bool:
    """True for <name>_ci_low / _ci_high / _n when <name> itself is among `keys`."""
    return any(key.endswith(suffix) and key[: -len(suffix)] in keys for suffix in COMPANIONS)


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_sd of no values")
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, sd


def format_interval(value: float, low: float, high: float) -> str:
    """0.6210 [0.578, 0.662]"""
    return f"{value:.4f} [{low:.3f}, {high:.3f}]"
