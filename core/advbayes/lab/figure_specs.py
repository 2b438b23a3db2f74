"""The `[[figure]]` tables of a claims file: series drawn beside the claims, a value against a number read from an
attack or metric name ({x}), a training metric against the epoch, or a run metric against a param that differs
between experiments (`x_param`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from advbayes.errors import RunError

NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class FigureSpec:
    """A figure of series: `y` against a number parsed from attack or metric names ({x}), or against the epoch."""

    name: str
    experiment: str
    title: str
    metric: str  # may hold {x}: the x value is read from the run metric's name
    attack: str | None = None  # may hold {x}: the x value is read from the attack's name
    eps: float | None = None
    xlabel: str = ""
    ylabel: str = ""
    log_y: bool = False
    defenses: tuple[str, ...] = ()
    history: bool = False  # the metric's per-epoch history (x = epoch)
    # x read from each run's param (e.g. model.widths), y from its metric, over the runs of several experiments:
    # a trend across experiments that differ in one setting (Carbone et al.'s gradient vs width, vs training inputs)
    x_param: str = ""
    experiments: tuple[str, ...] = ()


def require_strings(table: Any, keys: Sequence[str], where: str) -> None:
    """A one-line error unless every key of `table` is a string."""
    if not isinstance(table, dict):
        raise RunError(f"{where}: expected a table, got {table!r}")
    for key in keys:
        if not isinstance(table.get(key), str):
            raise RunError(f"{where}: expected a string {key!r}, got {table.get(key)!r}")


def figure_experiments(table: Any, where: str) -> tuple[str, ...]:
    """A figure's experiments: `experiment`, or with an `x_param` the list `experiments` (two or more)."""
    if not isinstance(table, dict):
        raise RunError(f"{where}: expected a table, got {table!r}")
    if "x_param" not in table:
        require_strings(table, ("experiment",), where)
        if "experiments" in table:
            raise RunError(f"{where}: 'experiments' goes with an x_param; one experiment's figure names 'experiment'")
        return (table["experiment"],)
    require_strings(table, ("x_param",), where)
    names = table.get("experiments")
    if "experiment" in table or not isinstance(names, list) or len(names) < 2:
        raise RunError(f"{where}: an x_param figure names 'experiments', a list of two or more, got {names!r}")
    if not all(isinstance(n, str) and n for n in names) or len(set(names)) < len(names):
        raise RunError(f"{where}.experiments: expected distinct experiment names, got {names!r}")
    return tuple(names)


def figure_spec(table: Any, where: str) -> FigureSpec:
    """One [[figure]] table as a spec; a one-line error naming `where` and the key when malformed."""
    experiments = figure_experiments(table, where)
    require_strings(table, ("name", "title", "metric"), where)
    history = bool(table.get("history", False))
    if "x_param" in table:
        if history or "{x}" in table["metric"] + str(table.get("attack", "")):
            raise RunError(f"{where}: x_param reads x from a param; the metric and attack take no {{x}} then")
        if table.get("attack") is not None and table.get("eps") is None:
            raise RunError(f"{where}: x_param with an attack needs its eps")
    elif not history and "{x}" not in table["metric"] + str(table.get("attack", "")):
        raise RunError(f"{where}: the metric or the attack needs an {{x}} (or history = true, or an x_param)")
    return FigureSpec(
        name=table["name"],
        experiment=experiments[0],
        experiments=experiments if "x_param" in table else (),
        x_param=str(table.get("x_param", "")),
        title=table["title"],
        metric=table["metric"],
        attack=table.get("attack"),
        eps=table.get("eps"),
        xlabel=str(table.get("xlabel", "")),
        ylabel=str(table.get("ylabel", "")),
        log_y=bool(table.get("log_y", False)),
        defenses=tuple(table.get("defenses", ())),
        history=history,
    )


def x_of(template: str, name: str) -> float | None:
    """The number that stands for {x} in `template` when `name` matches it (None otherwise)."""
    pattern = "^" + re.escape(template).replace(re.escape("{x}"), r"([0-9.eE+-]+)") + "$"
    match = re.match(pattern, name)
    return float(match.group(1)) if match else None


def param_number(value: str | None) -> float | None:
    """The one number in a run's param value ("[32]", "5000"), the x of an x_param figure; None unless exactly one."""
    numbers = NUMBER.findall(value or "")
    return float(numbers[0]) if len(numbers) == 1 else None
