"""Paper figures: what each marker and error bar shows is read back from the matplotlib objects and compared
with the values and intervals it was given (or mean +- sd computed independently)."""

from __future__ import annotations

from pathlib import Path

import pytest

from advbayes.intervals import mean_sd
from advbayes.lab.figures import (
    COLUMN_WIDTH,
    Point,
    drawable_metrics,
    experiment_figure,
    safe_file_name,
    save_figure,
    series_figure,
)


def drawn(axes) -> list[tuple[list[tuple[float, float]], list[tuple[float, float, float]]]]:
    """Per error-bar series of a panel: its (x, y) points and its bars as (x, low, high)."""
    series = []
    for container in axes.containers:
        line, _caps, (bars, *_) = container.lines
        points = [tuple(map(float, xy)) for xy in line.get_xydata()]
        segments = [
            (float(s[0][0]), float(min(s[0][1], s[1][1])), float(max(s[0][1], s[1][1]))) for s in bars.get_segments()
        ]
        series.append((points, segments))
    return series


POINTS = [
    Point("standard", 0, "none", 0.0, 0.95, 0.93, 0.97),
    Point("standard", 0, "none", 0.1, 0.95, 0.93, 0.97),
    Point("bnn", 0, "none", 0.0, 0.90, 0.87, 0.92),
    Point("bnn", 0, "none", 0.1, 0.90, 0.87, 0.92),
    Point("standard", 0, "pgd-20", 0.0, 0.95, 0.93, 0.97),
    Point("standard", 0, "pgd-20", 0.1, 0.40, 0.35, 0.45),
    Point("bnn", 0, "pgd-20", 0.0, 0.90, 0.87, 0.92),
    Point("bnn", 0, "pgd-20", 0.1, 0.55, 0.50, 0.60),
]


def test_one_panel_per_attack_lines_with_the_intervals_and_points_where_eps_does_not_vary() -> None:
    figure = experiment_figure(POINTS, "accuracy", title="moons")
    clean, pgd = figure.axes[:2]
    assert clean.get_title() == "none" and pgd.get_title() == "pgd-20"
    assert [t.get_text() for t in clean.get_xticklabels()] == ["standard", "bnn"]  # points, not a flat line
    assert drawn(clean) == [([(0.0, 0.95)], [(0.0, 0.93, 0.97)]), ([(1.0, 0.90)], [(1.0, 0.87, 0.92)])]
    standard, bnn = drawn(pgd)
    assert standard == ([(0.0, 0.95), (0.1, 0.40)], [(0.0, 0.93, 0.97), (0.1, 0.35, 0.45)])
    assert bnn == ([(0.0, 0.90), (0.1, 0.55)], [(0.0, 0.87, 0.92), (0.1, 0.50, 0.60)])
    assert "95 % interval" in figure._suptitle.get_text()
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["standard", "bnn"]


def test_several_seeds_are_drawn_as_mean_and_standard_deviation() -> None:
    values = [0.40, 0.46, 0.43]
    points = [Point("bnn", s, "fgsm", e, v if e else 0.9) for s, v in enumerate(values) for e in (0.0, 0.1)]
    figure = experiment_figure(points, "accuracy", title="x")
    ((xy, bars),) = drawn(figure.axes[0])
    mean, sd = mean_sd(values)
    assert xy[1] == pytest.approx((0.1, mean)) and bars[1] == pytest.approx((0.1, mean - sd, mean + sd))
    assert "mean +- sd over 3 seeds" in figure._suptitle.get_text()


def test_a_group_of_one_run_beside_groups_of_several_seeds_is_named_so_in_the_title_and_legend() -> None:
    """Runs stopped at caps of their own are groups of one: their bar is an interval, not an sd over seeds."""
    values = [0.40, 0.46, 0.43]
    points = [Point("bnn", s, "fgsm", 0.1, v) for s, v in enumerate(values)]
    points.append(Point("bnn epochs=311", 1, "fgsm", 0.1, 0.5, 0.45, 0.55))
    figure = experiment_figure(points, "accuracy", title="x")
    several, single = drawn(figure.axes[0])
    mean, sd = mean_sd(values)
    assert several == ([(0.0, pytest.approx(mean))], [(0.0, pytest.approx(mean - sd), pytest.approx(mean + sd))])
    assert single == ([(1.0, 0.5)], [(1.0, 0.45, 0.55)])
    assert "sd over seeds; 95 % interval for one run" in figure._suptitle.get_text()
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["bnn (3 seeds)", "bnn epochs=311 (1 seed)"]


def test_a_history_whose_seeds_stopped_at_different_epochs_says_its_bars_cover_the_seeds_still_running() -> None:
    """Seeds trained until converged stop at different epochs: the later means are over fewer seeds."""
    stopped = {1.0: [1.0, 2.0, 3.0], 2.0: [2.0, 4.0], 3.0: [5.0]}
    figure = series_figure({"adv-hvi": stopped}, title="width", xlabel="epoch", ylabel="s2")
    ((xy, bars),) = drawn(figure.axes[0])
    assert xy == [(1.0, 2.0), (2.0, 3.0), (3.0, 5.0)]
    assert bars[1] == pytest.approx((2.0, 3.0 - mean_sd([2.0, 4.0])[1], 3.0 + mean_sd([2.0, 4.0])[1]))
    assert "sd over the seeds still running, <= 3" in figure.axes[0].get_title()
    same = series_figure({"b": {1.0: [1.0, 2.0], 2.0: [2.0, 3.0]}}, title="w", xlabel="epoch", ylabel="s2")
    assert "(bars: sd over 2 seeds)" in same.axes[0].get_title()


def test_a_single_eps_is_a_point_per_defense_sized_for_a_column_and_saved_as_png_and_pdf(tmp_path: Path) -> None:
    points = [Point("standard", 0, "fgsm", 0.3, 0.2, 0.1, 0.3), Point("bnn", 0, "fgsm", 0.3, 0.3, 0.2, 0.4)]
    figure = experiment_figure(points, "accuracy", title="x")
    assert figure.axes[0].get_title() == "fgsm, eps 0.3"
    assert figure.get_size_inches()[0] == pytest.approx(COLUMN_WIDTH)
    png, pdf = save_figure(figure, tmp_path, "accuracy:vs eps")
    assert (png.name, pdf.name) == ("accuracy_vs_eps.png", "accuracy_vs_eps.pdf")
    assert png.read_bytes()[:4] == b"\x89PNG" and pdf.read_bytes()[:4] == b"%PDF"


def test_flags_are_not_drawn_and_file_names_hold_no_colon_slash_or_space() -> None:
    flags = {"obfuscation_flag": [Point("d3", 0, "pgd", 0.1, 1.0)], "accuracy": [Point("d3", 0, "pgd", 0.1, 0.5)]}
    assert drawable_metrics(flags) == ["accuracy"]
    point = [Point("bnn", 0, "fgm", 0.5, 0.1)]
    spread = {"cos_alpha_mean": point, "cos_alpha_q05": point, "cos_alpha_q95": point, "margin_q50": point}
    assert drawable_metrics(spread) == ["cos_alpha_mean", "margin_q50"]  # quantiles of a drawn mean are its figure's
    assert safe_file_name("pgd:S_A=10 / x") == "pgd_S_A_10_x"
    assert safe_file_name("../..") == "figure"


def test_a_heading_longer_than_the_figure_is_wide_goes_on_two_lines() -> None:
    points = [Point("bnn", s, "none", 0.0, v) for s, v in enumerate([0.91, 0.92, 0.90])]
    narrow = experiment_figure(points, "accuracy", title="d3-collapse-mnist-5k")  # one panel: a column wide
    assert narrow._suptitle.get_text() == "d3-collapse-mnist-5k\n(bars: mean +- sd over 3 seeds)"
    assert experiment_figure(points, "accuracy", title="x")._suptitle.get_text() == "x (bars: mean +- sd over 3 seeds)"
