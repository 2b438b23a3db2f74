"""The claims file and its verdict rule: intervals against independent computations, verdicts at the edges,
one-line errors for malformed files, and a report whose claim rows are read back against the tracked runs."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from scipy import stats

import advbayes
from advbayes.cli import cli
from advbayes.errors import RunError
from advbayes.lab.claims import interval, load_claims, t95, verdict
from advbayes.plugins import create_plugin_manager


@pytest.mark.parametrize("df", [1, 2, 3, 4, 9, 19, 30, 31, 60, 200])
def test_t95_is_students_quantile(df: int) -> None:
    assert t95(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-3)


def test_interval_of_paired_accuracies_combines_seed_spread_and_binomial_error() -> None:
    a, b, n = [0.60, 0.64, 0.62], [0.50, 0.55, 0.52], 1000
    d = [x - y for x, y in zip(a, b, strict=True)]
    mean = sum(d) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / 2)
    seed_term = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    se2 = sum(p * (1 - p) / n + q * (1 - q) / n for p, q in zip(a, b, strict=True)) / 3
    half = math.sqrt(seed_term**2 + (stats.norm.ppf(0.975) ** 2) * se2)
    got = interval(a, b, n, proportion=True)
    assert got == pytest.approx((mean, mean - half, mean + half), abs=2e-4)
    # a non-proportion metric has the seeds' term only; one seed of it has no interval
    assert interval(a, b, None, proportion=False)[1] == pytest.approx(mean - seed_term, abs=2e-4)
    assert interval([0.3], [0.1], None, proportion=False)[1:] == (-math.inf, math.inf)
    one = interval([0.6], [0.5], 400, proportion=True)
    expected = stats.norm.ppf(0.975) * math.sqrt(0.6 * 0.4 / 400 + 0.5 * 0.5 / 400)
    assert one == pytest.approx((0.1, 0.1 - expected, 0.1 + expected), abs=1e-6)


@pytest.mark.parametrize(
    ("kind", "low", "high", "delta", "expected"),
    [
        ("greater", 0.01, 0.2, 0.0, "held"),
        ("greater", -0.01, 0.2, 0.0, "inconclusive"),
        ("greater", -0.2, -0.01, 0.0, "did not hold"),
        ("greater", -0.01, 0.015, 0.02, "did not hold"),  # rules out an effect as large as delta
        ("similar", -0.01, 0.015, 0.02, "held"),
        ("similar", -0.01, 0.03, 0.02, "inconclusive"),
        ("similar", 0.03, 0.05, 0.02, "did not hold"),
        ("similar", -0.05, -0.03, 0.02, "did not hold"),
        ("not-greater", -0.1, 0.02, 0.03, "held"),
        ("not-greater", 0.0, 0.05, 0.03, "inconclusive"),
        ("not-greater", 0.2, 0.5, 0.03, "did not hold"),
        ("greater", -math.inf, math.inf, 0.0, "inconclusive"),
    ],
)
def test_verdict_rule_at_its_edges(kind: str, low: float, high: float, delta: float, expected: str) -> None:
    assert verdict(kind, low, high, delta) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[[claim]]\npaper = 'p'\nclaim = 'c'\npaper_number = 'n'\nexperiment = 'e'\nkind = 'bigger'\n",
            "claim 1.kind",
        ),
        ("[[claim]]\npaper = 'p'\nclaim = 'c'\npaper_number = 'n'\nexperiment = 'e'\n", "claim 1.a: expected a table"),
        (
            "[[claim]]\npaper = 'p'\nclaim = 'c'\npaper_number = 'n'\nexperiment = 'e'\n"
            "a = { defense = 'x', metric = 'accuracy', attack = 'pgd' }\nb = { constant = 1 }\n",
            "needs its eps",
        ),
        (
            "[[claim]]\npaper = 'p'\nclaim = 'c'\npaper_number = 'n'\nexperiment = 'e'\n"
            "a = { defense = 'x', metric = 'm', colour = 1 }\nb = { constant = 1 }\n",
            "unknown key 'colour'",
        ),
        ("[[claim]]\npaper = 'p'\n", "expected a string 'claim'"),
        ("[[figure]]\nname = 'f'\nexperiment = 'e'\ntitle = 't'\nmetric = 'accuracy'\n", "needs an {x}"),
        ("[claims]\n", "unknown table 'claims'"),
        ("a = [", "not valid TOML"),
    ],
)
def test_a_malformed_claims_file_is_a_one_line_error_naming_the_place(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "claims.toml"
    path.write_text(text)
    with pytest.raises(RunError, match=re.escape(message)) as info:
        load_claims(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


CLAIMS = """
[[claim]]
paper = "a paper"
claim = "the MLP beats chance on moons"
paper_number = "1.0"
experiment = "moons"
a = { defense = "standard", metric = "accuracy", attack = "none", eps = 0.0 }
b = { constant = 0.5 }

[[claim]]
paper = "a paper"
claim = "run metrics compare: last training accuracy above last training loss"
paper_number = "-"
experiment = "moons"
a = { defense = "standard", metric = "train/acc" }
b = { defense = "standard", metric = "train/loss" }

[[claim]]
paper = "a paper"
claim = "an experiment this store never ran"
paper_number = "-"
experiment = "advbnn-mnist-5k"
a = { defense = "adv-bnn", metric = "accuracy", attack = "pgd-20", eps = 0.1 }
b = { constant = 0.5 }

[[figure]]
name = "loss_per_epoch"
experiment = "moons"
title = "training loss"
metric = "train/loss"
history = true
"""


def test_report_with_claims_reads_every_row_from_the_runs(store: str, tmp_path: Path) -> None:
    group = advbayes.run("moons", tracking_uri=store, pm=create_plugin_manager(), seeds=[0, 1], epochs=2)
    claims = tmp_path / "claims.toml"
    claims.write_text(CLAIMS)
    out = tmp_path / "report"
    result = CliRunner().invoke(
        cli, ["report", "moons", "--out", str(out), "--claims", str(claims), "--tracking-uri", store]
    )
    assert result.exit_code == 0, result.output
    text = (out / "report.md").read_text()
    assert "**Verdict rule**" in text and "## Summary of the claims" in text
    row = next(line for line in text.splitlines() if "the MLP beats chance" in line)
    accuracies = [next(r.metrics["accuracy"] for r in m.records if r.attack_label == "none") for m in group.results]
    n = int(next(r.metrics["accuracy_n"] for r in group.results[0].records if r.attack_label == "none"))
    mean, low, high = interval(accuracies, [0.5, 0.5], n, proportion=True)
    assert (
        "B = 0.5;" in row
        and f"d = {mean:.4g} [{low:.4g}, {high:.4g}]" in row
        and "seeds 0, 1" in row
        and f"n {n}" in row
    )
    assert row.rstrip(" |").endswith(verdict("greater", low, high, 0.0))
    for member in group.results:
        assert f"`{member.run_id}`" in row
    # the training metrics are logged per epoch: acc - loss is a real comparison with two seeds
    assert "last training accuracy above last training loss" in text
    not_run = next(line for line in text.splitlines() if "an experiment this store never ran" in line)
    assert "not run: advbnn-mnist-5k has no finished runs in this store" in not_run
    assert not_run.rstrip(" |").endswith("not run") and "1 not run" in text
    figure = out / "report_figures" / "claims" / "loss_per_epoch.png"
    assert figure.is_file() and figure.stat().st_size > 1000


def test_a_claim_no_run_has_is_a_one_line_error(store: str, tmp_path: Path) -> None:
    advbayes.run("moons", tracking_uri=store, pm=create_plugin_manager(), epochs=1)
    claims = tmp_path / "claims.toml"
    claims.write_text(
        CLAIMS.replace('defense = "standard", metric = "accuracy"', 'defense = "bnn", metric = "accuracy"')
    )
    result = CliRunner().invoke(
        cli, ["report", "moons", "--out", str(tmp_path / "r"), "--claims", str(claims), "--tracking-uri", store]
    )
    assert result.exit_code == 2
    assert "no finished run of experiment 'moons' has bnn accuracy (none, eps 0)" in result.output
