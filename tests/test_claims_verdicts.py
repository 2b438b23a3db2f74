"""The claims file and its verdict rule: intervals against independent computations, verdicts at the edges,
one-line errors for malformed files, and a report whose claim rows are read back against the tracked runs."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

import advbayes
from advbayes.cli import cli
from advbayes.errors import RunError
from advbayes.lab.claims import interval, load_claims, paired_interval, t95, verdict
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
        (
            "[[claim]]\npaper = 'p'\nclaim = 'c'\npaper_number = 'n'\nexperiment = 'e'\ncite = 3\n"
            "a = { constant = 1 }\nb = { constant = 0 }\n",
            "claim 1.cite: expected a non-empty string, got 3",
        ),
        (
            "[[claim]]\npaper = 'p'\nclaim = 'c'\npaper_number = 'n'\nexperiment = 'e'\nnot_testable = 'x'\n"
            "artifact = 'y'\na = { constant = 1 }\nb = { constant = 0 }\n",
            "claim 1: a claim is either not testable here or an artifact, not both",
        ),
        ("[claims]\n", "unknown table 'claims'"),
        (
            "[[figure]]\nname = 'f'\nexperiments = ['a']\nx_param = 'model.widths'\ntitle = 't'\nmetric = 'm'\n",
            "figure 1: an x_param figure names 'experiments', a list of two or more, got ['a']",
        ),
        (
            "[[figure]]\nname = 'f'\nexperiment = 'a'\nexperiments = ['a', 'b']\nx_param = 'p'\ntitle = 't'\n"
            "metric = 'm'\n",
            "an x_param figure names 'experiments'",
        ),
        (
            "[[figure]]\nname = 'f'\nexperiments = ['a', 'a']\nx_param = 'p'\ntitle = 't'\nmetric = 'm'\n",
            "figure 1.experiments: expected distinct experiment names",
        ),
        (
            "[[figure]]\nname = 'f'\nexperiments = ['a', 'b']\nx_param = 'p'\ntitle = 't'\nmetric = 's{x}'\n",
            "x_param reads x from a param; the metric and attack take no {x} then",
        ),
        (
            "[[figure]]\nname = 'f'\nexperiments = ['a', 'b']\nx_param = 'p'\ntitle = 't'\nmetric = 'accuracy'\n"
            "attack = 'pgd'\n",
            "x_param with an attack needs its eps",
        ),
        (
            "[[figure]]\nname = 'f'\nexperiment = 'a'\nexperiments = ['a', 'b']\ntitle = 't'\nmetric = 's{x}'\n",
            "'experiments' goes with an x_param",
        ),
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
    assert "not run: advbnn-mnist-5k has no finished runs in the store or records read" in not_run
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


# ------------------------------------------------------------------------------------------- paired by image


def two_way_bootstrap(a: np.ndarray, b: np.ndarray, replicates: int = 4000, seed: int = 0) -> tuple[float, float]:
    """A second implementation: the 95 % percentile interval of mean(a - b) resampling seeds and images (the same
    images on every seed, as in a run's fixed test split)."""
    rng = np.random.default_rng(seed)
    k, n = a.shape
    d = (a - b).astype(float)
    means = np.empty(replicates)
    for r in range(replicates):
        seeds, images = rng.integers(0, k, k), rng.integers(0, n, n)
        means[r] = d[np.ix_(seeds, images)].mean()
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def correlated_outcomes(k: int, n: int, effect: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two verdicts on the same images: mostly right or wrong together, A right more often by `effect`."""
    rng = np.random.default_rng(seed)
    easy = rng.random(n) < 0.6  # images both verdicts get right on almost every seed
    b = ((rng.random((k, n)) < 0.15) | easy).astype(int)
    a = (b | (rng.random((k, n)) < effect)).astype(int)
    return a, b


def test_paired_interval_is_the_hand_formula_and_agrees_with_a_bootstrap_over_seeds_and_images() -> None:
    a, b = correlated_outcomes(5, 1000, 0.03, seed=1)
    mean, low, high = paired_interval(a.tolist(), b.tolist())
    per_seed = (a - b).mean(axis=1)
    per_image = (a - b).mean(axis=0)
    half = math.hypot(
        stats.t.ppf(0.975, 4) * per_seed.std(ddof=1) / math.sqrt(5),
        stats.norm.ppf(0.975) * per_image.std(ddof=1) / math.sqrt(1000),
    )
    assert (mean, low, high) == pytest.approx(
        (per_seed.mean(), per_seed.mean() - half, per_seed.mean() + half), abs=1e-4
    )
    boot_low, boot_high = two_way_bootstrap(a, b)
    # the bootstrap of k = 5 seeds uses the normal quantile, ours Student's t (wider by 2.776 / 1.96 on that term),
    # and ours counts the image-by-seed interaction twice: ours is at least as wide and not grossly wider
    assert high - low >= (boot_high - boot_low) * 0.95
    assert high - low <= (boot_high - boot_low) * 1.6
    assert low > 0  # a 3-point effect on 1,000 shared images and 5 seeds is decided


def test_pairing_by_image_decides_what_independent_binomial_errors_cannot() -> None:
    a, b = correlated_outcomes(3, 1000, 0.02, seed=2)
    _, low, high = paired_interval(a.tolist(), b.tolist())
    _, unpaired_low, unpaired_high = interval(a.mean(axis=1).tolist(), b.mean(axis=1).tolist(), 1000, True)
    assert high - low < (unpaired_high - unpaired_low) / 1.5
    assert low > 0 and unpaired_low < 0  # the same data: held when paired, inconclusive when treated as independent
    same = paired_interval(a.tolist(), a.tolist())
    assert same == (0.0, 0.0, 0.0)  # identical verdicts on every image and seed: no difference, no doubt
    with pytest.raises(ValueError):
        paired_interval(a.tolist(), b[:, :999].tolist())


def test_minimal_detectable_effect_and_the_growth_that_would_decide_a_row() -> None:
    from advbayes.lab.claims import Claim, Evaluated, Quantity

    claim = Claim("p", "A > B", "-", "greater", Quantity(constant=1.0), Quantity(constant=0.0))
    inconclusive = Evaluated(claim, [0, 1, 2], [], [], 1000, 0.01, -0.01, 0.03, "inconclusive")
    assert inconclusive.detectable == pytest.approx(0.02 * (1.96 + 0.8416) / 1.96, rel=1e-3)
    assert inconclusive.growth_to_decide() == pytest.approx((0.02 / 0.01) ** 2)  # h must shrink from 0.02 to 0.01
    held = Evaluated(claim, [0, 1, 2], [], [], 1000, 0.05, 0.02, 0.08, "held")
    assert held.growth_to_decide() is None


def test_a_row_from_an_unconverged_posterior_is_marked_and_not_counted_as_a_finding() -> None:
    from advbayes.lab.claims import Claim, Quantity, claim_row, evaluate

    def runs_of(converged: dict[int, float | None]):
        def of(experiment: str, defense: str):
            runs = []
            for seed, flag in converged.items():
                value = {"bnn": 0.9, "standard": 0.5}[defense] + 0.01 * seed
                metrics = {} if flag is None or defense == "standard" else {"model/posterior/converged": flag}
                runs.append((seed, f"{defense}{seed}" + "0" * 20, {("none", 0.0, "accuracy"): value}, metrics, {}))
            return runs

        return of

    side = {"experiment": "e", "metric": "accuracy", "attack": "none", "eps": 0.0}
    claim = Claim("p", "bnn beats standard", "-", "greater", Quantity(defense="bnn", **side),
                  Quantity(defense="standard", **side))  # fmt: skip
    converged = evaluate(claim, runs_of({0: 1.0, 1: 1.0, 2: None}))  # None: a run that judged no posterior
    assert converged.verdict == "held" and converged.outcome == "held" and not converged.unconverged
    stuck = evaluate(claim, runs_of({0: 1.0, 1: 0.0, 2: 1.0}))
    assert stuck.verdict == "held" and stuck.outcome == "not converged" and stuck.unconverged == ["bnn1" + "0" * 20]
    assert claim_row(stuck)[-1] == "posterior not converged (held; runs `bnn10000`)"


def report_with_claims(store: str, folder: Path, claims_text: str) -> str:
    """The text of `advbayes report moons` over `store` with the claims file `claims_text`."""
    claims = folder / "claims.toml"
    claims.write_text(claims_text)
    result = CliRunner().invoke(
        cli, ["report", "moons", "--out", str(folder / "r"), "--claims", str(claims), "--tracking-uri", store]
    )
    assert result.exit_code == 0, result.output
    return (folder / "r" / "report.md").read_text()


def test_a_claim_between_two_attacks_of_the_same_runs_is_paired_by_image(store: str, tmp_path: Path) -> None:
    import torch
    from mlflow import MlflowClient

    from advbayes import predict
    from advbayes.results import unpack_outcomes
    from advbayes.testing import plugin_registry

    group = advbayes.run(
        "moons", tracking_uri=store, pm=create_plugin_manager(), seeds=[0, 1], epochs=2, attacks=["none", "fgsm"],
        eps=[0.0, 0.3],
    )  # fmt: skip
    client = MlflowClient(store)
    registry = plugin_registry()
    outcomes = {}
    for member in group.results:
        dataset = registry.build(
            "datasets", registry.resolve("datasets", member.spec["dataset"], where=("t", "t", "t"))
        )
        x, y = dataset.data("test").tensors
        with torch.no_grad():  # a second computation of which clean test points the returned model gets right
            right = (predict(member.model, x)[0].argmax(-1) == y).int().tolist()
        path = client.download_artifacts(member.run_id, "examples.csv", str(tmp_path / member.run_id))
        with open(path, newline="") as handle:
            table = {(r["attack"], float(r["eps"])): r for r in csv.DictReader(handle)}
        clean = unpack_outcomes(table["none", 0.0]["outcomes"], int(table["none", 0.0]["n"]))
        assert clean == right
        attacked = unpack_outcomes(table["fgsm", 0.3]["outcomes"], int(table["fgsm", 0.3]["n"]))
        assert sum(attacked) / len(attacked) == pytest.approx(
            next(r.metrics["accuracy"] for r in member.records if r.attack_label == "fgsm" and r.eps == 0.3)
        )
        outcomes[member.seed] = (attacked, clean)
    text = report_with_claims(
        store,
        tmp_path,
        '[[claim]]\npaper = "p"\nclaim = "fgsm lowers accuracy"\npaper_number = "-"\nexperiment = "moons"\n'
        'a = { defense = "standard", metric = "accuracy", attack = "none", eps = 0.0 }\n'
        'b = { defense = "standard", metric = "accuracy", attack = "fgsm", eps = 0.3 }\n',
    )
    row = next(line for line in text.splitlines() if "fgsm lowers" in line)
    seeds = sorted(outcomes)
    mean, low, high = paired_interval([outcomes[s][1] for s in seeds], [outcomes[s][0] for s in seeds])
    assert f"d = {mean:.4g} [{low:.4g}, {high:.4g}], paired by seed and image" in row
    assert "MDE" in row


def test_a_claim_not_testable_here_says_why_and_an_artifact_is_labelled(store: str, tmp_path: Path) -> None:
    advbayes.run("moons", tracking_uri=store, pm=create_plugin_manager(), seeds=[0, 1], epochs=2)
    text = report_with_claims(
        store,
        tmp_path,
        '[[claim]]\npaper = "p"\nclaim = "beats chance"\npaper_number = "0.9"\ncite = "table 2, section 4"\n'
        'experiment = "moons"\nartifact = "two moons are nearly separable"\n'
        'a = { defense = "standard", metric = "accuracy", attack = "none", eps = 0.0 }\nb = { constant = 0.5 }\n'
        '[[claim]]\npaper = "p"\nclaim = "holds on ImageNet"\npaper_number = "-"\nexperiment = "nosuch"\n'
        'not_testable = "no ImageNet offline"\na = { defense = "x", metric = "m" }\nb = { constant = 0.5 }\n',
    )
    artifact = next(line for line in text.splitlines() if "beats chance" in line)
    assert "0.9 (table 2, section 4)" in artifact
    assert artifact.rstrip(" |").endswith("artifact (held): two moons are nearly separable")
    untested = next(line for line in text.splitlines() if "holds on ImageNet" in line)
    assert "not testable here: no ImageNet offline" in untested and untested.rstrip(" |").endswith("not testable here")
    assert "0 held, 0 did not hold, 0 inconclusive, 0 not run; 1 not testable here, 1 artifacts" in text


def test_every_shipped_claim_is_cited_and_the_file_loads() -> None:
    claims, figures = load_claims(Path(__file__).resolve().parents[1] / "docs" / "claims.toml")
    assert claims and figures
    uncited = [c.text for c in claims if not c.cite]
    assert not uncited, f"claims without a figure/table reference: {uncited}"
