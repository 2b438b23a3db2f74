"""A sweep: an experiment entry x a grid of overrides (seeds, defenses, any dotted key), planned and checked before
anything runs. Each combination is one seed of the experiment; runner.py runs them as Ray tasks."""

from __future__ import annotations

import copy
import itertools
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from advbayes.errors import AdvbayesError, RegistryError
from advbayes.registry import Registry, parse_override

SWEEP_ID_TAG = "advbayes.sweep_id"
COMBINATION_TAG = "advbayes.sweep_combination"
SWEEP_KEYS = ("experiment", "grid", "set", "description")


class SweepError(AdvbayesError):
    """A sweep cannot start as asked; `lines` holds one line per bad combination when there are several."""

    def __init__(self, message: str, lines: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.lines = list(lines) or [message]


@attrs.frozen
class Combination:
    """One cell of the grid: its overrides, the resolved experiment they give and how many runs (defenses) it has."""

    label: str  # "defense=bnn seed=0": the run tag that --resume matches
    overrides: tuple[tuple[str, Any], ...]
    spec: dict[str, Any]
    runs: int


@attrs.frozen
class SweepPlan:
    """Every combination of a sweep, each resolved and checked."""

    sweep_id: str
    experiment: str
    grid: dict[str, list[Any]]
    fixed: tuple[tuple[str, Any], ...]
    combinations: list[Combination]

    def manifest(self) -> dict[str, Any]:
        """What the sweep record run stores (sweep.json): enough to rerun any combination without the registry."""
        return {
            "sweep_id": self.sweep_id,
            "experiment": self.experiment,
            "grid": self.grid,
            "set": [list(pair) for pair in self.fixed],
            "combinations": [
                {"label": c.label, "overrides": [list(p) for p in c.overrides], "spec": c.spec, "runs": c.runs}
                for c in self.combinations
            ],
        }

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> SweepPlan:
        """The plan a sweep record stored (for --resume)."""
        return cls(
            sweep_id=str(manifest["sweep_id"]),
            experiment=str(manifest["experiment"]),
            grid={k: list(v) for k, v in manifest["grid"].items()},
            fixed=tuple((str(k), v) for k, v in manifest["set"]),
            combinations=[
                Combination(
                    label=str(c["label"]),
                    overrides=tuple((str(k), v) for k, v in c["overrides"]),
                    spec=dict(c["spec"]),
                    runs=int(c["runs"]),
                )
                for c in manifest["combinations"]
            ],
        )


def split_values(text: str) -> list[str]:
    """Comma-separated values; a comma inside brackets, braces or quotes belongs to its value (`[0.1,0.2],[0.3]`)."""
    values, depth, quote, current = [], 0, "", ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append(current)
            current = ""
            continue
        current += char
    values.append(current)
    return [value.strip() for value in values]


def parse_grid_option(text: str) -> tuple[str, list[Any]]:
    """`KEY=V1,V2,...` (each value read as TOML, a bare word as a string) -> (KEY, [values])."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or not raw.strip():
        raise SweepError(f"--grid: expected KEY=VALUE[,VALUE...], got {text!r}")
    values = [parse_override(f"{key}={value}")[1] for value in split_values(raw)]
    if any(value == "" for value in values):
        raise SweepError(f"--grid {key}: an empty value in {raw!r}")
    return key, values


def sweep_definition(
    registry: Registry, name: str, grid: Sequence[tuple[str, list[Any]]], fixed: Sequence[tuple[str, Any]]
) -> tuple[str, dict[str, list[Any]], list[tuple[str, Any]]]:
    """(experiment, grid, fixed overrides) of `name`: a [sweeps.NAME] table with the command line's --grid keys
    replacing its own and --set after its `set`, or an experiment entry with the command line's grid."""
    table_grid: dict[str, list[Any]] = {}
    table_fixed: list[tuple[str, Any]] = []
    experiment = name
    raw = registry.sweeps.get(name)
    if raw is not None:
        entry = f"sweeps.{name}"
        unknown = [k for k in raw.body if k not in SWEEP_KEYS]
        if unknown:
            raise RegistryError(
                f"unknown key (a sweep has {', '.join(SWEEP_KEYS)})", file=raw.file, entry=entry, key=unknown[0]
            )
        experiment = raw.body.get("experiment")  # type: ignore[assignment]
        if not isinstance(experiment, str):
            raise RegistryError(
                f"expected an experiment name, got {experiment!r}", file=raw.file, entry=entry, key="experiment"
            )
        given_grid = raw.body.get("grid", {})
        if not isinstance(given_grid, dict):
            raise RegistryError(
                f"expected a table KEY = [values], got {given_grid!r}", file=raw.file, entry=entry, key="grid"
            )
        for key, values in given_grid.items():
            if not isinstance(values, list) or not values:
                raise RegistryError(
                    f"expected a non-empty list of values, got {values!r}",
                    file=raw.file,
                    entry=entry,
                    key=f"grid.{key}",
                )
            table_grid[key] = values
        given_set = raw.body.get("set", {})
        if not isinstance(given_set, dict):
            raise RegistryError(
                f"expected a table of overrides, got {given_set!r}", file=raw.file, entry=entry, key="set"
            )
        table_fixed = list(given_set.items())
    elif name not in registry.entries["experiments"]:
        registry.resolve_experiment(name)  # raises the unknown-experiment error with its suggestions
    table_grid.update(dict(grid))
    return experiment, table_grid, [*table_fixed, *fixed]


def plan_sweep(
    registry: Registry,
    name: str,
    grid: Sequence[tuple[str, list[Any]]] = (),
    fixed: Sequence[tuple[str, Any]] = (),
    *,
    sweep_id: str | None = None,
) -> SweepPlan:
    """Every combination of the sweep resolved; a bad combination is a SweepError with one line per bad one.

    Seeds are always split: without `seed` in the grid the experiment's `seeds` become the grid's, so every
    combination is one seed, and one run when the grid also splits `defense`.
    """
    experiment, full_grid, fixed_list = sweep_definition(registry, name, grid, fixed)
    base = registry.resolve_experiment(experiment, fixed_list)
    if "seeds" in full_grid:
        raise SweepError("--grid seeds: give the seeds one by one as --grid seed=0,1,2 (each seed is its own task)")
    if "seed" not in full_grid:
        full_grid["seed"] = list(base.get("seeds") or [base["seed"]])
    keys = sorted(full_grid)
    combinations, bad = [], []
    for values in itertools.product(*(full_grid[k] for k in keys)):
        overrides = tuple(zip(keys, values))
        label = " ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in overrides)
        try:
            # with_overrides edits the table it is given: each combination starts from its own copy of the base
            spec = registry.with_overrides(copy.deepcopy(base), [("seeds", []), *overrides], source="--grid")
        except AdvbayesError as exc:
            bad.append(f"{label}: {exc}")
            continue
        runs = max(1, len(spec.get("defenses") or []))
        combinations.append(Combination(label=label, overrides=overrides, spec=spec, runs=runs))
    if bad:
        raise SweepError(f"{len(bad)} of {len(bad) + len(combinations)} grid combinations are invalid", bad)
    return SweepPlan(
        sweep_id=sweep_id or uuid.uuid4().hex[:12],
        experiment=experiment,
        grid=full_grid,
        fixed=tuple(fixed_list),
        combinations=combinations,
    )
