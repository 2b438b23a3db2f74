"""Paper figures: a metric against eps with its intervals, one panel per attack, the defenses overlaid.

Sized for a paper's column (3.4 in per panel, 8 pt type) and saved as PNG (300 dpi) and PDF (vector). What is
drawn follows what was measured: an attack measured at several eps is a line per defense with error bars; one
measured at a single eps (or constant over eps, like the clean `none`) is a point per defense, never a
one-point "line"; 0/1 flags are left to the tables.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from advbayes.intervals import mean_sd

COLUMN_WIDTH = 3.4  # inches: one column of a two-column paper
PANEL_HEIGHT = 2.5
FONT_SIZE = 8
MAX_WIDTH = 7.0  # inches: the full text width


@attrs.frozen
class Point:
    """One measured value: defense, seed, attack, eps, value and its 95 % interval when logged."""

    defense: str
    seed: int | None
    attack: str
    eps: float
    value: float
    ci_low: float | None = None
    ci_high: float | None = None


@attrs.frozen
class Aggregate:
    """What one marker shows: the value (the mean across seeds) and its error bar, and what the bar is."""

    value: float
    low: float
    high: float
    seeds: int


def safe_file_name(text: str) -> str:
    """A file name part that every file system and MLflow artifact path accepts: no colons, slashes or spaces."""
    cleaned = re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("._")
    return cleaned or "figure"


def is_flag(metric: str, values: Iterable[float]) -> bool:
    """A 0/1 indicator (obfuscation_flag): shown in tables, not drawn as a curve."""
    return metric.endswith("_flag") or (metric.startswith("is_") and set(values) <= {0.0, 1.0})


def aggregate(points: Sequence[Point]) -> Aggregate:
    """One seed: the value with its Wilson interval (or no bar when none was logged); several seeds: the mean
    with +- one standard deviation across them."""
    if len(points) == 1:
        point = points[0]
        low = point.ci_low if point.ci_low is not None else point.value
        high = point.ci_high if point.ci_high is not None else point.value
        return Aggregate(point.value, low, high, 1)
    mean, sd = mean_sd([p.value for p in points])
    return Aggregate(mean, mean - sd, mean + sd, len(points))


def _grouped(points: Sequence[Point]) -> dict[str, dict[str, dict[float, list[Point]]]]:
    grouped: dict[str, dict[str, dict[float, list[Point]]]] = {}
    for point in points:
        grouped.setdefault(point.attack, {}).setdefault(point.defense, {}).setdefault(point.eps, []).append(point)
    return grouped


def _constant_over_eps(by_defense: Mapping[str, Mapping[float, list[Point]]]) -> bool:
    return all(len({round(aggregate(ps).value, 12) for ps in by_eps.values()}) == 1 for by_eps in by_defense.values())


def experiment_figure(points: Sequence[Point], metric: str, title: str) -> Any:
    """One panel per attack, defenses overlaid in the same colour in every panel, shared y axis."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    grouped = _grouped(points)
    defenses = list(dict.fromkeys(p.defense for p in points))
    colours = {d: f"C{i % 10}" for i, d in enumerate(defenses)}
    panels = len(grouped)
    width = min(MAX_WIDTH, COLUMN_WIDTH if panels == 1 else max(COLUMN_WIDTH, 2.3 * panels))
    with _paper_style():
        figure = Figure(figsize=(width, PANEL_HEIGHT + 0.35), layout="constrained")
        axes_list = figure.subplots(1, panels, sharey=True, squeeze=False)[0]
        seeds_of: dict[str, int] = {}  # per defense group: the most seeds behind one of its points
        for (defense, _, _), count in Counter((p.defense, p.attack, p.eps) for p in points).items():
            seeds_of[defense] = max(seeds_of.get(defense, 0), count)
        seeds = max(seeds_of.values(), default=1)
        for axes, (attack, by_defense) in zip(axes_list, grouped.items()):
            eps_values = sorted({e for by_eps in by_defense.values() for e in by_eps})
            if len(eps_values) == 1 or _constant_over_eps(by_defense):
                _points_panel(axes, by_defense, colours)
                axes.set_title(attack if len(eps_values) > 1 else f"{attack}, eps {eps_values[0]:g}")
            else:
                _lines_panel(axes, by_defense, colours)
                axes.set_title(attack)
                axes.set_xlabel("eps")
            axes.grid(alpha=0.3, linewidth=0.5)
        axes_list[0].set_ylabel(metric)
        if metric.startswith("accuracy"):
            axes_list[0].set_ylim(-0.02, 1.02)
        bars = "95 % interval" if seeds == 1 else f"mean +- sd over {seeds} seeds"
        mixed = len(set(seeds_of.values())) > 1  # groups of one run (runs stopped at their own caps) beside others
        if mixed:
            bars = "sd over seeds; 95 % interval for one run"
        heading = f"{title} (bars: {bars})"  # on two lines where one would run past the width (~12 characters/inch)
        figure.suptitle(heading if len(heading) <= 12 * width else f"{title}\n(bars: {bars})")
        labels = {d: f"{d} ({seeds_of[d]} seed{'s' if seeds_of[d] > 1 else ''})" if mixed else d for d in defenses}
        handles = [Line2D([], [], color=colours[d], marker="o", markersize=3, label=labels[d]) for d in defenses]
        # as many legend columns as the width holds (~15 characters per inch at this size), at most 4
        fits = int(width * 15 // (max(map(len, labels.values()), default=1) + 4))
        columns = max(1, min(len(defenses), 4, fits))
        figure.legend(handles=handles, loc="outside lower center", ncols=columns, frameon=False)
    return figure


def _lines_panel(axes: Any, by_defense: Mapping[str, Mapping[float, list[Point]]], colours: Mapping[str, str]) -> None:
    for defense, by_eps in by_defense.items():
        eps = sorted(by_eps)
        stats = [aggregate(by_eps[e]) for e in eps]
        values = [s.value for s in stats]
        errors = [[s.value - s.low for s in stats], [s.high - s.value for s in stats]]
        axes.errorbar(eps, values, yerr=errors, color=colours[defense], marker="o", markersize=3, capsize=2)


def _points_panel(axes: Any, by_defense: Mapping[str, Mapping[float, list[Point]]], colours: Mapping[str, str]) -> None:
    names = list(by_defense)
    for index, defense in enumerate(names):
        stat = aggregate(next(iter(by_defense[defense].values())))
        errors = [[stat.value - stat.low], [stat.high - stat.value]]
        axes.errorbar([index], [stat.value], yerr=errors, color=colours[defense], marker="o", markersize=4, capsize=3)
    axes.set_xticks(range(len(names)), names, rotation=30, ha="right")
    axes.set_xlim(-0.6, len(names) - 0.4)


def _paper_style() -> Any:
    """matplotlib settings for figures that stay readable when printed at column width."""
    import matplotlib

    return matplotlib.rc_context(
        {"font.size": FONT_SIZE, "axes.titlesize": FONT_SIZE, "legend.fontsize": FONT_SIZE - 1, "lines.linewidth": 1}
    )


def save_figure(figure: Any, folder: Path, stem: str) -> list[Path]:
    """Write STEM.png (300 dpi) and STEM.pdf (vector) under `folder`; the paths. Leaves the layout engine off."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{safe_file_name(stem)}.{suffix}" for suffix in ("png", "pdf")]
    png, pdf = paths
    figure.savefig(png, dpi=300)
    # The PNG's draw has laid the figure out; keeping that layout for the PDF skips a second constrained-layout
    # pass (a sixth of a figure's time). No creation date: the same figure gives the same bytes (make findings).
    figure.set_layout_engine("none")
    figure.savefig(pdf, dpi=300, metadata={"CreationDate": None})
    return paths


def points_from_records(records: Iterable[Any], metric: str, defense: str, seed: int | None) -> list[Point]:
    """The Points of one run's evaluation records (EvalRecord) for `metric`."""
    return [
        Point(
            defense,
            seed,
            r.attack_label,
            r.eps,
            r.metrics[metric],
            r.metrics.get(f"{metric}_ci_low"),
            r.metrics.get(f"{metric}_ci_high"),
        )
        for r in records
        if metric in r.metrics
    ]


QUANTILE = re.compile(r"(.+)_q\d\d")


def is_quantile_companion(metric: str, metrics: Iterable[str]) -> bool:
    """NAME_q05 ... NAME_q95 beside NAME_mean (or NAME): a distribution's quantiles, whose figure is NAME's."""
    match = QUANTILE.fullmatch(metric)
    return match is not None and any(m in metrics for m in (match.group(1), f"{match.group(1)}_mean"))


def drawable_metrics(points_by_metric: Mapping[str, Sequence[Point]]) -> list[str]:
    """The metrics worth a figure: not 0/1 flags, not the quantiles of a drawn mean (five more figures per quantity,
    each a line per quantile level; they stay metrics), and measured somewhere (any attack, any eps)."""
    names = [m for m, ps in points_by_metric.items() if ps]
    return [
        m
        for m in names
        if not is_flag(m, (p.value for p in points_by_metric[m])) and not is_quantile_companion(m, names)
    ]


def series_figure(
    series: Mapping[str, Mapping[float, Sequence[float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    log_x: bool = False,
    log_y: bool = False,
) -> Any:
    """One panel, a line per name through the mean of its values at each x, bars mean +- sd (over seeds)."""
    from matplotlib.figure import Figure

    counts = {len(v) for by_x in series.values() for v in by_x.values()}
    seeds = max(counts, default=1)
    if seeds == 1:
        bars = "one seed, no bars"
    elif len(counts) > 1:  # seeds that stopped earlier (until converged) leave the later points fewer
        bars = f"sd over the seeds still running, <= {seeds}"
    else:
        bars = f"sd over {seeds} seeds"
    with _paper_style():
        figure = Figure(figsize=(COLUMN_WIDTH, PANEL_HEIGHT + 0.45), layout="constrained")
        axes = figure.subplots()
        for index, (name, by_x) in enumerate(series.items()):
            xs = sorted(by_x)
            stats = [mean_sd(by_x[x]) for x in xs]
            axes.errorbar(
                xs,
                [m for m, _ in stats],
                yerr=[s for _, s in stats],
                color=f"C{index % 10}",
                marker="o",
                markersize=3,
                capsize=2,
                label=name,
            )
        if log_x:
            axes.set_xscale("log")
        if log_y:
            axes.set_yscale("log")
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3, linewidth=0.5)
        axes.set_title(f"{title}\n(bars: {bars})")
        axes.legend(frameon=False)
    return figure
