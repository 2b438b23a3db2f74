"""Papers' claims checked against tracked runs: one verdict rule, applied the same way to every claim.

A claims file (TOML) lists `[[claim]]` tables. Each compares two quantities A and B read from the newest finished
runs of an experiment, paired by seed: d = A - B. The claim says what d should be (`kind`):

- "greater": d > 0 (A is higher), e.g. accuracy at S_A = 1 above accuracy at S_A = 100;
- "similar": |d| < delta, e.g. accuracy at S_I = 5 and at S_I = 100;
- "not-greater": d < delta, e.g. random noise no stronger than PGD by more than delta.

A quantity is {defense, metric, attack?, eps?, experiment?} (a per-attack metric from results.csv when `attack` is
given, else a run metric such as "model/weight_mean_sigma2" or "train/kl_per_param") or {constant = x}.
`[[figure]]` tables name series drawn beside the claims (a value against a number read from the attack or metric
name, or a training metric against the epoch).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advbayes.errors import RunError
from advbayes.intervals import Z95, mean_sd
from advbayes.lab.figure_specs import FigureSpec, figure_spec, require_strings
from advbayes.lab.figure_specs import x_of as x_of  # still importable here (advbayes.claims forwards to this module)
from advbayes.tracking.settings import CONVERGED_METRIC

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KINDS = ("greater", "similar", "not-greater")
PROPORTIONS = ("accuracy", "linear_fraction", "smooth_fraction")  # metrics that are counts / n: a binomial term
# two-sided 95 % quantiles of Student's t with 1..30 degrees of freedom
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
       2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045,
       2.042)  # fmt: skip

VERDICT_RULE = """\
**Verdict rule** (applied by `advbayes report --claims` to every row, never by eye). Each row compares two
quantities A and B of the same experiment, paired by seed: d_s = A_s - B_s for each of the k seeds, d = mean(d_s).
The 95 % interval of d is d +- h with h = sqrt((t_{k-1} sd(d_s) / sqrt(k))^2 + (1.96 se)^2). The first term is
the spread over seeds (training and attack randomness; Student's t). The second is the error from the choice of
test images, and how it is computed depends on what the runs recorded:
- **paired by image** (accuracies whose runs logged which test images each verdict got right): A and B are judged
  on the same images, so se^2 = var_i(D_i) / n, where D_i is image i's difference (0, 1 or -1) averaged over
  seeds. Most images are right (or wrong) under both, so this is far smaller than treating A and B as
  independent; adding it to the seed term counts the image-by-seed interaction twice, so h is slightly
  conservative. tests/test_claims_verdicts.py checks h against a bootstrap over seeds and images.
- **unpaired** (other proportions, or runs without per-image records): the binomial error of independent
  accuracies, se^2 = mean over seeds of p_A (1 - p_A) / n + p_B (1 - p_B) / n, which overstates the error of a
  paired difference; 0 for other metrics and constants. A non-accuracy row with one seed is inconclusive; an
  accuracy row with one seed has no seed term, so its interval covers the test images but not the training
  randomness, and the row says so.
Each row also gives its **minimal detectable effect** (MDE = h (1.96 + 0.84) / 1.96: the difference it would
detect with 80 % power at its n and seeds) and, when inconclusive, the factor by which the seeds and test images
would have to grow for an effect of the measured size to decide it (the interval shrinks as 1 / sqrt(factor)).
- claim "A > B": **held** if the interval lies above 0; **did not hold** if it lies below delta (the smallest
  effect the claim needs; 0 unless the row names one), i.e. the data rule out an effect of that size;
  **inconclusive** otherwise.
- claim "A ~ B" (|d| < delta): **held** if the interval lies inside (-delta, delta); **did not hold** if it lies
  wholly outside; **inconclusive** otherwise.
- claim "A - B < delta": **held** if the interval lies below delta; **did not hold** if it lies above; else
  **inconclusive**.
- a row whose experiment has no finished run in the store or records read says **not run**.
- a claim this setup cannot test (another model class, data set or posterior) says **not testable here** with the
  reason, and is not run; a row whose outcome is fixed by the setup rather than measured is an **artifact**: its
  verdict is shown with the reason, and it is not counted as a finding.
- a row computed from a Bayesian run whose posterior did not converge (its `posterior/converged` model metric is
  0: the width or loss still moving when training stopped, or HMC chains with R-hat > 1.1) says **posterior not
  converged** with the verdict its numbers would give and the runs concerned; it is not counted as a finding."""


@dataclass(frozen=True)
class Quantity:
    """One side of a claim: a metric of one defense's runs (per seed), or a constant."""

    experiment: str = ""
    defense: str = ""
    metric: str = ""
    attack: str | None = None
    eps: float | None = None
    constant: float | None = None

    def describe(self) -> str:
        """`defense metric (attack, eps)` or the constant."""
        if self.constant is not None:
            return f"{self.constant:g}"
        where = ", ".join(p for p in (self.attack or "", "" if self.eps is None else f"eps {self.eps:g}") if p)
        return f"{self.defense} {self.metric}" + (f" ({where})" if where else "")


@dataclass(frozen=True)
class Claim:
    """A paper's claim as a comparison of two quantities."""

    paper: str
    text: str
    paper_number: str
    kind: str
    a: Quantity
    b: Quantity
    delta: float = 0.0
    note: str = ""
    cite: str = ""  # where the paper says it: figure or table, section
    not_testable: str = ""  # why this setup cannot test the claim: the row says so instead of a verdict
    artifact: str = ""  # why the outcome is fixed by the setup: the verdict is shown, labelled an artifact


@dataclass
class Evaluated:
    """A claim's values per seed, the difference's interval, how it was paired, and the verdict."""

    claim: Claim
    seeds: list[int]
    a: list[float]
    b: list[float]
    n: int | None
    mean: float
    low: float
    high: float
    verdict: str
    run_ids: list[str] = field(default_factory=list)
    paired_by_image: bool = False
    unconverged: list[str] = field(default_factory=list)  # run ids whose posterior did not converge

    @property
    def half_width(self) -> float:
        """h: half the interval's width."""
        return (self.high - self.low) / 2

    @property
    def detectable(self) -> float:
        """The minimal detectable effect: h (z_0.975 + z_0.80) / z_0.975."""
        return self.half_width * (Z95 + Z80) / Z95

    @property
    def outcome(self) -> str:
        """What the summary counts: the verdict, "artifact" for a row whose outcome the setup fixes, or "not
        converged" for a row computed from a posterior that did not converge."""
        return "artifact" if self.claim.artifact else "not converged" if self.unconverged else self.verdict

    def growth_to_decide(self) -> float | None:
        """How many times the seeds and images would have to grow (h ~ 1 / sqrt) for the measured effect to decide
        the row (None: decided, no interval, or at a boundary no sample size decides)."""
        if self.verdict != "inconclusive" or math.isinf(self.half_width):
            return None
        gap = decision_gap(self.claim.kind, self.mean, self.claim.delta)
        return (self.half_width / gap) ** 2 if gap > 0 else None


Z80 = 0.8416  # the standard normal's 80 % quantile: power 80 %


def decision_gap(kind: str, mean: float, delta: float) -> float:
    """How far the measured difference lies from the boundary it must clear to decide the row either way."""
    if kind == "greater":
        return max(mean, delta - mean)
    if kind == "similar":
        return max(delta - abs(mean), abs(mean) - delta)
    return abs(delta - mean)  # not-greater


def paired_interval(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> tuple[float, float, float]:
    """mean(d) and its interval for 0/1 outcomes a[s][i], b[s][i] of k seeds on the same n images (VERDICT_RULE)."""
    k, n = len(a), len(a[0])
    if len(b) != k or any(len(row) != n for row in (*a, *b)):
        raise ValueError("paired outcomes need the same seeds and the same images on both sides")
    per_seed = [(sum(ra) - sum(rb)) / n for ra, rb in zip(a, b, strict=True)]
    mean, sd = mean_sd(per_seed)
    seed_term = t95(k - 1) * sd / math.sqrt(k) if k > 1 else 0.0
    per_image = [sum(a[s][i] - b[s][i] for s in range(k)) / k for i in range(n)]
    _, image_sd = mean_sd(per_image)
    half = math.hypot(seed_term, Z95 * image_sd / math.sqrt(n))
    return mean, mean - half, mean + half


def t95(df: int) -> float:
    """The two-sided 95 % quantile of Student's t with df degrees of freedom."""
    if df < 1:
        raise ValueError(f"t95 needs df >= 1, got {df}")
    if df <= len(T95):
        return T95[df - 1]
    z = Z95  # beyond the table: the Cornish-Fisher expansion of t's quantile in 1/df, two terms
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def interval(a: Sequence[float], b: Sequence[float], n: int | None, proportion: bool) -> tuple[float, float, float]:
    """mean(d), and the interval mean(d) -+ h of the paired differences d = a - b (see VERDICT_RULE)."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    k = len(d)
    mean, sd = mean_sd(d)
    seed_term = t95(k - 1) * sd / math.sqrt(k) if k > 1 else 0.0
    sample_term = 0.0
    if proportion and n:
        se2 = sum(p * (1 - p) / n + q * (1 - q) / n for p, q in zip(a, b, strict=True)) / k
        sample_term = Z95 * math.sqrt(se2)
    if k == 1 and not (proportion and n):
        return mean, -math.inf, math.inf
    half = math.hypot(seed_term, sample_term)
    return mean, mean - half, mean + half


def verdict(kind: str, low: float, high: float, delta: float) -> str:
    """held / did not hold / inconclusive for the interval [low, high] of d (see VERDICT_RULE)."""
    if kind == "greater":
        return "held" if low > 0 else "did not hold" if high < delta else "inconclusive"
    if kind == "similar":
        if -delta < low and high < delta:
            return "held"
        return "did not hold" if low >= delta or high <= -delta else "inconclusive"
    if kind == "not-greater":
        return "held" if high < delta else "did not hold" if low > delta else "inconclusive"
    raise ValueError(f"unknown claim kind {kind!r}")


def _quantity(table: Any, where: str, experiment: str) -> Quantity:
    """A claim side from its TOML table."""
    if not isinstance(table, dict):
        raise RunError(f"{where}: expected a table {{defense, metric, attack?, eps?}} or {{constant}}, got {table!r}")
    allowed = {"experiment", "defense", "metric", "attack", "eps", "constant"}
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise RunError(f"{where}: unknown key {unknown[0]!r}; expected one of {', '.join(sorted(allowed))}")
    if "constant" in table:
        if not isinstance(table["constant"], (int, float)) or len(table) > 1:
            raise RunError(f"{where}: expected {{constant = NUMBER}} alone, got {table!r}")
        return Quantity(constant=float(table["constant"]))
    for key in ("defense", "metric"):
        if not isinstance(table.get(key), str) or not table[key]:
            raise RunError(f"{where}.{key}: expected a non-empty string, got {table.get(key)!r}")
    eps = table.get("eps")
    if eps is not None and not isinstance(eps, (int, float)):
        raise RunError(f"{where}.eps: expected a number, got {eps!r}")
    if "attack" in table and eps is None:
        raise RunError(f"{where}: a per-attack metric needs its eps (attack {table['attack']!r} has no eps)")
    return Quantity(
        experiment=str(table.get("experiment", experiment)),
        defense=table["defense"],
        metric=table["metric"],
        attack=table.get("attack"),
        eps=None if eps is None else float(eps),
    )


def load_claims(path: Path) -> tuple[list[Claim], list[FigureSpec]]:
    """The claims and figures of a claims file; a one-line error naming the file, entry and key when malformed."""
    if not path.is_file():
        raise RunError(f"--claims {path}: no such file")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise RunError(f"{path}: not valid TOML ({exc})") from None
    unknown = sorted(set(data) - {"claim", "figure"})
    if unknown:
        raise RunError(f"{path}: unknown table {unknown[0]!r}; expected [[claim]] and [[figure]]")
    claims = []
    for i, table in enumerate(data.get("claim", [])):
        where = f"{path} claim {i + 1}"
        require_strings(table, ("paper", "claim", "paper_number", "experiment"), where)
        kind = table.get("kind", "greater")
        if kind not in KINDS:
            raise RunError(f"{where}.kind: expected one of {', '.join(KINDS)}, got {kind!r}")
        for key in ("cite", "not_testable", "artifact", "note"):
            if key in table and (not isinstance(table[key], str) or not table[key].strip()):
                raise RunError(f"{where}.{key}: expected a non-empty string, got {table[key]!r}")
        if "not_testable" in table and "artifact" in table:
            raise RunError(f"{where}: a claim is either not testable here or an artifact, not both")
        delta = table.get("delta", 0.0)
        if not isinstance(delta, (int, float)) or delta < 0 or (kind == "similar" and delta <= 0):
            raise RunError(f"{where}.delta: expected a number >= 0 (> 0 for 'similar'), got {delta!r}")
        claims.append(
            Claim(
                paper=table["paper"],
                text=table["claim"],
                paper_number=table["paper_number"],
                kind=kind,
                a=_quantity(table.get("a"), f"{where}.a", table["experiment"]),
                b=_quantity(table.get("b"), f"{where}.b", table["experiment"]),
                delta=float(delta),
                note=str(table.get("note", "")),
                cite=str(table.get("cite", "")),
                not_testable=str(table.get("not_testable", "")),
                artifact=str(table.get("artifact", "")),
            )
        )
    figures = []
    for i, table in enumerate(data.get("figure", [])):
        figures.append(figure_spec(table, f"{path} figure {i + 1}"))
    return claims, figures


Keyed = Mapping[tuple[str, float, str], Any]
RunValues = Callable[[str, str], "Sequence[tuple[int, str, Keyed, Mapping[str, float], Keyed]]"]
SideValue = tuple[float, "int | None", str, "list[int] | None", bool]  # value, n, run id, outcomes, unconverged


def side_values(q: Quantity, runs_of: RunValues) -> dict[int, SideValue]:
    """{seed: (value, n, run id, outcomes per test example or None, posterior not converged)} of one side (a
    constant: {-1: ...})."""
    if q.constant is not None:
        return {-1: (q.constant, None, "", None, False)}
    values: dict[int, SideValue] = {}
    for seed, run_id, results, metrics, outcomes in runs_of(q.experiment, q.defense):
        per_example = None
        if q.attack is None or q.eps is None:  # a run metric (a per-attack one always names its eps)
            value, n = metrics.get(q.metric), None
        else:
            value = results.get((q.attack, q.eps, q.metric))
            count = results.get((q.attack, q.eps, f"{q.metric}_n"))
            n = int(count) if count is not None else None
            per_example = outcomes.get((q.attack, q.eps, q.metric))
        if value is not None and not math.isnan(value):
            values[seed] = (value, n, run_id, per_example, metrics.get(CONVERGED_METRIC) == 0.0)
    return values


def evaluate(claim: Claim, runs_of: RunValues) -> Evaluated:
    """The claim's per-seed values, the interval of A - B and its verdict (a one-line error when a side is missing)."""
    a, b = side_values(claim.a, runs_of), side_values(claim.b, runs_of)
    for side, values in (("a", a), ("b", b)):
        if not values:
            q = getattr(claim, side)
            raise RunError(
                f"claim '{claim.text}' ({claim.paper}), side {side}: no finished run of experiment "
                f"'{q.experiment}' has {q.describe()}"
            )
    if -1 in a and -1 in b:
        raise RunError(f"claim '{claim.text}': both sides are constants")
    seeds = sorted(set(b) if -1 in a else set(a) if -1 in b else set(a) & set(b))
    if not seeds:
        raise RunError(f"claim '{claim.text}': sides a and b share no seed (a: {sorted(a)}, b: {sorted(b)})")
    pairs = [(a[s if s in a else -1], b[s if s in b else -1]) for s in seeds]  # a constant stands for every seed
    av, bv = [pa[0] for pa, _ in pairs], [pb[0] for _, pb in pairs]
    ns = [v[1] for pair in pairs for v in pair if v[1] is not None]
    n = min(ns) if ns else None
    proportion = all(q.constant is not None or q.metric in PROPORTIONS for q in (claim.a, claim.b))
    outcomes_a, outcomes_b = [pa[3] for pa, _ in pairs], [pb[3] for _, pb in pairs]
    paired = (
        all(o is not None for o in outcomes_a + outcomes_b)
        and len({len(o) for o in outcomes_a + outcomes_b if o is not None}) == 1
    )
    if paired:  # the same test images on both sides: a paired difference per image (VERDICT_RULE)
        mean, low, high = paired_interval(outcomes_a, outcomes_b)  # type: ignore[arg-type]
    else:
        mean, low, high = interval(av, bv, n, proportion)
    ids = [pa[2] for pa, _ in pairs if pa[2]] + [pb[2] for _, pb in pairs if pb[2]]  # A's runs, then B's
    return Evaluated(
        claim=claim,
        seeds=seeds,
        a=av,
        b=bv,
        n=n,
        mean=mean,
        low=low,
        high=high,
        verdict=verdict(claim.kind, low, high, claim.delta),
        run_ids=list(dict.fromkeys(ids)),
        paired_by_image=paired,
        unconverged=list(dict.fromkeys(v[2] for pair in pairs for v in pair if v[4])),
    )


def _fmt(values: Sequence[float]) -> str:
    """mean +- sd of the seeds' values (the one value for one seed)."""
    mean, sd = mean_sd(values)
    return f"{mean:.4g}" if len(values) == 1 else f"{mean:.4g} +- {sd:.2g}"


def claim_row(e: Evaluated) -> list[str]:
    """The summary table's row of one evaluated claim."""
    c = e.claim
    relation = {"greater": "A > B", "similar": f"A ~ B (delta {c.delta:g})", "not-greater": f"A - B < {c.delta:g}"}
    if c.kind == "greater" and c.delta:
        relation["greater"] = f"A > B (delta {c.delta:g})"
    bounds = "(no interval: one seed)" if math.isinf(e.low) else f"[{e.low:.4g}, {e.high:.4g}]"
    sides = [
        f"{label} = {q.describe()}" + ("" if q.constant is not None else f": {_fmt(values)}")
        for label, q, values in (("A", c.a, e.a), ("B", c.b, e.b))
    ]
    pairing = "paired by seed and image" if e.paired_by_image else "paired by seed"
    if len(e.seeds) == 1 and not math.isinf(e.low):
        pairing += " (one seed: the interval leaves out training randomness)"
    power = "" if math.isinf(e.low) else f"; MDE {e.detectable:.3g}"
    growth = e.growth_to_decide()
    if growth is not None:
        power += f"; deciding it needs ~{growth:.3g}x the seeds and images" if growth > 1 else ""
    ours = (
        f"{sides[0]}; {sides[1]}; "
        f"d = {e.mean:.4g} {bounds}, {pairing}; seeds {', '.join(map(str, e.seeds))}"
        + (f"; n {e.n}" if e.n else "")
        + power
        + (f". {c.note}" if c.note else "")
    )
    experiments = sorted({q.experiment for q in (c.a, c.b) if q.experiment})
    runs = "<br>".join(f"`{r}`" for r in e.run_ids)
    shown = f"artifact ({e.verdict}): {c.artifact}" if c.artifact else e.verdict
    if e.unconverged and not c.artifact:
        runs_named = ", ".join(f"`{r[:8]}`" for r in e.unconverged)
        shown = f"posterior not converged ({e.verdict}; runs {runs_named})"
    return [c.paper, c.text, cited(c), relation[c.kind], ours, f"{', '.join(experiments)}<br>{runs}", shown]


def cited(claim: Claim) -> str:
    """The paper's number with where the paper gives it."""
    return f"{claim.paper_number} ({claim.cite})" if claim.cite else claim.paper_number


def not_run_row(claim: Claim, experiments: Sequence[str]) -> list[str]:
    """The row of a claim whose experiment has no finished run in the store or records read."""
    where = ", ".join(experiments)
    return [claim.paper, claim.text, cited(claim), claim.kind, f"not run: {where} has no finished runs in the "
            "store or records read", where, "not run"]  # fmt: skip


def not_testable_row(claim: Claim) -> list[str]:
    """The row of a claim this setup cannot test: the reason instead of a verdict."""
    where = ", ".join(sorted({q.experiment for q in (claim.a, claim.b) if q.experiment}))
    return [claim.paper, claim.text, cited(claim), claim.kind, f"not testable here: {claim.not_testable}", where,
            "not testable here"]  # fmt: skip


CLAIM_HEADER = ("paper", "claim", "paper's number", "tested as", "ours (mean +- sd over seeds; d = A - B, 95 %)",
                "experiment, run ids", "verdict")  # fmt: skip
