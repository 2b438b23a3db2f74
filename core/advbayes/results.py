"""Evaluation records, the results table (attack rows, eps columns), CSV and the accuracy-vs-eps plot."""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from torch import nn

from advbayes.intervals import format_interval, is_companion, mean_sd


@attrs.frozen(kw_only=True)
class EvalRecord:
    """The metrics of one attack at one eps, with the sample counts and the perturbation actually applied."""

    attack_label: str  # the attack's entry name, with :saN:siM when an experiment sweeps the sample counts
    eps: float
    metrics: dict[str, float]
    attack_samples: int
    inference_samples: int
    mean_l2: float
    max_linf: float
    examples: int
    entry: str = ""  # the attack's registry entry
    diagnostics: dict[str, float] = attrs.field(factory=dict)  # e.g. zero_grad_share, averaged over examples
    per_example: dict[str, str] = attrs.field(factory=dict)  # metric -> 0/1 outcome per test example, pack_outcomes

    @property
    def attack(self) -> str:
        """Deprecated name of `attack_label` (CHANGELOG.md): `attack` is an Attack object elsewhere."""
        warnings.warn("EvalRecord.attack is now EvalRecord.attack_label", DeprecationWarning, stacklevel=2)
        return self.attack_label

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> EvalRecord:
        """A record from attrs.asdict (a checkpoint), including those written before `attack` was renamed."""
        values = dict(fields)
        if "attack" in values:
            values["attack_label"] = values.pop("attack")
        return cls(**values)


def pack_outcomes(outcomes: Any) -> str:
    """0/1 outcomes per example (a tensor or sequence) as hex, 4 examples per digit, the first in the top bit."""
    values = outcomes.tolist() if hasattr(outcomes, "tolist") else list(outcomes)
    bits = "".join("1" if int(v) else "0" for v in values)
    bits += "0" * (-len(bits) % 4)
    return "".join(f"{int(bits[i : i + 4], 2):x}" for i in range(0, len(bits), 4))


def unpack_outcomes(packed: str, n: int) -> list[int]:
    """The n 0/1 outcomes of pack_outcomes' hex."""
    if len(packed) != -(-n // 4):
        raise ValueError(f"{n} outcomes need {-(-n // 4)} hex digits, got {len(packed)}")
    bits = "".join(f"{int(digit, 16):04b}" for digit in packed)
    return [int(b) for b in bits[:n]]


def outcomes_csv(records: Sequence[EvalRecord]) -> str:
    """One row per attack, eps and metric with per-example outcomes: n and the packed outcomes (examples.csv)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["attack", "eps", "metric", "n", "outcomes"])
    for r in records:
        for name, packed in r.per_example.items():
            writer.writerow([r.attack_label, r.eps, name, r.examples, packed])
    return out.getvalue()


def eps_label(eps: float) -> str:
    """A fixed-width eps label that sorts and compares well (eps_0.0314)."""
    return f"eps_{eps:.4f}"


EPS_STEPS = 1000  # a metric's series over eps is logged at step = eps x 1000 (MLflow's steps are integers)


def eps_step(eps: float) -> int:
    """The MLflow step of `eps` in a metric's series over eps: eps in thousandths (0.1 -> 100, 8/255 -> 31)."""
    return round(eps * EPS_STEPS)


def metric_names(records: Iterable[EvalRecord]) -> list[str]:
    """Metric names in first-seen order, without the interval companions (<name>_ci_low, _ci_high, _n)."""
    names: dict[str, None] = {}
    for record in records:
        names.update(dict.fromkeys(record.metrics))
    return [name for name in names if not is_companion(name, names.keys())]


def cell(metrics: Mapping[str, float], metric: str) -> str:
    """A value as the tables show it: with its 95 % interval when the metric carries one."""
    value = metrics[metric]
    low, high = metrics.get(f"{metric}_ci_low"), metrics.get(f"{metric}_ci_high")
    if low is None or high is None:
        return format_value(value)
    return format_interval(value, low, high)


def pivot(records: Sequence[EvalRecord], metric: str) -> tuple[list[str], list[float], dict[str, dict[float, float]]]:
    """Attack names, eps values and table[attack][eps] of one metric."""
    attacks = list(dict.fromkeys(r.attack_label for r in records))
    eps_values = sorted({r.eps for r in records})
    table: dict[str, dict[float, float]] = {a: {} for a in attacks}
    for record in records:
        if metric in record.metrics:
            table[record.attack_label][record.eps] = record.metrics[metric]
    return attacks, eps_values, table


def format_grid(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain aligned text table (first column left-aligned, others right-aligned)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def format_value(value: float) -> str:
    """Four decimals in the usual range, scientific notation for very small or large values."""
    return f"{value:.4f}" if value == 0 or 0.01 <= abs(value) < 1e5 else f"{value:.3e}"


def format_table(records: Sequence[EvalRecord], metric: str) -> str:
    """One metric as a text table: attack rows, eps columns; accuracies with their 95 % Wilson interval and n."""
    attacks, eps_values, _ = pivot(records, metric)
    found = {(r.attack_label, r.eps): r.metrics for r in records if metric in r.metrics}
    sizes = {int(m[f"{metric}_n"]) for m in found.values() if f"{metric}_n" in m}
    title = metric if not sizes else f"{metric} [95% CI], n={'/'.join(str(n) for n in sorted(sizes))}"
    header = [title, *(f"eps={e:g}" for e in eps_values)]
    rows = [
        [attack, *(cell(found[(attack, e)], metric) if (attack, e) in found else "-" for e in eps_values)]
        for attack in attacks
    ]
    return format_grid(header, rows)


def to_csv(records: Sequence[EvalRecord]) -> str:
    """Long-format CSV: one row per attack, eps and metric."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["attack", "eps", "metric", "value", "attack_samples", "inference_samples", "mean_l2", "max_linf"])
    for r in records:
        for name, value in r.metrics.items():
            writer.writerow(
                [r.attack_label, r.eps, name, value, r.attack_samples, r.inference_samples, r.mean_l2, r.max_linf]
            )
    return out.getvalue()


@attrs.define(kw_only=True)
class RunInfo:
    """A run as the lifecycle hooks see it; the tracking plugin sets `run_id` and `store`, plugins keep their own
    state in `tracking`."""

    experiment: str
    spec: dict[str, Any]
    seed: int
    device: str
    plugins: dict[str, str]
    track: bool = True
    tracking_uri: str | None = None
    resume_run_id: str | None = None
    resumed_from: str | None = None  # a resumed run whose settings were changed (--set) is tracked as a new run
    run_id: str | None = None  # set by the tracking plugin when it opens the tracked run
    store: str | None = None  # where the tracking plugin records the run (shown to the user)
    tags: dict[str, str] = attrs.field(factory=dict)  # extra tags of the tracked run (a sweep's id and combination)
    tracking: dict[str, Any] = attrs.field(factory=dict)


@attrs.define(kw_only=True)
class RunResult:
    """What a run returns: the resolved experiment, per-epoch history, evaluation records, model, tracked run id."""

    experiment: str
    spec: dict[str, Any]
    records: list[EvalRecord]
    history: list[dict[str, float]]
    model: nn.Module
    run_id: str | None
    seed: int
    device: str
    store: str | None = None  # where the tracking plugin recorded the run
    model_metrics: dict[str, float] = attrs.field(factory=dict)
    figures: dict[str, Any] = attrs.field(factory=dict)
    findings: list[Any] = attrs.field(factory=list)  # checks.Finding: randomness and masking checks that fired

    def table(self, metric: str = "accuracy") -> dict[str, dict[float, float]]:
        """table[attack][eps] of one metric."""
        return pivot(self.records, metric)[2]

    def format(self) -> str:
        """Every per-attack metric as a table, then the model's own metrics."""
        parts = [format_table(self.records, m) for m in metric_names(self.records)]
        if self.model_metrics:
            rows = [[name, format_value(value)] for name, value in self.model_metrics.items()]
            parts.append(format_grid(["model metric", "value"], rows))
        return "\n\n".join(parts)

    @property
    def run_ids(self) -> list[str | None]:
        """The tracked run, as a list (like RunGroup's)."""
        return [self.run_id]


@attrs.define(kw_only=True)
class RunGroup:
    """The runs of an experiment with several defenses or seeds: one RunResult (and one tracked run) each."""

    experiment: str
    results: list[RunResult]

    def by_defense(self) -> dict[str, list[RunResult]]:
        """The results of each defense (one per seed), in run order."""
        grouped: dict[str, list[RunResult]] = {}
        for result in self.results:
            grouped.setdefault(result.spec["defense"]["name"], []).append(result)
        return grouped

    def seed_table(self, metric: str = "accuracy") -> dict[str, dict[str, dict[float, tuple[float, float, int]]]]:
        """table[defense][attack][eps] = (mean, sd, number of seeds) of one metric across the seeds."""
        table: dict[str, dict[str, dict[float, tuple[float, float, int]]]] = {}
        for defense, results in self.by_defense().items():
            values: dict[str, dict[float, list[float]]] = {}
            for result in results:
                for attack, row in result.table(metric).items():
                    for eps, value in row.items():
                        values.setdefault(attack, {}).setdefault(eps, []).append(value)
            table[defense] = {
                attack: {eps: (*mean_sd(v), len(v)) for eps, v in row.items()} for attack, row in values.items()
            }
        return table

    def table(self, metric: str = "accuracy") -> dict[str, dict[str, dict[float, float]]]:
        """table[defense][attack][eps] of one metric (the mean across seeds when there are several)."""
        return {
            defense: {attack: {eps: cell[0] for eps, cell in row.items()} for attack, row in rows.items()}
            for defense, rows in self.seed_table(metric).items()
        }

    def format(self) -> str:
        """Each defense's tables under its name; with several seeds, each seed's and then mean +- sd across seeds."""
        parts = []
        for defense, results in self.by_defense().items():
            if len(results) == 1:
                parts.append(f"== {defense} ==\n{results[0].format()}")
                continue
            for result in results:
                parts.append(f"== {defense}, seed {result.seed} ==\n{result.format()}")
            seeds = ", ".join(str(r.seed) for r in results)
            for metric in metric_names(r for result in results for r in result.records):
                rows_by_attack = self.seed_table(metric)[defense]
                eps_values = sorted({e for row in rows_by_attack.values() for e in row})
                header = [f"{metric}: mean +- sd over seeds {seeds}", *(f"eps={e:g}" for e in eps_values)]
                rows = [
                    [attack, *(f"{row[e][0]:.4f} +- {row[e][1]:.4f}" if e in row else "-" for e in eps_values)]
                    for attack, row in rows_by_attack.items()
                ]
                parts.append(f"== {defense}, {len(results)} seeds ==\n{format_grid(header, rows)}")
        return "\n\n".join(parts)

    @property
    def run_ids(self) -> list[str | None]:
        """The tracked run of each defense and seed."""
        return [r.run_id for r in self.results]
