"""Figures: box plots from samples or from logged quantiles, heat maps, and lines over eps / sample counts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from matplotlib.figure import Figure


def _figure(width: float = 6, height: float = 4) -> tuple[Figure, Any]:
    """A figure outside pyplot's registry: nothing to close, nothing kept alive after it is logged."""
    figure = Figure(figsize=(width, height))
    return figure, figure.subplots()


def box_figure(data: Mapping[str, torch.Tensor], title: str, log: bool) -> Any:
    """One box per named sample."""
    figure, axes = _figure()
    axes.boxplot([v.double().numpy() for v in data.values()], showfliers=False)
    axes.set_xticks(range(1, len(data) + 1), list(data))
    if log:
        axes.set_yscale("log")
    axes.set_title(title, fontsize=10)
    figure.tight_layout()
    return figure


def quantile_box_figure(stats: Mapping[str, Mapping[str, float]], title: str, ylabel: str) -> Any:
    """Boxes drawn from logged quantiles (q05 / q25 / q50 / q75 / q95), one per label."""
    figure, axes = _figure()
    boxes = [
        {
            "label": label,
            "whislo": s["q05"],
            "q1": s["q25"],
            "med": s["q50"],
            "q3": s["q75"],
            "whishi": s["q95"],
            "mean": s["mean"],
        }
        for label, s in stats.items()
    ]
    axes.bxp(boxes, showfliers=False, showmeans=True)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=10)
    figure.tight_layout()
    return figure


def heatmap_figure(matrix: torch.Tensor, names: Sequence[str], title: str) -> Any:
    """A labelled matrix with its values written in."""
    figure, axes = _figure(1.2 * len(names) + 2, 1.0 * len(names) + 1.5)
    image = axes.imshow(matrix.numpy(), vmin=0, vmax=1, cmap="viridis")
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            axes.text(j, i, f"{float(matrix[i, j]):.2f}", ha="center", va="center", color="white", fontsize=8)
    figure.colorbar(image)
    axes.set_title(title, fontsize=10)
    figure.tight_layout()
    return figure


def lines_figure(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    title: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
) -> Any:
    """One line per named (x, y) series."""
    figure, axes = _figure()
    for label, (xs, ys) in series.items():
        axes.plot(xs, ys, marker="o", label=label)
    if logx:
        axes.set_xscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure
