"""Each claims experiment resolves and runs end to end with one epoch on a subset (the findings come from full runs).

d3-mnist-5k and sampling-fashion-style have the same check, with more, in their plugins' tests.
"""

from __future__ import annotations

import pytest

import advbayes
from advbayes.plugins import create_plugin_manager

SUBSET = {"epochs": 1, "dataset.n_train": 128, "dataset.n_test": 16, "eps": [0.1]}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("experiment", "defenses", "model_metric"),
    [
        ("advbnn-mnist-5k", ["standard", "adversarial-training", "bnn", "adv-bnn"], "weight_mean_sigma2"),
        ("hvi-vs-advbnn-mnist-5k", ["adv-bnn", "adv-hvi"], "weight_mean_sigma2"),
        ("gradient-limit-mnist-5k", ["bnn"], "expected_gradient_abs/s250_mean"),
    ],
)
def test_claims_experiment_runs_on_a_subset(experiment: str, defenses: list[str], model_metric: str) -> None:
    overrides = dict(SUBSET)
    if experiment == "gradient-limit-mnist-5k":
        overrides["metrics"] = ["accuracy", {"use": "gradient-limit", "sample_counts": [1, 10, 250], "examples": 4}]
    outcome = advbayes.run(experiment, track=False, pm=create_plugin_manager(), **overrides)
    results = getattr(outcome, "results", [outcome])
    assert [r.spec["defense"]["name"] for r in results] == defenses
    for result in results:
        attacks = {a["name"] for a in result.spec["attacks"]}
        assert {r.attack for r in result.records} == attacks
        for record in result.records:  # a count of right verdicts out of n x R, inside its own interval
            m = record.metrics
            verdicts = m["accuracy_n"] * m.get("repeats", 1.0)
            assert m["accuracy"] * verdicts == pytest.approx(round(m["accuracy"] * verdicts), abs=1e-6)
            assert m["accuracy_ci_low"] <= m["accuracy"] <= m["accuracy_ci_high"]
    bayesian = [r for r in results if r.spec["defense"]["use"] in ("bnn", "adv-bnn", "hvi")]
    assert bayesian and all(model_metric in r.model_metrics for r in bayesian)
