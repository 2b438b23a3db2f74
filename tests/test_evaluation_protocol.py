"""Error bars (Wilson intervals, seeds), R independent verdicts, and the randomness / masking checks."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
import torch

import advbayes
from advbayes.builtins.metrics import AccuracyState
from advbayes.checks import evaluation_findings
from advbayes.components import EvalBatch
from advbayes.intervals import mean_sd, wilson_interval
from advbayes.plugins import create_plugin_manager
from advbayes.registry import load_registry
from advbayes.results import EvalRecord, format_table
from advbayes.stochastic import predict_repeated


def wilson_by_roots(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The interval as the roots in p of (k/n - p)^2 = z^2 p (1 - p) / n (an independent formulation)."""
    phat = k / n
    a = 1 + z * z / n
    b = -(2 * phat + z * z / n)
    c = phat * phat
    root = math.sqrt(b * b - 4 * a * c)
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


@pytest.mark.parametrize("k, n", [(0, 10), (8, 10), (10, 10), (311, 500), (1, 1000)])
def test_wilson_interval_is_the_root_pair_of_the_score_test(k: int, n: int) -> None:
    low, high = wilson_interval(k, n)
    ref_low, ref_high = wilson_by_roots(k, n)
    assert low == pytest.approx(max(ref_low, 0.0), abs=1e-12) and high == pytest.approx(min(ref_high, 1.0), abs=1e-12)
    assert low <= k / n <= high


def test_mean_sd_is_the_sample_statistic() -> None:
    assert mean_sd([0.5, 0.7, 0.9]) == pytest.approx((0.7, 0.2))
    assert mean_sd([0.3]) == (0.3, 0.0)


class CoinModel(torch.nn.Module):
    """Each draw predicts the label with probability `p` per example (independent draws): a known randomness."""

    takes_samples = True

    def __init__(self, p: float, classes: int = 3) -> None:
        super().__init__()
        self.p, self.classes = p, classes
        self.labels: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, samples: int = 1) -> torch.Tensor:
        right = torch.rand(samples, len(x)) < self.p
        predicted = torch.where(right, self.labels, (self.labels + 1) % self.classes)
        return torch.nn.functional.one_hot(predicted, self.classes).float() * 20.0


def test_repeated_verdicts_give_the_mean_and_the_all_r_worst_case() -> None:
    torch.manual_seed(0)
    model = CoinModel(0.7)
    y = torch.randint(0, 3, (4000,))
    model.labels = y
    probs = predict_repeated(model, torch.zeros(4000, 1), samples=1, repeats=5)
    assert probs.shape == (5, 4000, 3)
    state = AccuracyState()
    state.update(
        EvalBatch(
            model=model,
            x=torch.zeros(4000, 1),
            y=y,
            result=None,
            probs=probs[0],
            attack=None,
            eps=0.0,
            inference_samples=1,
            device=torch.device("cpu"),
            repeated_probs=probs,
        )
    )
    values = {k: float(v) for k, v in state.compute().items()}
    assert values["accuracy"] == pytest.approx(0.7**5, abs=0.02)  # the headline: right in all 5 independent verdicts
    assert values["accuracy_mean_over_r"] == pytest.approx(0.7, abs=0.02)  # beside it: mean over R of P(right)
    assert values["accuracy_n"] == 4000 and "repeats" not in values  # R is the attack's param, not a metric
    assert values["accuracy_ci_low"] < values["accuracy"] < values["accuracy_ci_high"]
    assert (
        values["accuracy_mean_over_r_ci_low"] < values["accuracy_mean_over_r"] < values["accuracy_mean_over_r_ci_high"]
    )


def record(attack: str, eps: float, acc: float, n: int = 500, **diagnostics: float) -> EvalRecord:
    return EvalRecord(
        attack_label=attack,
        eps=eps,
        metrics={"accuracy": acc},
        attack_samples=1,
        inference_samples=1,
        mean_l2=0.0,
        max_linf=eps,
        examples=n,
        diagnostics=dict(diagnostics),
    )


def built(spec: dict):
    registry = load_registry(pm=create_plugin_manager())
    return registry.build("attacks", registry.resolve("attacks", spec, where=("t", "t", "t")))


def test_checks_name_run_attack_and_eps_and_stay_quiet_on_a_sound_evaluation() -> None:
    pgd10, pgd40 = built({"use": "pgd", "steps": 10}), built({"use": "pgd", "steps": 40})
    square = built({"use": "square"})
    attacks = {"pgd-10": pgd10, "pgd-40": pgd40, "square": square}
    sound = [
        record("pgd-10", 0.1, 0.60),
        record("pgd-10", 0.2, 0.30),
        record("pgd-40", 0.1, 0.58),
        record("pgd-40", 0.2, 0.28),
        record("square", 0.1, 0.62),
        record("square", 0.2, 0.35),
    ]
    assert evaluation_findings("bnn", sound, attacks, stochastic=False) == []
    masked = [
        record("pgd-10", 0.1, 0.50, zero_grad_share=0.9),
        record("pgd-10", 0.2, 0.65),
        record("pgd-40", 0.1, 0.80),
        record("pgd-40", 0.2, 0.75),
        record("square", 0.1, 0.40),
        record("square", 0.2, 0.35),
    ]
    findings = evaluation_findings("bnn", masked, attacks, stochastic=True)
    kinds = {(f.kind, f.attack, f.eps) for f in findings}
    assert ("zero-gradients", "pgd-10", 0.1) in kinds
    assert ("rises-with-eps", "pgd-10", 0.2) in kinds
    assert ("rises-with-steps", "pgd-40", 0.1) in kinds and ("rises-with-steps", "pgd-40", 0.2) in kinds
    assert ("black-box-stronger", "square", 0.1) in kinds and ("black-box-stronger", "square", 0.2) in kinds
    assert ("randomness", "pgd-10", None) in kinds and ("randomness", "square", None) not in kinds
    assert all(f.message.startswith("run bnn, attack ") for f in findings)
    assert all("eps" in f.message for f in findings)


def test_tables_carry_the_interval_and_n() -> None:
    records = [
        EvalRecord(
            attack_label="pgd-20",
            eps=0.1,
            metrics={"accuracy": 0.62, "accuracy_ci_low": 0.577, "accuracy_ci_high": 0.661, "accuracy_n": 500.0},
            attack_samples=1,
            inference_samples=1,
            mean_l2=0.0,
            max_linf=0.1,
            examples=500,
        )
    ]
    text = format_table(records, "accuracy")
    assert "0.6200 [0.577, 0.661]" in text and "n=500" in text


def test_an_experiment_with_seeds_runs_once_per_seed_and_reports_mean_and_sd(tmp_path) -> None:
    group = advbayes.run("moons", track=False, pm=create_plugin_manager(), seeds=[0, 1, 2], epochs=2)
    assert [r.seed for r in group.results] == [0, 1, 2]
    values = [r.table()["none"][0.0] for r in group.results]
    mean, sd, count = group.seed_table()["standard"]["none"][0.0]
    assert (mean, sd, count) == pytest.approx((*mean_sd(values), 3))
    assert len(set(values)) > 1  # the seeds really differ
    assert "mean +- sd over seeds 0, 1, 2" in group.format()
    accuracy = group.results[0].records[0].metrics
    assert accuracy["accuracy_ci_low"] <= accuracy["accuracy"] <= accuracy["accuracy_ci_high"]


SMALL_AUTOATTACK = {
    "extends": "autoattack",
    "name": "autoattack-small",
    "attacks": [
        {"extends": "apgd-ce", "name": "apgd-ce", "steps": 5},
        {"extends": "apgd-t", "name": "apgd-t", "steps": 5, "targets": 2},
        {"extends": "fab-t", "name": "fab-t", "steps": 5, "targets": 2},
        {"extends": "square", "name": "square", "queries": 30},
    ],
}
SMALL_RAND = {
    "extends": "autoattack-rand",
    "name": "autoattack-rand-small",
    "attack_samples": 4,
    "verdict_repeats": 3,
    "attacks": [
        {"extends": "apgd-ce", "name": "apgd-ce", "steps": 4, "keep": "last"},
        {"extends": "apgd-dlr", "name": "apgd-dlr", "steps": 4, "keep": "last"},
    ],
}


@pytest.mark.slow
def test_autoattack_on_a_deterministic_defense_is_the_worst_case_of_its_parts() -> None:
    result = advbayes.run(
        "quickstart",
        track=False,
        pm=create_plugin_manager(),
        epochs=1,
        eps=[0.15],
        attacks=["none", SMALL_AUTOATTACK, {"extends": "apgd-ce", "name": "apgd-ce", "steps": 5}],
        **{"dataset.n_test": 64, "dataset.n_train": 1000},
    )
    table = result.table()
    assert table["autoattack-small"][0.15] <= table["apgd-ce"][0.15] + 1e-9  # worst case <= one of its parts
    assert table["autoattack-small"][0.15] < table["none"][0.15]
    assert "accuracy_mean_over_r" not in result.records[1].metrics  # deterministic: one verdict decides


@pytest.mark.slow
@pytest.mark.usefixtures("batched_draws")  # an end-to-end run: no timing race per model
def test_autoattack_rand_on_a_bnn_reports_the_all_r_accuracy_with_the_mean_over_r_beside_it() -> None:
    result = advbayes.run(
        "quickstart",
        track=False,
        pm=create_plugin_manager(),
        epochs=1,
        eps=[0.15],
        defense="bnn",
        attacks=["none", SMALL_RAND],
        **{"dataset.n_test": 64, "dataset.n_train": 1000},
    )
    metrics = next(r.metrics for r in result.records if r.attack_label == "autoattack-rand-small")
    assert "repeats" not in metrics and "accuracy_worst" not in metrics
    assert metrics["accuracy"] <= metrics["accuracy_mean_over_r"] <= metrics["accuracy_mean_over_r_ci_high"]
    assert metrics["accuracy_ci_low"] <= metrics["accuracy"] <= metrics["accuracy_ci_high"]
    assert (metrics["accuracy"] * metrics["accuracy_n"]) == pytest.approx(
        round(metrics["accuracy"] * metrics["accuracy_n"])
    )


def test_autoattack_refuses_a_stochastic_defense_before_training() -> None:
    with pytest.raises(
        advbayes.RunError, match=r"attack 'autoattack' \(fab-t\) judges single evaluations.*use autoattack-rand"
    ):
        advbayes.run(
            "quickstart",
            track=False,
            pm=create_plugin_manager(),
            epochs=1000,
            defense="bnn",
            attacks=["autoattack"],
            **{"dataset.n_test": 16},
        )


def test_compare_shows_intervals_and_the_mean_and_sd_across_seeds(store: str) -> None:
    from click.testing import CliRunner
    from mlflow import MlflowClient

    from advbayes.cli import cli

    group = advbayes.run("moons", tracking_uri=store, pm=create_plugin_manager(), seeds=[0, 1], epochs=2)
    result = CliRunner().invoke(cli, ["compare", "moons", "--tracking-uri", store])
    assert result.exit_code == 0, result.output
    values = [r.table()["none"][0.0] for r in group.results]
    first = group.results[0].records[0].metrics
    assert f"{first['accuracy']:.4f} [{first['accuracy_ci_low']:.3f}, {first['accuracy_ci_high']:.3f}]" in result.output
    mean, sd = mean_sd(values)
    assert "mean+-sd" in result.output and f"{mean:.4f} +- {sd:.4f}" in result.output
    logged = MlflowClient(store).get_run(group.results[0].run_id).data.metrics
    assert logged["none/accuracy_ci_low/eps_0.0000"] == pytest.approx(first["accuracy_ci_low"])
    assert logged["none/accuracy_n/eps_0.0000"] == first["accuracy_n"]
    # --json and --csv: one record per run, attack and eps, the same values as the runs returned
    as_json = CliRunner().invoke(cli, ["compare", "moons", "--tracking-uri", store, "--json"])
    records = json.loads(as_json.output)
    expected = {
        (r.run_id, r.seed, rec.attack_label, rec.eps, rec.metrics["accuracy"])
        for r in group.results
        for rec in r.records
    }
    assert {(x["run_id"], x["seed"], x["attack"], x["eps"], x["value"]) for x in records} == expected
    assert all(x["ci_low"] <= x["value"] <= x["ci_high"] and x["status"] == "FINISHED" for x in records)
    as_csv = CliRunner().invoke(cli, ["compare", "moons", "--tracking-uri", store, "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(as_csv.output)))
    assert [(r["run_id"], float(r["value"]), float(r["ci_high"])) for r in rows] == [
        (x["run_id"], x["value"], x["ci_high"]) for x in records
    ]


def test_a_randomness_finding_is_warned_and_tagged(store: str) -> None:
    from mlflow import MlflowClient

    from advbayes.errors import EvaluationWarning

    with pytest.warns(EvaluationWarning, match=r"run bnn, attack fgsm, every eps: the model is stochastic"):
        result = advbayes.run(
            "moons",
            tracking_uri=store,
            pm=create_plugin_manager(),
            epochs=1,
            defense="bnn",
            attacks=["fgsm"],
            eps=[0.1],
        )
    tags = MlflowClient(store).get_run(result.run_id).data.tags
    assert tags["advbayes.check.randomness.fgsm"].startswith("run bnn, attack fgsm")
